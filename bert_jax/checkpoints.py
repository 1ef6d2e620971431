"""Training-run folders: orbax checkpoints: `last/` (every save) and `best/` (best dev score so far).

`last/` holds whole training states (parameters, optimizer moments, step, rng: what `--resume`
needs), the newest `keep_last` of them. `best/` needs only what inference and export read: the
parameters (`save_best`), a third of a whole state with AdamW. `load_run` reads both layouts
(older runs saved a whole state into `best/` too).

Orbax writes each step into a temporary folder and renames it when complete, so a kill during a
save leaves the previous checkpoint intact. Restoring walks back from the newest step and skips
any that fail to load (naming them), so a damaged checkpoint costs at most one save interval.
Readers (`load_run`, `RunCheckpoints(read_only=True)`) never write: they leave a running
training's in-flight temporary folders alone and work on read-only folders. One training at a
time writes a run folder (`run_lock`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import filelock
import jax
import orbax.checkpoint as ocp

from bert_jax.config import BertConfig
from bert_jax.errors import BertJaxError
from bert_jax.heads import HeadConfig

log = logging.getLogger("bert_jax.checkpoints")


class CheckpointError(BertJaxError, RuntimeError):
    """No intact checkpoint could be restored, or one could not be written."""


LOCK_NAME = ".train.lock"


@contextlib.contextmanager
def run_lock(run_dir: str | Path):
    """Hold `RUN/.train.lock` while a training writes the run folder; a second training on the
    same folder is refused at once (CheckpointError). The OS releases the lock when the holder
    dies, even by SIGKILL, so a crashed run never blocks its `--resume`."""
    path = Path(run_dir) / LOCK_NAME
    lock = filelock.FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise CheckpointError(
            f"{run_dir}: another training is writing this run folder (it holds {path}). Wait "
            "for it to finish, or pass another --out") from None
    try:
        yield
    finally:
        lock.release()


class _NoCheckpoints:
    """Stands in for the manager of a folder that does not exist (read-only use)."""

    directory: Path

    def __init__(self, directory: Path):
        self.directory = directory

    def all_steps(self):
        return []

    def latest_step(self):
        return None

    def close(self):
        pass


def _manager(directory: Path, keep: int, read_only: bool = False):
    if read_only and not directory.is_dir():
        return _NoCheckpoints(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep, create=not read_only, read_only=read_only,
        save_interval_steps=0 if read_only else 1, enable_async_checkpointing=False,
        cleanup_tmp_directories=not read_only)
    absl_log = logging.getLogger("absl")
    level = absl_log.level
    if read_only:  # orbax warns "Given directory is read only" for every reader: expected here
        absl_log.setLevel(logging.ERROR)
    try:
        return ocp.CheckpointManager(directory.resolve(), options=options,
                                     item_names=("state", "meta"))
    finally:
        absl_log.setLevel(level)


class RunCheckpoints:
    """`last/` and `best/` managers of a run folder. State = any pytree (a `TrainState`).

    `read_only=True` opens the folder for restoring only: nothing is created, cleaned or
    written (what every reader of a run uses, so a running training is never disturbed).
    """

    def __init__(self, run_dir: str | Path, keep_last: int = 2, read_only: bool = False):
        self.run_dir = Path(run_dir)
        self.read_only = read_only
        self.last = _manager(self.run_dir / "last", keep_last, read_only)
        self.best = _manager(self.run_dir / "best", 1, read_only)

    def save(self, step: int, state: Any, meta: dict, best: bool = False) -> None:
        """Save `state` and JSON `meta` at `step` into `last/` (and, when `best`, the whole
        `state` into `best/` too: prefer `save_best`, which keeps only the parameters).

        A checkpoint already at `step` (say a damaged one that a resumed run went back past) is
        replaced. A write that fails (disk full, permissions) raises CheckpointError naming the
        folder; the previous checkpoints stay intact.
        """
        self._write(self.last, step, state, meta)
        if best:
            self._write(self.best, step, state, meta)

    def save_best(self, step: int, params: Any, meta: dict) -> None:
        """Save the parameters `params` (a `TrainState`'s `.params`) and JSON `meta` at `step`
        into `best/`, replacing the previous best: no optimizer state, which nothing restores
        from `best/` (inference and export read the parameters; `--resume` reads `last/`).

        Stored as the tree `{"params": params}`, the layout of a whole state's parameters, so
        readers find them at the same place in old and new runs.
        """
        self._write(self.best, step, {"params": params}, meta)

    def _write(self, manager, step: int, tree: Any, meta: dict) -> None:
        if self.read_only:
            raise CheckpointError(f"{self.run_dir}: opened read-only; cannot save")
        try:
            if step in manager.all_steps():
                manager.delete(step)
            manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                                       meta=ocp.args.JsonSave(meta)))
            manager.wait_until_finished()
        except OSError as err:
            raise CheckpointError(
                f"{manager.directory}: could not write the checkpoint of step {step} "
                f"({err.strerror or err}). Free disk space or fix the folder's permissions, "
                "then continue with --resume from the previous checkpoint") from err

    def restore(self, target: Any, which: str = "last", step: int | None = None):
        """Newest intact checkpoint of `which` as (state shaped like `target`, meta, step).

        `target` gives the tree structure, shapes, dtypes and shardings (None: the saved tree as
        nested dicts of arrays). Raises CheckpointError naming every folder tried when none loads.
        """
        manager = self.last if which == "last" else self.best
        steps = [step] if step is not None else sorted(manager.all_steps(), reverse=True)
        abstract = None if target is None else jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        # Without a target, arrays saved on devices this process does not have (a run trained on
        # more devices, or by several processes) load onto this process's first device.
        local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        failures = []
        for s in steps:
            try:
                restored = manager.restore(s, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract, fallback_sharding=local),
                    meta=ocp.args.JsonRestore()))
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
    which: str = "best"  # the checkpoint loaded: "last" when a run has no best/ yet


def load_run(run_dir: str | Path, which: str = "best") -> RunFiles:
    """Parameters and configs of a training run folder (`which`: "best" or "last").

    Falls back from "best" to "last" when the run has no best checkpoint yet. Reads a `best/`
    holding only the parameters (`save_best`) and one holding a whole training state (older
    runs) alike: both keep the parameters under "params".
    """
    run_dir = Path(run_dir)
    for name in ("config.json", "train_config.json", "vocab.txt"):
        if not (run_dir / name).is_file():
            raise CheckpointError(
                f"{run_dir}: not a training run folder (no {name}); pass the --out folder of "
                "`python -m train.multitask`")
    checkpoints = RunCheckpoints(run_dir, read_only=True)
    try:
        if which == "best" and checkpoints.latest_step("best") is None:
            which = "last"
        try:
            state, meta, _ = checkpoints.restore(None, which)
        except CheckpointError as err:
            if which == "best" and checkpoints.latest_step("last") is not None:
                raise CheckpointError(
                    f"{err}\nThe run's last/ checkpoint (step {checkpoints.latest_step('last')}) "
                    "may be intact: load it with which='last' (--which last)") from None
            raise
    finally:
        checkpoints.close()
    train_config = read_json(run_dir / "train_config.json")
    heads = HeadConfig(**{f.name: train_config[f.name] for f in dataclasses.fields(HeadConfig)
                          if f.name in train_config})
    return RunFiles(run_dir, BertConfig.from_json(run_dir / "config.json"), heads,
                    run_dir / "vocab.txt", state["params"], meta, which)


def newest_checkpoint(run_dir: str | Path, which: str = "best") -> tuple[str, int | None]:
    """(which, step) of the checkpoint `load_run(run_dir, which)` loads when it is intact: the
    newest step of `best/`, or of `last/` when the run has no best yet. Reads only the folder
    names (no parameters); step None when there is no checkpoint."""
    checkpoints = RunCheckpoints(run_dir, read_only=True)
    try:
        if which == "best" and checkpoints.latest_step("best") is None:
            which = "last"
        return which, checkpoints.latest_step(which)
    finally:
        checkpoints.close()


def read_json(path: Path) -> dict:
    """A JSON object from `path`; CheckpointError naming the file when it is not one."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err}); the file is damaged. Restore "
                              "it from a copy, or write it again") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value
