"""train.tensorboard_log: the event files in RUN/tensorboard hold what train_log.jsonl and
metrics.jsonl hold (same tags, steps and values, read back with TensorBoard's own reader), a
resumed run's curves do not double up, and a run without the writer still trains."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, require

from bert_jax.checkpoints import load_run
from train import tensorboard_log
from train.config import TrainConfig
from train.multitask import data_files, train_and_evaluate
from train.tensorboard_log import TensorBoardLog

event_accumulator = require("tensorboard.backend.event_processing.event_accumulator")

TRAIN_TAGS = {"train/loss", "train/loss_sst", "train/loss_para", "train/loss_sts",
              "train/grad_norm"}
DEV_TAGS = {"dev/sst_acc", "dev/para_acc", "dev/sts_r", "dev/overall"}


def read_events(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} as TensorBoard shows them (purged events left out, and a tag
    whose every event was purged)."""
    acc = event_accumulator.EventAccumulator(
        str(run_dir / "tensorboard"), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    curves = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    return {tag: points for tag, points in curves.items() if points}


def read_logs(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """The same from the JSON-lines logs: every number of every record but step and time (and
    a dev record's epoch and best flag)."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for name, prefix, skip in (("train_log.jsonl", "train", {"step", "time"}),
                               ("metrics.jsonl", "dev", {"step", "time", "epoch", "best"})):
        for line in (run_dir / name).read_text().splitlines():
            record = json.loads(line)
            for key, value in record.items():
                if key not in skip:
                    curves.setdefault(f"{prefix}/{key}", []).append((record["step"], value))
    return curves


def assert_events_equal_logs(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events, logs = read_events(run_dir), read_logs(run_dir)
    assert set(events) == set(logs)
    for tag, points in logs.items():
        assert [s for s, _ in events[tag]] == [s for s, _ in points], tag
        # event values are float32: equal to the logged float64 to float32's precision
        assert [v for _, v in events[tag]] == pytest.approx([v for _, v in points], rel=1e-6,
                                                            abs=1e-12), tag
    return logs


def test_a_run_writes_its_logged_scalars_as_events(tiny_run):
    """The session's finished tiny run (preset concat, 4 steps logged each step, 2 evaluations)."""
    logs = assert_events_equal_logs(tiny_run)
    assert TRAIN_TAGS | {"train/lr"} | DEV_TAGS == set(logs)
    assert [s for s, _ in logs["train/loss"]] == [1, 2, 3, 4]
    assert [s for s, _ in logs["dev/overall"]] == [2, 4]
    assert [v for _, v in logs["train/lr"]] == pytest.approx([1e-3] * 4)  # the fixture's lr


@pytest.mark.slow
def test_a_resumed_run_hides_what_the_lost_attempt_logged_after_the_checkpoint(
        tiny_model_dir, data_dir, tmp_path):
    """5 steps, checkpoints at 2, 4 and 5; step 5's checkpoint is lost (as in a kill during its
    save), so --resume trains step 5 again and evaluates it again: TensorBoard must show step 5
    once, as the logs do. Two learning-rate groups on a warm-up and a decay."""
    cfg = TrainConfig(init=str(tiny_model_dir), max_length=32, num_buckets=2, limit_train=80,
                      limit_eval=16, eval_batch_size=16, log_every=1, max_steps=5, save_every=2,
                      lr=1e-3, head_lr=1e-2, warmup_steps=2, linear_decay=True)
    files, out = data_files(str(data_dir)), tmp_path / "run"
    train_and_evaluate(cfg, out, files, progress=False)
    first = read_events(out)
    assert [s for s, _ in first["dev/overall"]] == [5]
    for path in (out / "last" / "5").rglob("*"):  # step 5 damaged on disk
        if path.is_file():
            path.write_bytes(b"\x00garbage")
    train_and_evaluate(cfg, out, files, progress=False, resume=True)
    assert load_run(out, "last").meta["step"] == 5
    assert len(list((out / "tensorboard").iterdir())) == 2  # one event file per attempt
    logs = assert_events_equal_logs(out)
    assert TRAIN_TAGS | {"train/lr_encoder", "train/lr_heads"} | DEV_TAGS == set(logs)
    assert [s for s, _ in logs["train/loss"]] == [1, 2, 3, 4, 5]
    assert [s for s, _ in logs["dev/overall"]] == [5]
    lr = dict(logs["train/lr_encoder"])
    assert lr[1] == 0.0 and lr[3] == pytest.approx(1e-3) and 0 < lr[5] < lr[4] < lr[3]
    assert dict(logs["train/lr_heads"])[3] == pytest.approx(1e-2)


def test_each_attempt_starts_a_file_that_hides_later_steps_of_earlier_ones(tmp_path):
    def attempt(start_step, losses, dev):
        with TensorBoardLog(tmp_path, start_step=start_step) as board:
            for step, loss in losses.items():
                board.train({"step": step, "loss": loss, "time": 1e9 + step})
            for step, overall in dev.items():
                board.dev({"step": step, "epoch": step / 2, "overall": overall, "best": True,
                           "time": 1e9 + step})
            assert board.active and board.path.stat().st_size > 0  # on disk before close

    attempt(0, {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0}, {2: 0.2, 4: 0.4})
    attempt(2, {3: 30.0, 4: 40.0}, {4: 0.45})  # resumed from step 2: 3 and 4 anew
    assert read_events(tmp_path) == {"train/loss": [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)],
                                     "dev/overall": [(2, pytest.approx(0.2)),
                                                     (4, pytest.approx(0.45))]}
    attempt(0, {1: 100.0}, {})  # a fresh start in the same folder: nothing earlier shows
    assert read_events(tmp_path) == {"train/loss": [(1, 100.0)]}


def test_only_numbers_become_curves():
    record = {"step": 4, "epoch": 1.0, "sst_acc": 0.5, "overall": 0.6, "best": True,
              "time": 1e9, "note": "x", "n": 3}
    assert tensorboard_log.scalars(record, "dev") == {"dev/sst_acc": 0.5, "dev/overall": 0.6,
                                                      "dev/n": 3.0}


def test_switched_off_or_without_tensorboardx_nothing_is_written(tmp_path, monkeypatch, caplog):
    record = {"step": 1, "loss": 1.0, "time": 1e9}
    with TensorBoardLog(tmp_path / "off", enabled=False) as board:
        board.train(record)
        board.dev(record)
    assert not board.active and not (tmp_path / "off" / "tensorboard").exists()
    monkeypatch.setattr(tensorboard_log, "RecordWriter", None)
    with caplog.at_level(logging.INFO, logger="train.tensorboard_log"):
        with TensorBoardLog(tmp_path / "missing") as board:
            board.train(record)
            board.dev(record)
    assert not (tmp_path / "missing" / "tensorboard").exists()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "tensorboardX is not installed" in lines[0], lines
    assert "\n" not in lines[0]


def test_a_folder_it_cannot_write_is_one_warning_and_the_run_goes_on(tmp_path, monkeypatch,
                                                                   caplog):
    """RUN/tensorboard unusable from the start (a file in its place: read-only folders and full
    disks raise the same OSError), or a disk that fills up during the run: one warning naming
    the folder, then no more event files and no more words."""
    import errno
    record = {"step": 1, "loss": 1.0, "time": 1e9}
    (tmp_path / "blocked").mkdir()
    (tmp_path / "blocked" / "tensorboard").write_text("not a folder")
    with caplog.at_level(logging.INFO, logger="train.tensorboard_log"):
        with TensorBoardLog(tmp_path / "blocked") as board:
            board.train(record)
            board.dev(record)
    assert not board.active
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith(
        f"{tmp_path / 'blocked' / 'tensorboard'}: cannot write TensorBoard files there"), lines
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="train.tensorboard_log"):
        with TensorBoardLog(tmp_path / "fills") as board:
            board.train(record)

            def disk_full(data):
                raise OSError(errno.ENOSPC, "No space left on device")
            monkeypatch.setattr(board._file, "write", disk_full)
            board.train({**record, "step": 2})
            board.dev({**record, "step": 2})
    assert not board.active
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "(No space left on device); training goes on" in lines[0], lines


@pytest.mark.slow
def test_a_run_trains_without_tensorboardx(tiny_model_dir, data_dir, tmp_path, monkeypatch,
                                           caplog):
    monkeypatch.setattr(tensorboard_log, "RecordWriter", None)
    cfg = TrainConfig(init=str(tiny_model_dir), max_length=32, num_buckets=1, limit_train=16,
                      limit_eval=16, eval_batch_size=16, log_every=1, max_steps=2, lr=1e-3)
    with caplog.at_level(logging.WARNING):
        summary = train_and_evaluate(cfg, tmp_path / "run", data_dir=str(data_dir),
                                     progress=False)
    assert summary["steps"] == 2 and (tmp_path / "run" / "metrics.jsonl").is_file()
    assert not (tmp_path / "run" / "tensorboard").exists()
    said = [r for r in caplog.records if "tensorboardX" in r.getMessage()]
    assert len(said) == 1


@pytest.mark.slow
def test_the_writer_keeps_pytorch_out_and_importable():
    """tensorboardX imports PyTorch when present; train.tensorboard_log keeps it out of the
    training process (seconds of start-up, a second CUDA stack) and leaves it importable."""
    code = ("import sys, train.tensorboard_log as t; assert t.RecordWriter is not None; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "import importlib.util; assert importlib.util.find_spec('torch') is None or "
            "__import__('torch') is not None")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
