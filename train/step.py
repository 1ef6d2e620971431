"""The training state, the task losses and the jit-compiled train step.

The train step is one per-device program (`jax.shard_map` over the mesh's "data" axis) holding the
forward pass, the summed task losses (`lax.pmean` over the devices: the global batch's mean), the
gradient (shard_map's autodiff sums the replicated parameters' cotangents over the devices, so it
is the global mean gradient) and the optax update (train/optimizer.py): what `pmap` did, in the
supported API, and multi-host ready. One device runs the same code with a mesh of one.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, PartitionSpec as P

from bert_jax.batch_types import Batch, TaskLabels
from bert_jax.heads import MultitaskBert
from bert_jax.tasks import Task
from train.optimizer import last_update_applied, learning_rates
from train.sharding import DATA_AXIS, replicate


class TrainState(flax.struct.PyTreeNode):
    """Everything a step changes: `step` (int32 scalar), `params`, `opt_state`, `rng` (uint32 [2])."""
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def create_state(params, tx: optax.GradientTransformation, seed: int, mesh: Mesh) -> TrainState:
    """A fresh `TrainState` replicated over the mesh."""
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       rng=jax.random.PRNGKey(seed))
    return replicate(state, mesh)


def task_losses(outputs: dict[str, jax.Array], labels: TaskLabels,
                tasks: Sequence[Task]) -> dict[str, jax.Array]:
    """Mean loss per task present, in the order of `tasks` (the model's definitions): cross-
    entropy on K > 2 logits, binary cross-entropy on one logit (two classes), MSE on scores
    (`Task.loss`). `outputs` as `MultitaskBert` returns them; `labels` [B_task] per task (a
    `Batch`'s): int32 class indices or float32 scores. Each task's `loss_weight` is applied
    where the losses are summed (`weighted_sum`), not here."""
    losses = {}
    for task in tasks:
        if task.name not in outputs:
            continue
        out, gold = outputs[task.name], labels[task.name]
        if task.loss == "ce":
            loss = optax.softmax_cross_entropy_with_integer_labels(out, gold).mean()
            if task.ordinal:
                loss = loss + task.ordinal * squared_emd(out, gold).mean()
            losses[task.name] = loss
        elif task.loss == "bce":
            losses[task.name] = optax.sigmoid_binary_cross_entropy(
                out, gold.astype(jnp.float32)).mean()
        else:
            losses[task.name] = jnp.mean((out - gold) ** 2)
    return losses


def squared_emd(logits: jax.Array, gold: jax.Array) -> jax.Array:
    """The squared earth mover's distance between softmax(logits) [B, K] and the one-hot gold
    class [B] over K ordered classes: sum over k of (CDF_pred(k) - CDF_gold(k))^2, [B]. Zero
    when all mass is on the gold class; a wrong class costs more the farther it is."""
    cdf_pred = jnp.cumsum(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), axis=-1)
    cdf_gold = (jnp.arange(logits.shape[-1])[None, :] >= gold[:, None]).astype(jnp.float32)
    return jnp.sum((cdf_pred - cdf_gold) ** 2, axis=-1)


def weighted_sum(losses: dict[str, jax.Array], tasks: Sequence[Task]) -> jax.Array:
    """The loss a step minimises: sum over tasks of `loss_weight` x the task's loss (x 1.0,
    every built-in's weight, is exact: the report's plain sum)."""
    weights = {t.name: t.loss_weight for t in tasks}
    return sum(weights[k] * v for k, v in losses.items())


def make_train_step(model: MultitaskBert, tx: optax.GradientTransformation, mesh: Mesh,
                    deterministic: bool = False, tasks: Sequence[Task] | None = None):
    """`step(state, batch) -> (state, metrics)`, jit-compiled, `state` donated.

    `batch` is a `Batch` of global arrays sharded over the "data" axis (leading dimension = the
    global batch per task, or packed rows, divisible by the number of devices; packed, each
    device's rows a packing group of `sizes` examples per task). `metrics` (replicated
    scalars): `loss` (the weighted sum of task losses), `loss_{task}` per task present, `finite` (1.0
    when the update was applied; a non-finite gradient, as a non-finite loss gives, leaves
    params and optimiser state unchanged), `grad_norm`, and the learning rate of each group
    (`lr` or `lr_<group>`, see `train.optimizer.learning_rates`). `tx`: `make_optimizer`'s.
    `tasks`: the definitions the losses follow (loss weights, ordinal penalty: training
    settings, `TrainConfig.loss_tasks`); default the model's.
    """
    tasks = tuple(tasks) if tasks is not None else model.heads.tasks
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
            losses = task_losses(outputs, batch.labels, tasks)
            if not single:  # the global batch's mean loss
                losses = jax.lax.pmean(losses, DATA_AXIS)
            return weighted_sum(losses, tasks), losses

        # The parameters are replicated (unvarying over the "data" axis), so shard_map's
        # autodiff already sums their cotangents over the devices: the gradient of the mean loss
        # above is the global mean gradient, with no all-reduce of our own. (An explicit pmean
        # of per-device gradients here would be a no-op on sums: 4x the gradient on 4 devices.)
        (loss, losses), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)

        # A gradient holding a NaN or an infinity leaves params and optimiser state as they
        # were (the optimiser's `apply_if_finite`: a conditional, which keeps no second copy).
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        metrics = {"loss": loss, "finite": last_update_applied(opt_state).astype(jnp.float32),
                   "grad_norm": optax.tree.norm(grads), **learning_rates(opt_state),
                   **{f"loss_{task}": value for task, value in losses.items()}}
        return new_state, metrics

    if single:
        return jax.jit(per_device, donate_argnums=(0,))
    sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(DATA_AXIS)),
                            out_specs=(P(), P()))
    return jax.jit(sharded, donate_argnums=(0,))


def step_signature(batch: Batch) -> tuple:
    """What the compiled train step is specialised on besides the state: the batch's tree (with
    its static fields, such as packed `sizes`) and each array's shape and dtype. The step
    compiles once per distinct signature (a run's `train_step_compiles` counts them)."""
    leaves, tree = jax.tree.flatten(batch)
    return tree, tuple((x.shape, x.dtype) for x in leaves)
