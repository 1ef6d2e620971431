"""train.evaluate and train.analyze command lines: output paths refused before any work."""
from __future__ import annotations

import pytest

from train import analyze, evaluate


def test_evaluate_out_that_is_a_file_is_refused(tmp_path, capsys):
    taken = tmp_path / "scores.txt"
    taken.write_text("mine")
    with pytest.raises(SystemExit) as info:
        evaluate.main([str(tmp_path / "run"), "--out", str(taken)])
    assert info.value.code == 2
    assert "is a file: pass a folder path" in capsys.readouterr().err
    assert taken.read_text() == "mine"


def test_analyze_out_that_is_a_folder_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        analyze.main([str(tmp_path / "run"), "--out", str(tmp_path)])
    assert info.value.code == 2
    assert "is a folder: pass a file path" in capsys.readouterr().err


@pytest.mark.parametrize("tool, flag, value", [
    (evaluate, "--batch-size", "0"), (evaluate, "--limit", "-1"),
    (analyze, "--top", "-1"), (analyze, "--limit", "-3")])
def test_numbers_out_of_range_are_refused(tool, flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        tool.main([str(tmp_path / "run"), flag, value])
    assert info.value.code == 2 and f"argument {flag}:" in capsys.readouterr().err


def _head(src, dst, lines):
    with src.open(newline="", encoding="utf-8") as f:
        dst.write_text("".join(f.readline() for _ in range(lines)), encoding="utf-8")


@pytest.mark.slow
def test_prediction_files_hold_every_id_of_their_input(tiny_run, data_dir, tmp_path, capsys):
    """Each file is read once: a dev file's bad rows (no label, no text) are left out of its
    prediction file and of the scores and named in one line and in scores.json, with the
    count training gives; every other id is there in file order. A bad row in a test file
    (the file that is submitted) stops the evaluation before anything is written."""
    import csv
    from bert_jax.cs224n import TASKS, default_file
    small = tmp_path / "data"
    small.mkdir()
    for task in TASKS:
        for split in ("dev", "test"):
            name = default_file(task, split)
            if name:
                _head(data_dir / name, small / name, 21)
    with (small / "quora-dev.csv").open("a", encoding="utf-8") as f:
        f.write("20\tnolabel\thow old are you?\twhat is your age?\t\n")
        f.write("21\tnotext\twhat is this?\t\t\n")
    out = tmp_path / "predictions"
    scores = evaluate.evaluate_run(tiny_run, out, data_dir=str(small), progress=False)
    for task in TASKS:
        for split in ("dev", "test"):
            name = default_file(task, split)
            if not name:
                continue
            with (small / name).open(newline="", encoding="utf-8") as f:
                want = [r["id"].strip() for r in csv.DictReader(f, delimiter="\t")]
            if name == "quora-dev.csv":
                want = want[:-2]
            lines = (out / f"{task}-{split}-output.csv").read_text().splitlines()[1:]
            got = [line.split(" , ")[0] for line in lines]
            assert got == want, (task, split)
    assert scores["left_out"] == {"para-dev-output.csv": [{"line": 22, "id": "nolabel"},
                                                          {"line": 23, "id": "notext"}]}
    err = capsys.readouterr().err
    assert "para-dev-output.csv: 20 rows; 2 bad rows of quora-dev.csv left out" in err
    assert 0.0 <= scores["para_acc"] <= 1.0  # 20 labeled rows
    with (small / "sts-test-student.csv").open("a", encoding="utf-8") as f:
        f.write("20\tnotext\tonly one sentence\t\n")
    again = tmp_path / "again"
    with pytest.raises(evaluate.DataError, match="sts-test-student.csv: 1 bad row .*line 22"):
        evaluate.evaluate_run(tiny_run, again, data_dir=str(small), progress=False)
    assert not again.exists()


def closing_paths(text: str) -> list[str]:
    """The paths listed under the closing block's `wrote N files:` line."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("wrote "))
    return [line.strip() for line in lines[start + 1:] if line.startswith("  ")]


@pytest.mark.slow
def test_closing_block_names_every_file_written(tiny_run, data_dir, tmp_path, capsys):
    import json
    out = tmp_path / "predictions"
    code = evaluate.main([str(tiny_run), "--out", str(out), "--data-dir", str(data_dir),
                          "--limit", "24", "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0
    scores = json.loads((out / "scores.json").read_text())
    first = printed.splitlines()[0]
    assert first.startswith(f"dev scores (best checkpoint, step {scores['checkpoint_step']}): ")
    assert f"overall {scores['overall']:.3f}" in first and f"sts_r {scores['sts_r']:.3f}" in first
    paths = closing_paths(printed)
    assert sorted(paths) == sorted(str(p) for p in out.iterdir())  # every file, nothing else
    names = {p.rsplit("/", 1)[-1] for p in paths}
    assert {"scores.json", "dev-outputs.npz", "sst_confusion.png", "para_histograms.png",
            "sts_scatter.png", "sst-dev-output.csv", "sts-test-output.csv"} <= names
    assert scores["which"] == "best" and scores["limit"] == 24
    assert set(scores["dev_files"]) == {"sst", "para", "sts"}


@pytest.mark.slow
def test_written_to_a_file_the_progress_is_plain_lines(tiny_run, data_dir, tmp_path):
    """No bars (carriage returns, escape sequences) in a log file: evaluation and datasets'
    tokenizing print a few plain lines instead."""
    import os
    import subprocess
    import sys
    log = tmp_path / "log.txt"
    env = {**os.environ, "BERT_JAX_CACHE": str(tmp_path / "cache")}  # tokenizing runs
    with log.open("w") as f:
        done = subprocess.run([sys.executable, "-m", "train.evaluate", str(tiny_run), "--out",
                               str(tmp_path / "out"), "--data-dir", str(data_dir), "--limit",
                               "40"], stdout=f, stderr=subprocess.STDOUT, env=env, timeout=900,
                              cwd=evaluate.Path(evaluate.__file__).parents[1])
    text = log.read_text()
    assert done.returncode == 0, text
    assert "\r" not in text and "\x1b" not in text, text
    assert "eval para quora-dev.csv: 40 examples in" in text  # the plain progress lines
    progress = [line for line in text.splitlines() if line.startswith(("eval ", "tokenizing"))]
    assert len(progress) <= 2 * 5, text  # two lines per file (3 dev, 2 test) at most
    assert all(evaluate.Path(p).exists() for p in closing_paths(text))
