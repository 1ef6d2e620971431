"""Training-run folders: orbax checkpoints: `last/` (every save) and `best/` (best dev score so far).

Orbax writes each step into a temporary folder and renames it when complete, so a kill during a
save leaves the previous checkpoint intact. Restoring walks back from the newest step and skips
any that fail to load (naming them), so a damaged checkpoint costs at most one save interval.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from bert_jax.config import BertConfig
from bert_jax.heads import HeadConfig

log = logging.getLogger("bert_jax.checkpoints")


class CheckpointError(RuntimeError):
    """No intact checkpoint could be restored."""


def _manager(directory: Path, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=False,
                                           cleanup_tmp_directories=True)
    return ocp.CheckpointManager(directory.resolve(), options=options,
                                 item_names=("state", "meta"))


class RunCheckpoints:
    """`last/` and `best/` managers of a run folder. State = any pytree (a `TrainState`)."""

    def __init__(self, run_dir: str | Path, keep_last: int = 2):
        self.run_dir = Path(run_dir)
        self.last = _manager(self.run_dir / "last", keep_last)
        self.best = _manager(self.run_dir / "best", 1)

    def save(self, step: int, state: Any, meta: dict, best: bool = False) -> None:
        """Save `state` and JSON `meta` at `step` into `last/` (and `best/` when `best`)."""
        managers = [self.last] + ([self.best] if best else [])
        for manager in managers:
            if step in manager.all_steps():
                continue
            manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                       meta=ocp.args.JsonSave(meta)))
            manager.wait_until_finished()

    def restore(self, target: Any, which: str = "last", step: int | None = None):
        """Newest intact checkpoint of `which` as (state shaped like `target`, meta, step).

        `target` gives the tree structure, shapes, dtypes and shardings (None: the saved tree as
        nested dicts of arrays). Raises CheckpointError naming every folder tried when none loads.
        """
        manager = self.last if which == "last" else self.best
        steps = [step] if step is not None else sorted(manager.all_steps(), reverse=True)
        abstract = None if target is None else jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        failures = []
        for s in steps:
            try:
                restored = manager.restore(s, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
                if failures:
                    log.warning("skipped damaged checkpoints: %s", "; ".join(failures))
                return restored.state, restored.meta, s
            except Exception as err:  # a damaged folder: try the previous step
                failures.append(f"{manager.directory / str(s)}: {type(err).__name__}: {err}"[:500])
        where = manager.directory
        if not failures:
            raise CheckpointError(f"{where}: no checkpoint there to restore")
        raise CheckpointError(f"no intact checkpoint in {where}; tried:\n  " + "\n  ".join(failures))

    def latest_step(self, which: str = "last") -> int | None:
        return (self.last if which == "last" else self.best).latest_step()

    def close(self) -> None:
        self.last.close()
        self.best.close()


@dataclasses.dataclass
class RunFiles:
    """What a run folder holds for inference: encoder config, head config, vocab, parameters."""
    run_dir: Path
    bert_config: BertConfig
    heads: HeadConfig
    vocab_file: Path
    params: Any
    meta: dict


def load_run(run_dir: str | Path, which: str = "best") -> RunFiles:
    """Parameters and configs of a training run folder (`which`: "best" or "last").

    Falls back from "best" to "last" when the run has no best checkpoint yet.
    """
    run_dir = Path(run_dir)
    for name in ("config.json", "train_config.json", "vocab.txt"):
        if not (run_dir / name).is_file():
            raise CheckpointError(
                f"{run_dir}: not a training run folder (no {name}); pass the --out folder of "
                "`python -m train.multitask`")
    checkpoints = RunCheckpoints(run_dir)
    try:
        if which == "best" and checkpoints.latest_step("best") is None:
            which = "last"
        state, meta, _ = checkpoints.restore(None, which)
    finally:
        checkpoints.close()
    train_config = json.loads((run_dir / "train_config.json").read_text())
    heads = HeadConfig(**{f.name: train_config[f.name] for f in dataclasses.fields(HeadConfig)
                          if f.name in train_config})
    return RunFiles(run_dir, BertConfig.from_json(run_dir / "config.json"), heads,
                    run_dir / "vocab.txt", state["params"], meta)
