"""The BERT encoder as pure-functional Flax (linen) modules.

Parameter names mirror HuggingFace's `BertModel` (`embeddings/word_embeddings`,
`encoder/layer_0/attention/self/query`, ...), so converting a PyTorch checkpoint is a rename table
plus transposes of dense kernels (see `bert_jax.converted`).

The shape comes from `BertConfig`; how the model runs is chosen where it is built, as Flax
modules do: `BertModel(config, dtype=jnp.bfloat16, attention_impl="xla")`. `dtype` is the compute
dtype of activations and matmuls (default float32), `param_dtype` the dtype parameters are
created in (float32; checkpoints always hold float32) and `attention_impl` the
`jax.nn.dot_product_attention` implementation: "xla" (everywhere) or "cudnn" (NVIDIA GPUs,
float16/bfloat16 only; it has no attention-probability dropout, so that dropout is skipped when
training with it).

Shapes: B = batch, T = sequence length, D = hidden size, N = heads, H = head size (D = N * H).
"""
from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax.config import BertConfig
from bert_jax.errors import ConfigError

ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")

_ACTIVATIONS = {
    "gelu": lambda x: nn.gelu(x, approximate=False),  # BERT's exact erf GELU
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
    "relu": nn.relu,
}


def check_runtime(dtype: Any, attention_impl: str) -> None:
    """Refuse a compute dtype outside `COMPUTE_DTYPES` or an unknown attention implementation
    (`ConfigError` naming the allowed values)."""
    try:
        name = jnp.dtype(dtype).name
    except TypeError:
        name = repr(dtype)
    if name not in COMPUTE_DTYPES:
        raise ConfigError(f"dtype {name} is not one of {', '.join(COMPUTE_DTYPES)}")
    if attention_impl not in ATTENTION_IMPLEMENTATIONS:
        raise ConfigError(f"attention implementation {attention_impl!r} is not one of "
                          f"{', '.join(ATTENTION_IMPLEMENTATIONS)}")


class _Part(nn.Module):
    """A part of the encoder: the shape (`config`) and how it runs (see the module docstring)."""
    config: BertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    attention_impl: str = "xla"

    def runtime(self) -> dict[str, Any]:
        """The run-time settings, to hand to a sub-part."""
        return {"dtype": self.dtype, "param_dtype": self.param_dtype,
                "attention_impl": self.attention_impl}

    def dense(self, features: int, name: str) -> nn.Dense:
        return nn.Dense(features, name=name, dtype=self.dtype, param_dtype=self.param_dtype,
                        kernel_init=nn.initializers.normal(self.config.initializer_range))

    def layer_norm(self, name: str = "LayerNorm") -> nn.LayerNorm:
        # Statistics in float32 even when computing in bfloat16, as PyTorch autocast does.
        return nn.LayerNorm(epsilon=self.config.layer_norm_eps, name=name, dtype=self.dtype,
                            param_dtype=self.param_dtype)


@flax.struct.dataclass
class BertOutput:
    """`last_hidden_state` [B, T, D] and `pooler_output` [B, D] (tanh(dense([CLS])))."""
    last_hidden_state: jax.Array
    pooler_output: jax.Array | None


class BertEmbeddings(_Part):
    """Token + position + segment embeddings, LayerNorm, dropout: ids [B, T] -> [B, T, D]."""

    @nn.compact
    def __call__(self, input_ids, token_type_ids, deterministic: bool = True, position_ids=None):
        cfg = self.config
        init = nn.initializers.normal(stddev=cfg.initializer_range)

        def embed(num, name):
            return nn.Embed(num, cfg.hidden_size, embedding_init=init, name=name,
                            dtype=self.dtype, param_dtype=self.param_dtype)

        positions = jnp.arange(input_ids.shape[-1])[None, :] if position_ids is None else position_ids
        x = (embed(cfg.vocab_size, "word_embeddings")(input_ids)
             + embed(cfg.max_position_embeddings, "position_embeddings")(positions)
             + embed(cfg.type_vocab_size, "token_type_embeddings")(token_type_ids))
        x = self.layer_norm()(x)
        return nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)


def check_cudnn_attention(dtype) -> None:
    """cuDNN fused attention needs an NVIDIA GPU and float16/bfloat16 compute."""
    if jax.default_backend() != "gpu":
        raise ValueError(f"attention_impl 'cudnn' needs an NVIDIA GPU; this backend is "
                         f"{jax.default_backend()!r}: use attention_impl 'xla'")
    if jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
        raise ValueError(f"attention_impl 'cudnn' needs dtype bfloat16 or float16, not "
                         f"{jnp.dtype(dtype).name}: pass --dtype bfloat16")


def attention_keep(attention_mask, segment_ids=None) -> jax.Array:
    """Which keys each query attends to, bool: [B, 1, 1, T] from `attention_mask` [B, T] (1 =
    token, 0 = padding; every query sees every token), or [B, 1, T, T] from `segment_ids` [B, T]
    of packed rows (a token of a sentence sees the tokens of that sentence only; padding, 0,
    sees nothing and is seen by nothing)."""
    if segment_ids is None:
        return attention_mask.astype(bool)[:, None, None, :]
    tokens = segment_ids > 0
    return nn.combine_masks(nn.make_attention_mask(segment_ids, segment_ids, jnp.equal),
                            nn.make_attention_mask(tokens, tokens), dtype=jnp.bool_)


class BertSelfAttention(_Part):
    """Multi-head self-attention through `jax.nn.dot_product_attention`: [B, T, D] -> [B, T, D].

    The padding mask comes from `attention_mask` [B, T] (1 = token, 0 = padding). With
    `segment_ids` [B, T] (packed rows: several sentences per row, 1, 2, ... per sentence, 0 for
    padding) a token attends only to tokens of its own sentence (`attention_keep`). With the
    "xla" implementation and dropout active, attention probabilities get dropout as in PyTorch
    BERT (an explicit softmax path); "cudnn" takes the padding as sequence lengths (right
    padding), has no attention-probability dropout and no packed rows.
    """

    @nn.compact
    def __call__(self, hidden, attention_mask, deterministic: bool = True, segment_ids=None):
        cfg = self.config
        batch, length, _ = hidden.shape
        split = lambda x: x.reshape(batch, length, cfg.num_attention_heads, cfg.head_dim)
        q = split(self.dense(cfg.hidden_size, "query")(hidden))
        k = split(self.dense(cfg.hidden_size, "key")(hidden))
        v = split(self.dense(cfg.hidden_size, "value")(hidden))
        keep = attention_keep(attention_mask, segment_ids)
        probs_dropout = cfg.attention_probs_dropout_prob > 0 and not deterministic
        if self.attention_impl == "cudnn":
            check_cudnn_attention(q.dtype)
            if segment_ids is not None:
                raise ValueError("attention_impl 'cudnn' does not take packed rows "
                                 "(segment_ids): use attention_impl 'xla', or --no-pack")
            lengths = attention_mask.sum(-1).astype(jnp.int32)
            out = jax.nn.dot_product_attention(
                q, k, v, query_seq_lengths=lengths, key_value_seq_lengths=lengths,
                implementation="cudnn")
            # cuDNN zeroes padded query rows; XLA does not. Only unpadded rows are meaningful.
        elif probs_dropout:
            out = nn.dot_product_attention(
                q, k, v, mask=keep, dropout_rng=self.make_rng("dropout"),
                dropout_rate=cfg.attention_probs_dropout_prob, deterministic=False,
                broadcast_dropout=False, dtype=q.dtype)
        else:
            out = jax.nn.dot_product_attention(q, k, v, mask=keep, implementation="xla")
        return out.reshape(batch, length, cfg.hidden_size)


class BertDenseOutput(_Part):
    """Dense, dropout, residual add, LayerNorm (HF's `attention.output` and `output`)."""

    @nn.compact
    def __call__(self, x, residual, deterministic: bool = True):
        cfg = self.config
        x = self.dense(cfg.hidden_size, "dense")(x)
        x = nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)
        return self.layer_norm()(x + residual)


class BertAttention(_Part):
    """Self-attention, then output projection, dropout, add & norm: [B, T, D] -> [B, T, D]."""

    @nn.compact
    def __call__(self, hidden, attention_mask, deterministic: bool = True, segment_ids=None):
        attended = BertSelfAttention(self.config, **self.runtime(), name="self")(
            hidden, attention_mask, deterministic, segment_ids)
        return BertDenseOutput(self.config, **self.runtime(), name="output")(
            attended, hidden, deterministic)


class BertIntermediate(_Part):
    """Feed-forward expansion with the configured activation: [B, T, D] -> [B, T, intermediate]."""

    @nn.compact
    def __call__(self, hidden):
        cfg = self.config
        return _ACTIVATIONS[cfg.hidden_act](self.dense(cfg.intermediate_size, "dense")(hidden))


class BertLayer(_Part):
    """One encoder layer: attention, add & norm, GELU feed-forward, add & norm. [B, T, D]."""

    @nn.compact
    def __call__(self, hidden, attention_mask, deterministic: bool = True, segment_ids=None):
        cfg, runtime = self.config, self.runtime()
        hidden = BertAttention(cfg, **runtime, name="attention")(hidden, attention_mask,
                                                                 deterministic, segment_ids)
        inner = BertIntermediate(cfg, **runtime, name="intermediate")(hidden)
        return BertDenseOutput(cfg, **runtime, name="output")(inner, hidden, deterministic)


class BertEncoder(_Part):
    """The stack of `num_hidden_layers` layers (`encoder/layer_0` ...): [B, T, D] -> [B, T, D]."""

    @nn.compact
    def __call__(self, hidden, attention_mask, deterministic: bool = True, segment_ids=None):
        for i in range(self.config.num_hidden_layers):
            hidden = BertLayer(self.config, **self.runtime(), name=f"layer_{i}")(
                hidden, attention_mask, deterministic, segment_ids)
        return hidden


class BertPooler(_Part):
    """tanh(dense(hidden[:, 0])): the [CLS] pooler, [B, T, D] -> [B, D]."""

    @nn.compact
    def __call__(self, hidden):
        return jnp.tanh(self.dense(self.config.hidden_size, "dense")(hidden[:, 0]))


class BertModel(_Part):
    """BERT: embeddings, encoder, optional [CLS] pooler.

    `BertModel(config, dtype=..., param_dtype=..., attention_impl=..., add_pooling_layer=True)`;
    `apply({"params": params}, input_ids, attention_mask, token_type_ids, deterministic=True)`
    with int arrays [B, T] returns `BertOutput` (in `dtype`). Dropout is active only with
    `deterministic=False` and a `dropout` rng (`rngs={"dropout": key}`).

    Packed rows (several sentences per row, no padding between them): pass `segment_ids` [B, T]
    (1 .. num_segments, one per sentence; 0 = padding), `position_ids` [B, T] (restarting at 0 for
    each sentence) and `num_segments` (static). Attention stays within a sentence, so each
    sentence's hidden states equal those of an unpacked pass; `pooler_output` is then
    [num_segments, D], the pooler over each sentence's first token.
    """
    add_pooling_layer: bool = True

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None,
                 deterministic: bool = True, position_ids=None, segment_ids=None,
                 num_segments: int | None = None) -> BertOutput:
        check_runtime(self.dtype, self.attention_impl)
        if segment_ids is not None:
            if position_ids is None or num_segments is None:
                raise ValueError("packed rows need position_ids and num_segments with segment_ids")
            attention_mask = (segment_ids > 0).astype(jnp.int32)
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        cfg, runtime = self.config, self.runtime()
        hidden = BertEmbeddings(cfg, **runtime, name="embeddings")(
            input_ids, token_type_ids, deterministic, position_ids)
        hidden = BertEncoder(cfg, **runtime, name="encoder")(hidden, attention_mask,
                                                             deterministic, segment_ids)
        pooled = None
        if self.add_pooling_layer:
            first = hidden if segment_ids is None else segment_sum(
                hidden, jnp.where(position_ids == 0, segment_ids, 0), num_segments)[:, None]
            pooled = BertPooler(cfg, **runtime, name="pooler")(first)
        return BertOutput(last_hidden_state=hidden, pooler_output=pooled)


def mean_pool(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Mean of `hidden` [B, T, D] over unpadded positions of `attention_mask` [B, T] -> [B, D].

    Computed in float32; rows with no tokens give zeros.
    """
    mask = attention_mask.astype(jnp.float32)[..., None]
    total = (hidden.astype(jnp.float32) * mask).sum(axis=1)
    return total / jnp.maximum(mask.sum(axis=1), 1e-9)


def segment_sum(hidden: jax.Array, segment_ids: jax.Array, num_segments: int) -> jax.Array:
    """Sum of `hidden` [B, T, D] per segment of `segment_ids` [B, T] (1 .. num_segments; 0 is
    ignored) -> [num_segments, D], in `hidden`'s dtype: a one-hot matmul, fast on
    every backend."""
    onehot = segment_ids.reshape(-1)[None, :] == jnp.arange(1, num_segments + 1)[:, None]
    flat = hidden.reshape(-1, hidden.shape[-1])
    return jnp.dot(onehot.astype(flat.dtype), flat, preferred_element_type=flat.dtype)


def segment_mean_pool(hidden: jax.Array, segment_ids: jax.Array, num_segments: int) -> jax.Array:
    """`mean_pool` for packed rows: the mean of `hidden` [B, T, D] over each segment of
    `segment_ids` [B, T] (1 .. num_segments) -> [num_segments, D] float32; empty segments give
    zeros."""
    total = segment_sum(hidden.astype(jnp.float32), segment_ids, num_segments)
    counts = segment_sum(jnp.ones(segment_ids.shape + (1,), jnp.float32), segment_ids, num_segments)
    return total / jnp.maximum(counts, 1e-9)


def init_params(config: BertConfig, rng: jax.Array, add_pooling_layer: bool = True) -> Any:
    """Randomly initialised float32 parameters (BERT's normal(initializer_range) init) for
    `config`."""
    ids = jnp.zeros((1, 8), jnp.int32)
    return BertModel(config, add_pooling_layer=add_pooling_layer).init(
        rng, ids, jnp.ones_like(ids), ids)["params"]
