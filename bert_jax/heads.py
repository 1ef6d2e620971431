"""Task heads on a shared BERT encoder: `MultitaskBert`.

One encoder pass embeds every sentence of a step (SST sentences, both sides of each paraphrase
and STS pair), then each head reads its slice. The sentences come padded ([B, T] per task,
`PaddedInputs`) or packed several to a row (`PackedInputs`, `bert_jax.packing`); the forward
pass reads inputs only (labels stay with the loss). Heads follow the report:
- SST: dropout -> linear -> 5 logits.
- Paraphrase: "diff" (u - v -> dropout -> linear -> 1 logit) or "concat"
  ([|u - v|, u * v] -> dropout -> dense(hidden) -> ReLU -> dense(1 logit)).
- STS: "linear" (u - v -> dropout -> linear -> 1 score) or "cosine" (5 * cos(u, v), no parameters).
Sentence embeddings are the [CLS] pooler output ("cls") or the masked mean of the last hidden
states ("mean").
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import numpy as np
import jax
import jax.numpy as jnp

from bert_jax.batch_types import TASK_SENTENCES, PackedInputs, PaddedInputs
from bert_jax.config import BertConfig
from bert_jax.model import BertModel, mean_pool, segment_mean_pool

POOLINGS = ("cls", "mean")
PARA_HEADS = ("diff", "concat")
STS_HEADS = ("linear", "cosine")
NUM_SENTIMENT_CLASSES = 5
COSINE_EPS = 1e-8


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """Which pooling and heads a `MultitaskBert` uses, and the heads' dropout rate."""
    pooling: str = "mean"
    para_head: str = "concat"
    sts_head: str = "cosine"
    dropout: float = 0.1

    def __post_init__(self):
        for value, allowed, name in ((self.pooling, POOLINGS, "pooling"),
                                     (self.para_head, PARA_HEADS, "para_head"),
                                     (self.sts_head, STS_HEADS, "sts_head")):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, not {value!r}")


def cosine_similarity(u: jax.Array, v: jax.Array, eps: float = COSINE_EPS) -> jax.Array:
    """cos(u, v) per row as torch.nn.functional.cosine_similarity: [B, D] x [B, D] -> [B]."""
    u, v = u.astype(jnp.float32), v.astype(jnp.float32)
    norms = jnp.maximum(jnp.linalg.norm(u, axis=-1) * jnp.linalg.norm(v, axis=-1), eps)
    return (u * v).sum(-1) / norms


class MultitaskBert(nn.Module):
    """BERT encoder + SST, paraphrase and STS heads. Parameters: `bert/...` (the encoder, names as
    `BertModel`), `sst_classifier`, `para_hidden`/`para_classifier`, `sts_regressor`.

    `dtype` (compute, default float32), `param_dtype` (float32) and `attention_impl` ("xla")
    are how the model runs, as `BertModel`'s: chosen where it is built, never saved with it.

    `__call__(inputs, deterministic)` takes the inputs of a batch, `PaddedInputs` (per task
    present, its sentences' ids and masks [B_task, T]) or `PackedInputs` (rows [R, L] and the
    static examples per task, `sizes`); see `bert_jax.batch_types`. It returns
    `{"sst": logits [B, 5], "para": logits [B], "sts": scores [B]}` for the tasks present.
    """
    config: BertConfig
    heads: HeadConfig = HeadConfig()
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    attention_impl: str = "xla"

    def setup(self):
        cfg, heads = self.config, self.heads
        dense = lambda n, name: nn.Dense(n, name=name, dtype=self.dtype,
                                         param_dtype=self.param_dtype,
                                         kernel_init=nn.initializers.normal(cfg.initializer_range))
        self.bert = BertModel(cfg, dtype=self.dtype, param_dtype=self.param_dtype,
                              attention_impl=self.attention_impl)
        self.dropout = nn.Dropout(heads.dropout)
        self.sst_classifier = dense(NUM_SENTIMENT_CLASSES, "sst_classifier")
        if heads.para_head == "concat":
            self.para_hidden = dense(cfg.hidden_size, "para_hidden")
        self.para_classifier = dense(1, "para_classifier")
        if heads.sts_head == "linear":
            self.sts_regressor = dense(1, "sts_regressor")

    def embed(self, input_ids, attention_mask, deterministic: bool = True) -> jax.Array:
        """Sentence embeddings [B, D] (float32) for ids and mask [B, T]."""
        out = self.bert(input_ids, attention_mask, jnp.zeros_like(input_ids),
                        deterministic=deterministic)
        if self.heads.pooling == "cls":
            return out.pooler_output.astype(jnp.float32)
        return mean_pool(out.last_hidden_state, attention_mask)

    def embed_packed(self, input_ids, segment_ids, position_ids, num_segments: int,
                     deterministic: bool = True) -> jax.Array:
        """Sentence embeddings [num_segments, D] (float32) for packed rows [R, L]."""
        out = self.bert(input_ids, None, jnp.zeros_like(input_ids), deterministic=deterministic,
                        position_ids=position_ids, segment_ids=segment_ids,
                        num_segments=num_segments)
        if self.heads.pooling == "cls":
            return out.pooler_output.astype(jnp.float32)
        return segment_mean_pool(out.last_hidden_state, segment_ids, num_segments)

    def sst_logits(self, u, deterministic: bool = True) -> jax.Array:
        """[B, D] -> [B, 5] sentiment logits."""
        return self.sst_classifier(self.dropout(u, deterministic=deterministic)).astype(jnp.float32)

    def para_logit(self, u, v, deterministic: bool = True) -> jax.Array:
        """[B, D] x [B, D] -> [B] paraphrase logits."""
        if self.heads.para_head == "diff":
            x = self.dropout(u - v, deterministic=deterministic)
        else:
            x = jnp.concatenate([jnp.abs(u - v), u * v], axis=-1)
            x = nn.relu(self.para_hidden(self.dropout(x, deterministic=deterministic)))
        return self.para_classifier(x)[:, 0].astype(jnp.float32)

    def sts_score(self, u, v, deterministic: bool = True) -> jax.Array:
        """[B, D] x [B, D] -> [B] similarity on the 0..5 scale."""
        if self.heads.sts_head == "cosine":
            return 5.0 * cosine_similarity(u, v)
        x = self.dropout(u - v, deterministic=deterministic)
        return self.sts_regressor(x)[:, 0].astype(jnp.float32)

    def __call__(self, inputs: PaddedInputs | PackedInputs, deterministic: bool = True):
        if not isinstance(inputs, (PaddedInputs, PackedInputs)):
            raise TypeError(f"MultitaskBert takes PaddedInputs or PackedInputs (a Batch's "
                            f"`inputs`), not {type(inputs).__name__}")
        tasks = inputs.tasks
        if not tasks:
            raise ValueError(f"the batch holds no task inputs: {type(inputs).__name__} is empty")
        if isinstance(inputs, PackedInputs):
            per_task = dict(inputs.sizes)
            keys = [(t, k) for t in tasks for k in TASK_SENTENCES[t]]
            sizes = [per_task[t] for t, k in keys]
            pooled = self.embed_packed(inputs.input_ids, inputs.segment_ids,
                                       inputs.position_ids, inputs.num_segments, deterministic)
        else:
            sides = list(inputs.sides())
            keys = [(t, k) for t, k, _ in sides]
            ids = jnp.concatenate([s.input_ids for _, _, s in sides])
            mask = jnp.concatenate([s.attention_mask for _, _, s in sides])
            pooled = self.embed(ids, mask, deterministic)
            sizes = [s.input_ids.shape[0] for _, _, s in sides]
        splits = jnp.split(pooled, np.cumsum(sizes)[:-1].tolist())
        emb = dict(zip(keys, splits))
        out = {}
        if "sst" in tasks:
            out["sst"] = self.sst_logits(emb["sst", "1"], deterministic)
        if "para" in tasks:
            out["para"] = self.para_logit(emb["para", "1"], emb["para", "2"], deterministic)
        if "sts" in tasks:
            out["sts"] = self.sts_score(emb["sts", "1"], emb["sts", "2"], deterministic)
        return out

    def init_all_heads(self, input_ids, attention_mask):
        """Touch every head once (for `init`): ids and mask [B, T]."""
        u = self.embed(input_ids, attention_mask)
        return self.sst_logits(u), self.para_logit(u, u), self.sts_score(u, u)


def init_multitask_params(config: BertConfig, heads: HeadConfig, rng: jax.Array,
                          encoder_params=None, *, param_dtype: Any = jnp.float32):
    """Parameters for `MultitaskBert`: fresh heads, and `encoder_params` (e.g. pretrained) if given.

    Fresh parameters are created in `param_dtype` (float32, what checkpoints hold). One compiled
    program, not one per operation (the initialising forward pass run eagerly compiled each of
    its ~150 operations: 7 s of CPU for the default model, at every start); with
    `encoder_params` XLA also drops the encoder's own initialisation."""
    return _init_multitask_params(config, heads, jnp.dtype(param_dtype), rng, encoder_params)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _init_multitask_params(config: BertConfig, heads: HeadConfig, param_dtype, rng: jax.Array,
                           encoder_params):
    ids = jnp.ones((2, 8), jnp.int32)
    params = MultitaskBert(config, heads, param_dtype=param_dtype).init(
        rng, ids, jnp.ones_like(ids), method=MultitaskBert.init_all_heads)["params"]
    params = dict(params)
    if encoder_params is not None:
        params["bert"] = encoder_params
    return params
