"""Where a tool may write: the one guard every command-line tool calls before writing a file or
filling a folder.

The rule: a tool writes only into what it created (a new file or folder, a run folder it made,
or a file it wrote before and recognises by how it starts), and refuses anything else with one
line naming the path (and `--overwrite` where replacing a file makes sense). It never writes
inside a training run folder or a CS224N data folder unless that is its job (`allowed_in_run`),
and never onto one of its own inputs, not even with `--overwrite`.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable, Iterable

from bert_jax.errors import OutputExistsError, OutputWriteError

# What marks a training run folder (`python -m train.multitask --out`): its configuration, or
# the lock a training holds from its first moment (a run that failed before writing anything).
RUN_MARKERS = ("train_config.json", ".train.lock")
# What marks a CS224N data folder: any of its files.
DATA_FILES = ("ids-sst-train.csv", "ids-sst-dev.csv", "ids-sst-test-student.csv",
              "quora-train.csv", "quora-dev.csv", "sts-train.csv", "sts-dev.csv",
              "sts-test-student.csv")


@dataclasses.dataclass(frozen=True)
class OutputFile:
    """What one tool writes as a single file, for `check_output_file`.

    `tool`: how refusals name the tool (`train.compare --out`); `recognise`: True for the start
    of a file (its first 512 bytes as text) the tool wrote (such a file is replaced without asking);
    `allowed_in_run`: file names the tool may write inside a run folder (its job there, e.g.
    `analysis.md`).
    """
    tool: str
    recognise: Callable[[str], bool]
    allowed_in_run: tuple[str, ...] = ()


def is_run_folder(path: Path) -> bool:
    """A folder holding a training run (train_config.json or .train.lock)."""
    return path.is_dir() and any((path / m).exists() for m in RUN_MARKERS)


def is_data_folder(path: Path) -> bool:
    """A folder holding CS224N data files."""
    return path.is_dir() and any((path / name).is_file() for name in DATA_FILES)


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _head(path: Path) -> str:
    """The file's first 512 bytes as text ('' when unreadable)."""
    try:
        with path.open("rb") as f:
            return f.read(512).decode("utf-8", errors="replace")
    except OSError:
        return ""


def _owner(path: Path) -> tuple[str, Path] | None:
    """("a run folder" | "a data folder", the folder) for a path inside one, else None."""
    for parent in path.resolve().parents:
        if is_run_folder(parent):
            return "a training run folder", parent
        if is_data_folder(parent):
            return "a CS224N data folder", parent
    return None


def _refuse_inside(path: Path, allowed_in_run: tuple[str, ...],
                   message: Callable[[str, Path], str]) -> None:
    """OutputExistsError(message(what, folder)) when `path` lies inside a run or data folder,
    unless it is one of the names `allowed_in_run` directly inside a run folder."""
    owner = _owner(path)
    if owner is None:
        return
    what, folder = owner
    if (what == "a training run folder" and path.name in allowed_in_run
            and path.resolve().parent == folder):
        return
    raise OutputExistsError(message(what, folder))


def check_output_file(path: str | Path, kind: OutputFile, *, overwrite: bool = False,
                      protected: Iterable[str | Path] = ()) -> Path:
    """`path`, once it is safe for `kind.tool` to (re)place it; else OutputExistsError naming it.

    Refused always: one of `protected` (the tool's inputs), an existing folder, a file inside a
    run or data folder (but `kind.allowed_in_run` names inside a run folder). Refused without
    `overwrite`: an existing file whose start `kind.recognise` does not accept.
    """
    path = Path(path)
    for source in protected:
        if _same(path, Path(source)):
            raise OutputExistsError(f"{path}: {kind.tool} would replace its own input. Pass "
                                    "another path")
    if path.is_dir():
        raise OutputExistsError(f"{path}: is a folder; {kind.tool} takes a file path")
    _refuse_inside(path, kind.allowed_in_run, lambda what, folder: (
        f"{path}: lies inside {what} ({folder}), whose files {kind.tool} never writes. Pass a "
        "path outside it"))
    if path.exists() and not overwrite and not kind.recognise(_head(path)):
        raise OutputExistsError(f"{path}: exists and was not written by {kind.tool}. Pass "
                                "--overwrite to replace it, or another path")
    return path


def check_output_folder(path: str | Path, tool: str, *, recognise: Callable[[Path], bool],
                        allowed_in_run: tuple[str, ...] = ()) -> Path:
    """`path`, once `tool` may create or fill it: a new or empty folder, or one `recognise`
    accepts (an earlier output of `tool`). Refused: a file, any other folder, a folder inside a
    data folder, and a folder inside a run folder but the names of `allowed_in_run` (directly
    inside it). Raises OutputExistsError naming the path."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path}: is a file; {tool} takes a folder path")
    _refuse_inside(path, allowed_in_run, lambda what, folder: (
        f"{path}: lies inside {what} ({folder}), which {tool} never writes into. Pass a folder "
        "outside it"))
    if path.is_dir() and any(path.iterdir()) and not recognise(path):
        raise OutputExistsError(f"{path}: exists, is not empty and is not an earlier output of "
                                f"{tool}: nothing there is replaced. Pass a new or empty folder")
    return path


def check_new_run_folder(path: str | Path, resume: bool) -> Path:
    """`path`, once a training may write its run there: a new or empty folder or a run folder
    (`is_run_folder`); never a data folder or a folder inside a run or data folder. Whether a
    run folder may be continued is the training's own check (its checkpoints, --resume)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"--out {path}: is a file; pass a folder for the run")
    _refuse_inside(path, (), lambda what, folder: (
        f"--out {path}: lies inside {what} ({folder}); pass a folder outside it"))
    if path.is_dir() and any(path.iterdir()) and not is_run_folder(path):
        detail = ", ".join(sorted(p.name for p in path.iterdir())[:5])
        raise OutputExistsError(
            f"--out {path}: exists, is not empty ({detail}, ...) and is not a run folder (no "
            f"train_config.json): a training would replace its files. Pass a new or empty folder"
            + (" (--resume continues only a run folder)" if resume else ""))
    return path


def check_writable_folder(folder: str | Path, flag: str, shown: str | Path | None = None
                          ) -> None:
    """OutputWriteError unless `folder` is, or can be made as, a folder this process may write:
    its nearest existing part is a folder, on a writable file system, with write permission.
    Tools call it before their work, so that a read-only place fails at once, not at the end.
    The message names `flag` and `shown` (default `folder`: e.g. the file to write there)."""
    shown = shown or folder
    folder = Path(folder).absolute()
    part = folder
    while not part.exists() and part != part.parent:
        part = part.parent
    if not part.is_dir():
        raise OutputWriteError(f"{flag} {shown}: {part} is a file, not a folder. Choose "
                               f"another {flag}")
    if not os.access(part, os.W_OK | os.X_OK):
        raise OutputWriteError(f"{flag} {shown}: cannot write into {part} (a read-only file "
                               f"system, or no write permission). Choose another {flag}, in a "
                               "writable folder")
