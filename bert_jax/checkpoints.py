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
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import filelock
import jax
import orbax.checkpoint as ocp
from flax import traverse_util

from bert_jax.config import BertConfig, check_vocab
from bert_jax.errors import BertJaxError, write_failure
from bert_jax.heads import HeadConfig, init_multitask_params
from bert_jax.tasks import Task

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


class _DropThreadErrors(logging.Filter):
    # How orbax's writer threads log the error that the save then raises.
    WORDS = ("raised an exception", "in background save thread")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(words in record.getMessage() for words in self.WORDS)


@contextlib.contextmanager
def quiet_save_threads():
    """Around an orbax save: the raised error says it all, so what orbax and tensorstore print
    besides is dropped. Orbax's writer threads log each failure with its traceback (absl,
    ERROR) before the save raises it: dropped while the save runs. Once one write fails, the
    others still in flight finish later and try to wake orbax's event loop, closed by then:
    Python reports each as an unraisable RuntimeError("Event loop is closed") with a traceback
    (dozens, during the rest of the run): dropped from the first save on
    (`_drop_closed_loop_reports`)."""
    _drop_closed_loop_reports()
    quiet = _DropThreadErrors()
    absl_log = logging.getLogger("absl")
    absl_log.addFilter(quiet)
    try:
        yield
    finally:
        absl_log.removeFilter(quiet)


def _drop_closed_loop_reports() -> None:
    """Leave out unraisable RuntimeError("Event loop is closed") reports; every other
    unraisable exception is reported by the hook that was in place."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_loop_reports", False):
        return

    def hook(unraisable) -> None:
        if not (isinstance(unraisable.exc_value, RuntimeError)
                and str(unraisable.exc_value) == "Event loop is closed"):
            previous(unraisable)
    hook.drops_closed_loop_reports = True
    sys.unraisablehook = hook


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
            with quiet_save_threads():
                if step in manager.all_steps():
                    manager.delete(step)
                manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                                           meta=ocp.args.JsonSave(meta)))
                manager.wait_until_finished()
        except Exception as err:
            for tmp in Path(manager.directory).glob(f"{step}.orbax-checkpoint-tmp*"):
                shutil.rmtree(tmp, ignore_errors=True)  # the half-written step
            reason = write_failure(err)
            if reason is None:
                raise
            raise CheckpointError(
                f"{manager.directory}: could not write the checkpoint of step {step} "
                f"({reason}). Free disk space or fix the folder's permissions, then continue "
                "with --resume from the previous checkpoint") from err

    def restore(self, target: Any, which: str = "last", step: int | None = None,
                earlier: tuple[Any, Callable[[Any], Any], str] | None = None):
        """Newest intact checkpoint of `which` as (state shaped like `target`, meta, step).

        `target` gives the tree structure, shapes, dtypes and shardings (None: the saved tree as
        nested dicts of arrays). `earlier`: `(target, convert, what)` of the layout an earlier
        version saved: a checkpoint that does not restore as `target` but does as this target
        is restored so, `convert`ed to `target`'s layout and logged (`what`: the part that
        changed). Raises CheckpointError naming every folder tried when none loads (each with
        the error of restoring it as `target`).
        """
        manager = self.last if which == "last" else self.best
        steps = [step] if step is not None else sorted(manager.all_steps(), reverse=True)
        failures = []
        for s in steps:
            try:
                state, meta = _restore_step(manager, s, target)
            except Exception as err:  # a damaged folder, or one of an earlier layout
                state = _restore_earlier(manager, s, earlier)
                if state is None:  # damaged: try the previous step
                    failures.append(
                        f"{manager.directory / str(s)}: {type(err).__name__}: {err}"[:500])
                    continue
                state, meta = state
            if failures:
                log.warning("skipped damaged checkpoints: %s", "; ".join(failures))
            return state, meta, s
        where = manager.directory
        if not failures:
            raise CheckpointError(f"{where}: no checkpoint there to restore")
        raise CheckpointError(f"no intact checkpoint in {where}; tried:\n  " + "\n  ".join(failures))

    def latest_step(self, which: str = "last") -> int | None:
        return (self.last if which == "last" else self.best).latest_step()

    def close(self) -> None:
        self.last.close()
        self.best.close()


def _restore_step(manager, step: int, target: Any) -> tuple[Any, dict]:
    """(state shaped like `target`, meta) of `step`; raises whatever orbax raises."""
    abstract = None if target is None else jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    # Without a target, arrays saved on devices this process does not have (a run trained on
    # more devices, or by several processes) load onto this process's first device.
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract, fallback_sharding=local),
        meta=ocp.args.JsonRestore()))
    return restored.state, restored.meta


def _restore_earlier(manager, step: int, earlier) -> tuple[Any, dict] | None:
    """`step` restored in the `earlier` layout (`RunCheckpoints.restore`) and converted, with
    its meta; None when there is none or the checkpoint does not restore so either."""
    if earlier is None:
        return None
    target, convert, what = earlier
    try:
        state, meta = _restore_step(manager, step, target)
    except Exception:  # noqa: BLE001 - not of that layout either: the caller reports it
        return None
    log.info("%s: the checkpoint's %s was written by an earlier version and was converted",
             manager.directory / str(step), what)
    return convert(state), meta


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
    runs) alike: both keep the parameters under "params". A run whose config.json,
    train_config.json or vocab.txt is damaged, or no longer fits its parameters (another
    number of layers, a vocabulary of another size), raises a BertJaxError naming the file.
    """
    run_dir = Path(run_dir)
    for name in ("config.json", "train_config.json", "vocab.txt"):
        if not (run_dir / name).is_file():
            raise CheckpointError(
                f"{run_dir}: not a training run folder (no {name}); pass the --out folder of "
                "`python -m train.multitask`")
    bert_config, heads = run_configs(run_dir)
    check_vocab(run_dir / "vocab.txt", bert_config, CheckpointError)
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
    params = state.get("params") if isinstance(state, dict) else None
    problems = shape_differences(
        jax.eval_shape(lambda: init_multitask_params(bert_config, heads, jax.random.key(0))),
        params)
    if problems:
        raise CheckpointError(
            f"{run_dir}: the parameters of {which}/ do not fit the run's config.json and "
            f"train_config.json ({len(problems)} differences: {'; '.join(problems[:3])}"
            f"{'; ...' if len(problems) > 3 else ''}); one of those files was changed: restore "
            "them from a copy of the run")
    return RunFiles(run_dir, bert_config, heads, run_dir / "vocab.txt", params, meta, which)


def run_configs(run_dir: Path) -> tuple[BertConfig, HeadConfig]:
    """The encoder's `BertConfig` (config.json) and the `HeadConfig` (train_config.json) of a
    run folder; a damaged file (also a `max_length` in train_config.json that is not a whole
    number of at least 2) raises a BertJaxError naming it."""
    path = run_dir / "train_config.json"
    train_config = read_json(path)
    try:
        heads = HeadConfig(**{f.name: train_config[f.name]
                              for f in dataclasses.fields(HeadConfig) if f.name in train_config},
                           extra_tasks=tuple(Task.from_dict({k: v for k, v in t.items()
                                                             if k != "sha256"})
                                             for t in train_config.get("user_tasks") or ()))
        max_length = train_config.get("max_length", 128)  # what readers tokenize to
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length {max_length!r} is not a whole number of at least 2")
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: {err}; the file is damaged: restore it from a copy of "
                              "the run") from None
    return BertConfig.from_json(run_dir / "config.json"), heads


def shape_differences(want: Any, got: Any) -> list[str]:
    """Where the parameter tree `got` differs from `want` (trees of arrays or shape structs):
    "path: expected (shape), got (shape or None)" for each leaf missing, unexpected or
    mis-shaped, sorted by path; [] when they fit."""
    def shapes(tree):
        if not isinstance(tree, dict):
            return {}
        return {"/".join(map(str, path)): tuple(leaf.shape)
                for path, leaf in traverse_util.flatten_dict(tree).items()}
    want, got = shapes(want), shapes(got)
    return [f"{path}: expected {want.get(path)}, got {got.get(path)}"
            for path in sorted(set(want) | set(got)) if want.get(path) != got.get(path)]


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
