"""The optimiser: learning-rate rules and groups, AdamW, global-norm clipping and the skip of
non-finite updates, all optax transforms. The optimiser state reports the learning rate each
group used for its last update (`learning_rates`), so the logs read what was applied.
Checkpoints of earlier versions (plain AdamW states, no finite check) convert to this layout
(`earlier_layout`)."""
from __future__ import annotations

import re
from typing import Any, Callable

import jax
import numpy as np
import optax

from train.config import TrainConfig

# apply_if_finite gives up skipping after this many non-finite updates in a row: never.
NEVER_GIVE_UP = int(np.iinfo(np.int32).max)


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
    and the logs' `lr_<name>`.

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
    (`num_layers`: the encoder's depth, for `layer_lr_decay`); with one group every parameter
    uses `lr`. An update whose gradient holds a NaN or an infinity is skipped: parameters and
    state stay as they were, and the state counts it (`optax.apply_if_finite`, which never
    gives up skipping here). Each group's AdamW has its learning rate injected
    (`optax.inject_hyperparams`), so the state holds the rate of the last update."""
    def adamw_at(lr):
        def adamw(learning_rate):
            return optax.adamw(learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                               weight_decay=cfg.weight_decay)
        return optax.inject_hyperparams(adamw)(
            learning_rate=make_schedule(cfg.replace(lr=lr), total_steps))

    rules, rates = lr_rules(cfg, num_layers), _group_rates(cfg, num_layers)
    if rates is None:
        adamw = adamw_at(cfg.lr)
    else:
        adamw = optax.multi_transform({name: adamw_at(lr) for name, lr in rates.items()},
                                      lambda params: lr_group_labels(params, rules))
    if cfg.grad_clip > 0:
        adamw = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw)
    return optax.apply_if_finite(adamw, max_consecutive_errors=NEVER_GIVE_UP)


def _group_rates(cfg: TrainConfig, num_layers: int) -> dict[str, float] | None:
    """Each learning-rate group's rate, by the names of `lr_rules`; None for one group (the
    encoder and the heads both at lr)."""
    rules = lr_rules(cfg, num_layers)
    if len(rules) == 2:
        return None
    rates = {}
    for name, _, multiplier in rules:
        rates.setdefault(name, cfg.lr * multiplier)
    return rates


def group_schedules(cfg: TrainConfig, total_steps: int,
                    num_layers: int = 0) -> dict[str, optax.Schedule]:
    """Each group's learning-rate schedule in `make_optimizer(cfg, total_steps, num_layers)`,
    keyed as `learning_rates` reports the groups: `{"lr": ...}` or `{"lr_<group>": ...}`."""
    rates = _group_rates(cfg, num_layers)
    if rates is None:
        return {"lr": make_schedule(cfg, total_steps)}
    return {f"lr_{name}": make_schedule(cfg.replace(lr=lr), total_steps)
            for name, lr in rates.items()}


def _group_key(path) -> str:
    """The `learning_rates` key of the group whose state sits at `path` in a state of
    `make_optimizer`: the last dict key on the way (multi_transform's group), else "lr"."""
    groups = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    return f"lr_{groups[-1]}" if groups else "lr"


def learning_rates(opt_state) -> dict[str, jax.Array]:
    """The learning rate of each group in the last update `opt_state` took (a state of
    `make_optimizer`; before any update, the first update's): `{"lr": ...}` with one group, else
    `{"lr_<group>": ...}` per group of `lr_rules`. Scalars, on device inside a jit."""
    rates = {}
    for path, value in optax.tree_utils.tree_get_all_with_path(opt_state, "learning_rate"):
        if getattr(path[-2], "name", None) != "hyperparams":  # not the schedule's own state
            continue
        rates[_group_key(path[:-1])] = value
    return rates


def skipped_updates(opt_state) -> jax.Array:
    """How many updates `opt_state` (a state of `make_optimizer`) skipped as non-finite: int32."""
    return opt_state.total_notfinite


def last_update_applied(opt_state) -> jax.Array:
    """Whether the last update was applied (its gradient finite): bool scalar."""
    return opt_state.last_finite


def _injected(node) -> bool:
    return isinstance(node, optax.InjectStatefulHyperparamsState)


def legacy_layout(opt_state):
    """The layout earlier versions saved `opt_state` (a state of `make_optimizer`) in: the
    same chain without the finite check's `ApplyIfFiniteState` around it, each group's AdamW
    state plain `optax.adamw(schedule)`'s, `(ScaleByAdamState, EmptyState,
    ScaleByScheduleState(count))`, where the injected state wraps `(ScaleByAdamState,
    EmptyState, EmptyState)`. A restore target: the leaves are `opt_state`'s arrays (each
    schedule count the injected count: int32 [], its sharding)."""
    def plain(node):
        if not _injected(node):
            return node
        adam, decay, _ = node.inner_state
        return (adam, decay, optax.ScaleByScheduleState(count=node.count))
    return jax.tree.map(plain, opt_state.inner_state, is_leaf=_injected)


def from_legacy(template, legacy, step: int, schedules: dict[str, optax.Schedule]):
    """A state of `make_optimizer` from `legacy`, a state in `legacy_layout(template)`'s
    layout saved at train step `step`, as a run of this version holds it after the same
    updates: Adam's moments and counts from `legacy`; each group's injected count and schedule
    count the updates applied (the legacy schedule count); its `learning_rate` the rate of
    the last update, `schedules[key](applied - 1)` (before any update, the first's); the
    finite check's counters: no non-finite update in a row, the last one applied, and
    `step - applied` skipped in all. `template`: a state of the same optimiser (shapes,
    dtypes and shardings of the new leaves); `schedules`: `group_schedules`'."""
    def put(value, like: jax.Array) -> jax.Array:
        return jax.device_put(np.asarray(value, like.dtype), like.sharding)

    applied = []

    def convert(path, new, old):
        if not _injected(new):
            return old
        adam, decay, plain = old
        count = int(plain.count)
        applied.append(count)
        rate = schedules[_group_key(path)](max(count - 1, 0))
        return new._replace(
            count=put(count, new.count),
            hyperparams={**new.hyperparams,
                         "learning_rate": put(rate, new.hyperparams["learning_rate"])},
            hyperparams_states=jax.tree.map(lambda c: put(count, c), new.hyperparams_states),
            inner_state=(adam, decay, new.inner_state[2]))

    inner = jax.tree_util.tree_map_with_path(convert, template.inner_state, legacy,
                                             is_leaf=_injected)
    skipped = step - (applied[0] if applied else step)
    return template._replace(
        notfinite_count=put(0, template.notfinite_count),
        last_finite=put(True, template.last_finite),
        total_notfinite=put(skipped, template.total_notfinite), inner_state=inner)


def earlier_layout(state, schedules: dict[str, optax.Schedule]
                   ) -> tuple[Any, Callable[[Any], Any], str]:
    """What `RunCheckpoints.restore(state, earlier=...)` needs to read a checkpoint an earlier
    version wrote: `state` (a training state: `.step`, `.opt_state` of `make_optimizer`,
    `.replace`) in the earlier layout (`legacy_layout`), the conversion of a state restored
    in it to `state`'s layout (`from_legacy`), and what was converted."""
    target = state.replace(opt_state=legacy_layout(state.opt_state))

    def convert(restored):
        return restored.replace(opt_state=from_legacy(
            state.opt_state, restored.opt_state, int(restored.step), schedules))
    return target, convert, "optimiser state"
