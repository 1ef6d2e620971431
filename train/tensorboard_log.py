"""Live curves: the run's logged scalars as TensorBoard event files in `<run>/tensorboard/`.

`train_log.jsonl` and `metrics.jsonl` stay the record; `TensorBoardLog` mirrors their records as
they are written, tag `train/KEY` for each number of a train-log record (the losses, the gradient
norm, the learning rates) and `dev/KEY` for each dev score, at the record's step. View them with
`tensorboard --logdir RUN/tensorboard` (or `%tensorboard` in a notebook), also while training.

The events are written by tensorboardX's record writer (no TensorFlow), on the training thread
and flushed with each record (one small event per log point), so the files on disk are always
up to date. Without tensorboardX a run trains as before and says once that it writes no event
files, and a folder it cannot write (read-only, a full disk) is one warning, after which it
writes no more event files. Each attempt of a run writes its own file, whose first events tell TensorBoard to drop
what earlier files hold after the step the attempt starts from (SummaryWriter's `purge_step`),
as the JSON-lines logs are cut back there: resumed curves do not double up.
"""
from __future__ import annotations

import contextlib
import logging
import socket
import sys
import time
from pathlib import Path

import jax

log = logging.getLogger("train.tensorboard_log")

# tensorboardX imports PyTorch when it is installed, only to accept its tensors (we pass floats):
# kept out, it costs seconds and, on a GPU, a second set of CUDA libraries beside JAX's.
_KEEP_OUT = "torch" not in sys.modules
if _KEEP_OUT:
    sys.modules["torch"] = None  # `import torch` raises ImportError while this is set
try:
    from tensorboardX import RecordWriter
    from tensorboardX.proto.event_pb2 import Event, SessionLog
    from tensorboardX.proto.summary_pb2 import Summary
except ImportError:  # the training runs without it (see TensorBoardLog)
    RecordWriter = None
finally:
    if _KEEP_OUT:
        del sys.modules["torch"]

FOLDER = "tensorboard"
# Record fields that are not curves: the x axis, wall time, epoch, the best-so-far flag.
NOT_SCALARS = frozenset({"step", "time", "epoch", "best"})


def scalars(record: dict, prefix: str) -> dict[str, float]:
    """{tag: value} of a log record: `prefix/KEY` for each number in it but NOT_SCALARS."""
    return {f"{prefix}/{key}": float(value) for key, value in record.items()
            if key not in NOT_SCALARS and isinstance(value, (int, float))
            and not isinstance(value, bool)}


class TensorBoardLog:
    """Writes the train-log and dev records of a run to `run_dir/tensorboard/` (process 0 of a
    multi-process run; nothing when `enabled` is False or tensorboardX is missing).

    `start_step`: the step this attempt continues from (0: a fresh run); what earlier attempts
    wrote after it is hidden. Each record is on disk when `train`/`dev` returns; `close()` at
    the end (also on errors: a `with` block).
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True, start_step: int = 0):
        self.folder = Path(run_dir) / FOLDER
        self.path = self._file = None
        if not enabled or jax.process_index() != 0:
            return
        if RecordWriter is None:
            log.warning("tensorboardX is not installed: no TensorBoard files for this run "
                        "(`pip install tensorboardX`; --no-tensorboard silences this)")
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            # TensorBoard reads the files in name order (and a live one only those after the
            # file it reads): the time in seconds, as tensorboardX names them, then the
            # attempt's number.
            attempt = len(list(self.folder.glob("*tfevents*")))
            self.path = self.folder / (f"events.out.tfevents.{int(time.time()):010d}."
                                       f"{socket.gethostname()}.{attempt:04d}")
            self._file = RecordWriter(str(self.path))
            now = time.time()
            self._write(Event(wall_time=now, step=0, file_version="brain.Event:2"))
            # SummaryWriter(purge_step=...)'s two events: a restart at start_step + 1, so
            # TensorBoard drops the events of earlier files from that step on (always: a fresh
            # run too, since its logs start empty even if an earlier attempt wrote some).
            self._write(Event(wall_time=now, step=start_step + 1, file_version="brain.Event:2"))
            self._write(Event(wall_time=now, step=start_step + 1,
                              session_log=SessionLog(status=SessionLog.START)))
            self._file.flush()
        except OSError as err:
            self._give_up(err)

    @property
    def active(self) -> bool:
        return self._file is not None

    def _write(self, event) -> None:
        self._file.write(event.SerializeToString())

    def _add(self, record: dict, prefix: str) -> None:
        if self._file is None:
            return
        values = [Summary.Value(tag=tag, simple_value=value)
                  for tag, value in scalars(record, prefix).items()]
        try:
            self._write(Event(wall_time=record.get("time", time.time()),
                              step=int(record["step"]), summary=Summary(value=values)))
            self._file.flush()
        except OSError as err:
            self._give_up(err)

    def _give_up(self, err: OSError) -> None:
        """A folder that cannot be written (read-only, a full disk, a file in its place): the
        training goes on without TensorBoard files, saying so once."""
        log.warning("%s: cannot write TensorBoard files there (%s); training goes on without "
                    "them (train_log.jsonl and metrics.jsonl hold the same records; "
                    "--no-tensorboard silences this)", self.folder, err.strerror or err)
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
        self._file = None

    def train(self, record: dict) -> None:
        """A train_log.jsonl record: `train/loss`, `train/loss_TASK`, `train/grad_norm`,
        `train/lr` (or `train/lr_GROUP`) at its step."""
        self._add(record, "train")

    def dev(self, record: dict) -> None:
        """A metrics.jsonl record: `dev/SCORE` per task (`dev/sst_acc`, `dev/para_acc`, `dev/sts_r`,
        `dev/<name>_acc` or `_r`) and `dev/overall`."""
        self._add(record, "dev")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "TensorBoardLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
