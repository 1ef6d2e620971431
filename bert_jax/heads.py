"""Task heads on a shared BERT encoder: `MultitaskBert`.

One encoder pass embeds every sequence of a step (each single sentence, each side of a
bi-encoded pair, each cross-encoded pair as one joint sequence), then each task's head reads its
slice. The sentences come padded ([B, T] per task, `PaddedInputs`) or packed several to a row
(`PackedInputs`, `bert_jax.packing`); the forward pass reads inputs only (labels stay with the
loss). The heads (`bert_jax.tasks` lists which a task kind takes), on embeddings u (and v):
- linear: dropout -> linear (one sentence: on u; a bi-encoded pair: on u - v, as "diff");
- concat: [|u - v|, u * v] -> dropout -> dense(hidden) -> ReLU -> linear;
- cosine: the range's top x cos(u, v), no parameters (STS: 5 x cos);
- cross: dropout -> linear on the joint sequence's embedding.
The report's heads: SST linear -> 5 logits; paraphrase "diff" or "concat" -> 1 logit; STS
"linear" (u - v) or "cosine". Sentence embeddings are the [CLS] pooler output ("cls") or the
masked mean of the last hidden states ("mean").
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import numpy as np
import jax
import jax.numpy as jnp

from bert_jax.batch_types import PackedInputs, PaddedInputs
from bert_jax.config import BertConfig
from bert_jax.model import BertModel, mean_pool, segment_mean_pool
from bert_jax.tasks import (PARA_HEADS, STS_HEADS, Task, TaskError, builtin_tasks, check_names,
                            find)

POOLINGS = ("cls", "mean")
NUM_SENTIMENT_CLASSES = 5
COSINE_EPS = 1e-8


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """Which pooling and heads a `MultitaskBert` uses, and the heads' dropout rate.

    `tasks`: the built-in SST, paraphrase (`para_head`) and STS (`sts_head`; "cross" on either
    cross-encodes the pair) definitions, then `extra_tasks` (a user's own, `bert_jax.tasks.Task`).
    """
    pooling: str = "mean"
    para_head: str = "concat"
    sts_head: str = "cosine"
    dropout: float = 0.1
    extra_tasks: tuple[Task, ...] = ()

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, not {self.pooling!r}")
        for value, allowed, name in ((self.para_head, PARA_HEADS, "para_head"),
                                     (self.sts_head, STS_HEADS, "sts_head")):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, not {value!r}")
        object.__setattr__(self, "extra_tasks", tuple(self.extra_tasks))
        try:
            check_names(self.tasks)
        except TaskError as err:
            raise ValueError(str(err)) from None

    @property
    def tasks(self) -> tuple[Task, ...]:
        return builtin_tasks(self.para_head, self.sts_head) + self.extra_tasks

    def task(self, name: str) -> Task:
        """The definition of task `name`; TaskError naming the tasks there are."""
        return find(self.tasks, name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)


def cosine_similarity(u: jax.Array, v: jax.Array, eps: float = COSINE_EPS) -> jax.Array:
    """cos(u, v) per row as torch.nn.functional.cosine_similarity: [B, D] x [B, D] -> [B]."""
    u, v = u.astype(jnp.float32), v.astype(jnp.float32)
    norms = jnp.maximum(jnp.linalg.norm(u, axis=-1) * jnp.linalg.norm(v, axis=-1), eps)
    return (u * v).sum(-1) / norms


def head_layer_names(task: Task) -> tuple[str, ...]:
    """The parameter groups of a task's head: `<name>_hidden` (concat), then the output layer
    `<name>_classifier` (classification) or `<name>_regressor` (regression); none for cosine."""
    if task.head == "cosine":
        return ()
    out = f"{task.name}_{'classifier' if task.is_classification else 'regressor'}"
    return ((f"{task.name}_hidden",) if task.head == "concat" else ()) + (out,)


class MultitaskBert(nn.Module):
    """BERT encoder + one head per task of `heads.tasks`. Parameters: `bert/...` (the encoder,
    names as `BertModel`), then per task `head_layer_names(task)`: the built-ins'
    `sst_classifier`, `para_hidden`/`para_classifier`, `sts_regressor`.

    `dtype` (compute, default float32), `param_dtype` (float32) and `attention_impl` ("xla")
    are how the model runs, as `BertModel`'s: chosen where it is built, never saved with it.

    `__call__(inputs, deterministic)` takes the inputs of a batch, `PaddedInputs` (per task
    present, its sequences' ids and masks [B_task, T]) or `PackedInputs` (rows [R, L] and the
    static examples per task, `sizes`); see `bert_jax.batch_types`. It returns per task present
    its head's outputs: logits [B, K] (K > 2 classes), one logit [B] (two classes) or a score
    [B] (regression); the built-ins: `{"sst": [B, 5], "para": [B], "sts": [B]}`.
    """
    config: BertConfig
    heads: HeadConfig = HeadConfig()
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    attention_impl: str = "xla"

    def setup(self):
        cfg = self.config
        dense = lambda n, name: nn.Dense(n, name=name, dtype=self.dtype,
                                         param_dtype=self.param_dtype,
                                         kernel_init=nn.initializers.normal(cfg.initializer_range))
        self.bert = BertModel(cfg, dtype=self.dtype, param_dtype=self.param_dtype,
                              attention_impl=self.attention_impl)
        self.dropout = nn.Dropout(self.heads.dropout)
        layers = {}
        for task in self.heads.tasks:
            for name in head_layer_names(task):
                size = cfg.hidden_size if name.endswith("_hidden") else task.num_outputs
                layers[name] = dense(size, name)
        self.layers = layers

    def _pool(self, out, attention_mask=None, segment_ids=None, num_segments=None) -> jax.Array:
        if self.heads.pooling == "cls":
            return out.pooler_output.astype(jnp.float32)
        if segment_ids is not None:
            return segment_mean_pool(out.last_hidden_state, segment_ids, num_segments)
        return mean_pool(out.last_hidden_state, attention_mask)

    def embed(self, input_ids, attention_mask, deterministic: bool = True,
              token_type_ids=None) -> jax.Array:
        """Sequence embeddings [B, D] (float32) for ids and mask [B, T] (and token types [B, T]
        of cross-encoded pairs; default 0)."""
        types = jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        out = self.bert(input_ids, attention_mask, types, deterministic=deterministic)
        return self._pool(out, attention_mask)

    def embed_packed(self, input_ids, segment_ids, position_ids, num_segments: int,
                     deterministic: bool = True, token_type_ids=None) -> jax.Array:
        """Sequence embeddings [num_segments, D] (float32) for packed rows [R, L]."""
        types = jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        out = self.bert(input_ids, None, types, deterministic=deterministic,
                        position_ids=position_ids, segment_ids=segment_ids,
                        num_segments=num_segments)
        return self._pool(out, segment_ids=segment_ids, num_segments=num_segments)

    def _output(self, task: Task, x) -> jax.Array:
        out = self.layers[head_layer_names(task)[-1]](x).astype(jnp.float32)
        return out if task.num_outputs > 1 else out[:, 0]

    def head(self, task: Task, u, v=None, deterministic: bool = True) -> jax.Array:
        """A task's outputs from its embeddings: u [B, D] (one sentence, a cross-encoded pair)
        or u, v [B, D] (a bi-encoded pair) -> [B, K] or [B]."""
        drop = lambda x: self.dropout(x, deterministic=deterministic)
        if task.head == "cosine":
            return task.range[1] * cosine_similarity(u, v)
        if task.head == "concat":
            x = jnp.concatenate([jnp.abs(u - v), u * v], axis=-1)
            return self._output(task, nn.relu(self.layers[f"{task.name}_hidden"](drop(x))))
        return self._output(task, drop(u if v is None else u - v))

    def __call__(self, inputs: PaddedInputs | PackedInputs, deterministic: bool = True):
        if not isinstance(inputs, (PaddedInputs, PackedInputs)):
            raise TypeError(f"MultitaskBert takes PaddedInputs or PackedInputs (a Batch's "
                            f"`inputs`), not {type(inputs).__name__}")
        if not inputs.tasks:
            raise ValueError(f"the batch holds no task inputs: {type(inputs).__name__} is empty")
        unknown = [t for t in inputs.tasks if t not in self.heads.names]
        if unknown:
            raise ValueError(f"the batch holds task(s) {unknown} the model has no head for "
                             f"(its tasks: {', '.join(self.heads.names)})")
        if isinstance(inputs, PackedInputs):
            keys, sizes = [], []
            for name, n, sides in inputs.sizes:
                task = self.heads.task(name)
                if sides != len(task.sides):
                    raise ValueError(f"{name}: {sides} sequences per example packed, its "
                                     f"{task.encoding}-encoded head reads {len(task.sides)}")
                keys += [(name, k) for k in task.sides]
                sizes += [n] * sides
            pooled = self.embed_packed(inputs.input_ids, inputs.segment_ids,
                                       inputs.position_ids, inputs.num_segments, deterministic,
                                       inputs.token_type_ids)
        else:
            sides = list(inputs.sides(self.heads.tasks))
            keys = [(t, k) for t, k, _ in sides]
            ids = jnp.concatenate([s.input_ids for _, _, s in sides])
            mask = jnp.concatenate([s.attention_mask for _, _, s in sides])
            types = None
            if any(s.token_type_ids is not None for _, _, s in sides):
                types = jnp.concatenate([jnp.zeros_like(s.input_ids) if s.token_type_ids is None
                                         else s.token_type_ids for _, _, s in sides])
            pooled = self.embed(ids, mask, deterministic, types)
            sizes = [s.input_ids.shape[0] for _, _, s in sides]
        splits = jnp.split(pooled, np.cumsum(sizes)[:-1].tolist())
        emb = dict(zip(keys, splits))
        return {task.name: self.head(task, emb[task.name, "1"], emb.get((task.name, "2")),
                                     deterministic)
                for task in self.heads.tasks if task.name in inputs.tasks}

    def init_all_heads(self, input_ids, attention_mask):
        """Touch every head once (for `init`): ids and mask [B, T]."""
        u = self.embed(input_ids, attention_mask)
        return tuple(self.head(t, u, u if len(t.sides) == 2 else None) for t in self.heads.tasks)


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
