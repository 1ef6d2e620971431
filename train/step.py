"""Losses, the optimiser, the device mesh and the jit-compiled train and eval steps.

The train step is one per-device program (`jax.shard_map` over the mesh's "data" axis) holding the
forward pass, the summed task losses (`lax.pmean` over the devices: the global batch's mean), the
gradient (shard_map's autodiff sums the replicated parameters' cotangents over the devices, so it
is the global mean gradient) and the optax update: what `pmap` did, in the supported API, and multi-host ready. One device runs
the same code with a mesh of one.
"""
from __future__ import annotations

import importlib.metadata
import re
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from bert_jax.batch_types import Batch, PackedInputs, PaddedInputs, TaskLabels
from bert_jax.errors import ConfigError
from bert_jax.heads import MultitaskBert
from train.config import TrainConfig

DATA_AXIS = "data"


class TrainState(flax.struct.PyTreeNode):
    """Everything a step changes: `step` (int32 scalar), `params`, `opt_state`, `rng` (uint32 [2])."""
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def make_mesh(devices=None) -> Mesh:
    """A one-axis mesh ("data") over `devices` (default: every device of every process)."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devices.reshape(-1), (DATA_AXIS,))


def make_schedule(cfg: TrainConfig, total_steps: int) -> optax.Schedule:
    """Constant `lr`, with optional linear warm-up from 0 and linear decay to 0 at `total_steps`."""
    if cfg.linear_decay:
        after = optax.linear_schedule(cfg.lr, 0.0, max(total_steps - cfg.warmup_steps, 1))
    else:
        after = optax.constant_schedule(cfg.lr)
    if cfg.warmup_steps <= 0:
        return after
    warmup = optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)
    return optax.join_schedules([warmup, after], [cfg.warmup_steps])


def lr_rules(cfg: TrainConfig, num_layers: int = 0) -> list[tuple[str, str, float]]:
    """Learning-rate groups as a table of `(name, pattern, multiplier of cfg.lr)` rules, first
    match wins; a parameter's path reads "bert/encoder/layer_3/attention/query/kernel" (the
    encoder) or "para_hidden/kernel" (a task head). The names are the optimiser state's keys
    (a checkpoint of one version resumes in the next).

    - the task heads (everything outside `bert/`) at `head_lr` when it is set;
    - with `layer_lr_decay` d < 1, encoder layer i of L at d ** (L - 1 - i), the embeddings at
      d ** L, the pooler ("top") at 1;
    - the encoder at 1.
    """
    rules = []
    if cfg.head_lr > 0:
        rules.append(("heads", r"^(?!bert/)", cfg.head_lr / cfg.lr))
    if cfg.layer_lr_decay != 1.0:
        if num_layers < 1:
            raise ValueError("layer_lr_decay needs the encoder's num_layers")
        d = cfg.layer_lr_decay
        rules += [(f"layer_{i}", rf"^bert/encoder/layer_{i}/", d ** (num_layers - 1 - i))
                  for i in range(num_layers)]
        rules += [("embeddings", r"^bert/embeddings/", d ** num_layers), ("top", r"^bert/", 1.0)]
    else:
        rules.append(("encoder", r"^bert/", 1.0))
    return rules + [("heads", r".*", 1.0)]  # heads at lr when head_lr is not set


def lr_group_labels(params, rules: list[tuple[str, str, float]]):
    """The tree of `params` with each leaf replaced by the name of its first matching rule."""
    compiled = [(name, re.compile(pattern)) for name, pattern, _ in rules]

    def label(path, _):
        text = "/".join(str(getattr(k, "key", k)) for k in path)
        return next(name for name, pattern in compiled if pattern.search(text))
    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(cfg: TrainConfig, total_steps: int,
                   num_layers: int = 0) -> optax.GradientTransformation:
    """AdamW as torch.optim.AdamW (decoupled weight decay), optionally after global-norm clipping,
    each learning-rate group of `lr_rules` on the same warm-up/decay schedule at its own rate
    (`num_layers`: the encoder's depth, for `layer_lr_decay`). With one group every parameter
    uses `lr` and the state is plain AdamW's."""
    def adamw_at(lr):
        return optax.adamw(make_schedule(cfg.replace(lr=lr), total_steps), b1=cfg.b1, b2=cfg.b2,
                           eps=cfg.eps, weight_decay=cfg.weight_decay)

    rules = lr_rules(cfg, num_layers)
    rates = {}
    for name, _, multiplier in rules:
        rates.setdefault(name, cfg.lr * multiplier)
    if len(rules) == 2:  # the encoder and the heads, both at lr: one group
        adamw = adamw_at(cfg.lr)
    else:
        adamw = optax.multi_transform({name: adamw_at(lr) for name, lr in rates.items()},
                                      lambda params: lr_group_labels(params, rules))
    if cfg.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw)
    return adamw


def learning_rates(cfg: TrainConfig, total_steps: int, num_layers: int = 0
                   ) -> Callable[[int], dict[str, float]]:
    """`rates(step)`: the learning rate each group of `make_optimizer` used for the update of
    `step` (1-based, the schedule at step - 1): `{"lr": ...}` with one group, else
    `{"lr_<group>": ...}` per group of `lr_rules`."""
    schedule = make_schedule(cfg, total_steps)  # linear in cfg.lr: a group's is a multiple
    rules = lr_rules(cfg, num_layers)
    multipliers = {}
    for name, _, multiplier in rules:
        multipliers.setdefault(name, multiplier)

    def rates(step: int) -> dict[str, float]:
        base = float(schedule(max(step - 1, 0)))
        if len(rules) == 2:  # one group, as in make_optimizer
            return {"lr": base}
        return {f"lr_{name}": base * m for name, m in multipliers.items()}
    return rates


def task_losses(outputs: dict[str, jax.Array], labels: TaskLabels) -> dict[str, jax.Array]:
    """Mean loss per task present: SST cross-entropy, paraphrase BCE on logits, STS MSE.
    `outputs` as `MultitaskBert` returns them; `labels` [B_task] per task (a `Batch`'s)."""
    losses = {}
    if "sst" in outputs:
        losses["sst"] = optax.softmax_cross_entropy_with_integer_labels(
            outputs["sst"], labels.sst).mean()
    if "para" in outputs:
        losses["para"] = optax.sigmoid_binary_cross_entropy(
            outputs["para"], labels.para.astype(jnp.float32)).mean()
    if "sts" in outputs:
        losses["sts"] = jnp.mean((outputs["sts"] - labels.sts) ** 2)
    return losses


def make_train_step(model: MultitaskBert, tx: optax.GradientTransformation, mesh: Mesh,
                    deterministic: bool = False):
    """`step(state, batch) -> (state, metrics)`, jit-compiled, `state` donated.

    `batch` is a `Batch` of global arrays sharded over the "data" axis (leading dimension = the
    global batch per task, or packed rows, divisible by the number of devices; packed, each
    device's rows a packing group of `sizes` examples per task). `metrics` (replicated
    scalars): `loss` (the sum of task losses), `loss_{task}` per task present, `finite` (1.0 if
    the loss was finite; a non-finite step leaves params and optimiser state unchanged),
    `grad_norm`.
    """
    # On a mesh of one device the program runs without shard_map: a one-device all-reduce of
    # the gradients is still a copy of every one of them (about 4% of a CPU step).
    single = mesh.devices.size == 1

    def per_device(state: TrainState, batch: Batch):
        rng = jax.random.fold_in(state.rng, state.step)
        if not single:
            rng = jax.random.fold_in(rng, jax.lax.axis_index(DATA_AXIS))

        def loss_fn(params):
            outputs = model.apply({"params": params}, batch.inputs,
                                  deterministic=deterministic, rngs={"dropout": rng})
            losses = task_losses(outputs, batch.labels)
            if not single:  # the global batch's mean loss
                losses = jax.lax.pmean(losses, DATA_AXIS)
            return sum(losses.values()), losses

        # The parameters are replicated (unvarying over the "data" axis), so shard_map's
        # autodiff already sums their cotangents over the devices: the gradient of the mean loss
        # above is the global mean gradient, with no all-reduce of our own. (An explicit pmean
        # of per-device gradients here would be a no-op on sums: 4x the gradient on 4 devices.)
        (loss, losses), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)

        def update():
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            return optax.apply_updates(state.params, updates), opt_state

        finite = jnp.isfinite(loss)
        # A conditional, not a select of old and new values: the select kept both copies of
        # params and optimiser state alive, and its copies led the CPU profile's optimiser phase.
        params, opt_state = jax.lax.cond(finite, update, lambda: (state.params, state.opt_state))
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        metrics = {"loss": loss, "finite": finite.astype(jnp.float32),
                   "grad_norm": optax.tree.norm(grads),
                   **{f"loss_{task}": value for task, value in losses.items()}}
        return new_state, metrics

    if single:
        return jax.jit(per_device, donate_argnums=(0,))
    sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(DATA_AXIS)),
                            out_specs=(P(), P()))
    return jax.jit(sharded, donate_argnums=(0,))


def make_predict_step(model: MultitaskBert):
    """`predict(params, inputs) -> {task: outputs}` (dropout off), jit-compiled; `inputs`:
    `PaddedInputs` or `PackedInputs`.

    Inputs may be sharded over the "data" axis; jit partitions the forward pass accordingly.
    """
    @jax.jit
    def predict(params, inputs: PaddedInputs | PackedInputs):
        return model.apply({"params": params}, inputs, deterministic=True)
    return predict


def create_state(params, tx: optax.GradientTransformation, seed: int, mesh: Mesh) -> TrainState:
    """A fresh `TrainState` replicated over the mesh."""
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       rng=jax.random.PRNGKey(seed))
    return replicate(state, mesh)


def replicate(tree, mesh: Mesh):
    return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(batch: Batch, mesh: Mesh) -> Batch:
    """Host batch (this process's rows, numpy) -> the same pytree of global arrays split over
    the "data" axis (static fields, such as packed `sizes`, carried as they are)."""
    sharding = NamedSharding(mesh, P(DATA_AXIS))
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return jax.tree.map(lambda v: jax.make_array_from_process_local_data(sharding, v), batch)


def check_divisible(batch_size: int, mesh: Mesh, what: str = "batch size") -> None:
    devices = mesh.devices.size
    if batch_size % devices:
        raise ConfigError(
            f"the global {what} {batch_size} does not split evenly over {devices} devices: "
            f"use a multiple of {devices} (e.g. --batch-size {devices * max(1, batch_size // devices)})")


# Packages that put JAX on an accelerator: installed, yet the backend is "cpu", means JAX could
# not use the device (no driver, no device visible, a version mismatch) and fell back silently.
ACCELERATOR_PACKAGES = ("jax-cuda12-plugin", "jax-cuda13-plugin", "jax-cuda12-pjrt",
                        "jax-rocm60-plugin", "libtpu", "libtpu-nightly")


def backend_report() -> tuple[str, str | None]:
    """(a line naming the backend and its devices, a one-line warning or None when a GPU/TPU
    build of JAX is installed but JAX fell back to the CPU)."""
    installed = []
    for name in ACCELERATOR_PACKAGES:
        try:
            installed.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    devices = jax.devices()
    line = (f"JAX {jax.__version__} on {jax.default_backend()}: {len(devices)} device(s) "
            f"({devices[0].device_kind}), {jax.process_count()} process(es)")
    warning = None
    if installed and jax.default_backend() == "cpu":
        warning = (f"{', '.join(installed)} is installed but JAX runs on the CPU: it found no "
                   "usable GPU/TPU (check `nvidia-smi` or the TPU runtime, and `python -c 'import "
                   "jax; print(jax.devices())'`); training continues on the CPU")
    return line, warning
