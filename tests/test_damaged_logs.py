"""A run's damaged JSON-lines logs (metrics.jsonl, train_log.jsonl): a last line cut short by a
kill is dropped with a warning (the normal crash case); any other damage (a bare number, a cut
line before others, a record without its "step" or "overall") is one `error:` line from every
tool that reads the log (--resume, train.compare, the plots), naming the file, the line and
the fix."""
from __future__ import annotations

import json
import logging
import shutil

import pytest

from bert_jax.errors import BertJaxError
from bert_jax.plots import LogError, read_jsonl, training_curves_figure
from train import compare
from train.run_folder import DEV_LOG_KEYS, keep_log_until

DEV = {"step": 2, "epoch": 1.0, "sst_acc": 0.3, "para_acc": 0.6, "sts_r": 0.2, "overall": 0.4}
DAMAGED = {  # (text after one good record, the line named, what the message says)
    "bare number": ("7\n", 2, "not a JSON object"),
    "cut line before others": ('{"step": 3, "ep\n' + json.dumps(DEV) + "\n", 2,
                               "not a JSON object"),
    "no step": (json.dumps({k: v for k, v in DEV.items() if k != "step"}) + "\n", 2, "'step'"),
    "no overall": (json.dumps({k: v for k, v in DEV.items() if k != "overall"}) + "\n", 2,
                   "'overall'"),
    "a string for the step": (json.dumps({**DEV, "step": "3"}) + "\n", 2, "'step'"),
}


def write_log(path, tail: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(DEV) + "\n" + tail)
    return path


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_a_damaged_line_names_the_file_the_line_and_the_fix(tmp_path, case):
    tail, line, what = DAMAGED[case]
    path = write_log(tmp_path / "metrics.jsonl", tail)
    with pytest.raises(LogError) as err:
        keep_log_until(path, 10, DEV_LOG_KEYS)
    message = str(err.value)
    assert isinstance(err.value, BertJaxError) and "\n" not in message
    assert message.startswith(f"{path}: line {line} ") and what in message
    assert "delete that line" in message
    assert path.read_text() == json.dumps(DEV) + "\n" + tail  # left as it was


def test_a_last_line_cut_by_a_kill_is_dropped_with_a_warning(tmp_path, caplog):
    path = write_log(tmp_path / "metrics.jsonl", json.dumps(DEV)[:15])  # no newline
    with caplog.at_level(logging.WARNING):
        kept = keep_log_until(path, 10, DEV_LOG_KEYS)
    assert kept == [DEV]
    assert path.read_text() == json.dumps(DEV) + "\n"  # resumed runs append after whole lines
    assert f"{path}: line 2 is cut short" in caplog.text


def test_compare_reports_a_damaged_metrics_log_in_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    write_log(run / "metrics.jsonl", "7\n")
    assert compare.main([str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {run / 'metrics.jsonl'}: line 2 is not a JSON object (each line is "
                   "one record the run wrote, with epoch, overall); "
                   "delete that line or restore the file from a copy")


def test_compare_skips_a_cut_last_line(tmp_path, capsys):
    run = tmp_path / "run"
    write_log(run / "metrics.jsonl", '{"step": 4, "epoch": 2.0, "sst_a')
    assert compare.main([str(run), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["runs"]
    assert [r["epoch"] for r in rows] == [1.0] and rows[0]["overall"] == 0.4


def test_compare_reports_a_damaged_train_config(tmp_path, capsys):
    run = tmp_path / "run"
    write_log(run / "metrics.jsonl", "")
    (run / "train_config.json").write_text("[1, 2]")
    assert compare.main([str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {run / 'train_config.json'}: ") and "\n" not in err


@pytest.mark.parametrize("name", ["train_log.jsonl", "metrics.jsonl"])
def test_the_training_curves_report_a_damaged_log(tmp_path, name):
    write_log(tmp_path / "train_log.jsonl", "")
    write_log(tmp_path / "metrics.jsonl", "")
    write_log(tmp_path / name, "3\n")
    with pytest.raises(LogError, match=f"{tmp_path / name}: line 2 is not a JSON object"):
        training_curves_figure(tmp_path)


def test_read_jsonl_checks_numbers_not_only_keys(tmp_path):
    path = write_log(tmp_path / "log.jsonl", json.dumps({"step": True}) + "\n")
    with pytest.raises(LogError, match="line 2 has no number for 'step'"):
        read_jsonl(path)


def test_resume_stops_on_a_damaged_log_and_drops_a_cut_one(tiny_run, tmp_path, data_dir,
                                                           capsys):
    """Through `train.multitask --resume` on a copy of a finished run."""
    from train.multitask import main
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    metrics = run / "metrics.jsonl"
    good = metrics.read_text()
    argv = ["--config", str(run / "train_config.json"), "--out", str(run), "--resume",
            "--data-dir", str(data_dir), "--no-progress"]
    metrics.write_text("7\n" + good)
    assert main(argv) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {metrics}: line 1 is not a JSON object")
    metrics.write_text(good + '{"step": 9, "ep')  # the kill's cut line
    assert main(argv) == 0
    assert metrics.read_text() == good
