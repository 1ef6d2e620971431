"""`python -m train.analyze`: ranked mistakes per task, and the report file."""
from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from train.analyze import analyze_task, main, to_markdown


def test_sst_most_confident_wrong_first():
    logits = np.log(np.array([[0.9, 0.1, 0, 0, 0], [0.1, 0.6, 0.3, 0, 0],
                              [0.05, 0.05, 0.8, 0.05, 0.05], [0.2, 0.2, 0.2, 0.2, 0.2]]) + 1e-9)
    gold = np.array([1, 1, 4, 3])
    a = analyze_task("sst", ["a", "b", "c", "d"], [["s0", "s1", "s2", "s3"]], gold, logits, top=5)
    assert a.score == 0.25
    rows = a.tables[0].rows
    assert [r[4] for r in rows] == ["a", "c", "d"]  # p(pred) 0.9, 0.8, 0.2; "b" is right
    assert rows[0][:3] == ["0.900", "0", "1"] and rows[0][-1] == "s0"


def test_para_false_positives_and_negatives():
    logits = np.array([3.0, 1.0, -2.0, -0.5, 2.0, -3.0])
    gold = np.array([0, 0, 1, 1, 1, 0])
    s1, s2 = [f"x{i}" for i in range(6)], [f"y{i}" for i in range(6)]
    a = analyze_task("para", [str(i) for i in range(6)], [s1, s2], gold, logits, top=10)
    fp, fn = a.tables
    assert [r[1] for r in fp.rows] == ["0", "1"]
    assert [r[1] for r in fn.rows] == ["2", "3"]  # lowest probability first
    assert fn.rows[0][2:] == ["x2", "y2"]
    assert a.score == 2 / 6  # right: 4 (gold 1) and 5 (gold 0)


def test_sts_over_and_under_estimates():
    pred = np.array([4.0, 1.0, 2.5, 0.0, 3.0])
    gold = np.array([1.0, 1.5, 2.5, 4.0, 2.0])
    a = analyze_task("sts", list("abcde"), [list("ABCDE"), list("VWXYZ")], gold, pred, top=1)
    over, under = a.tables
    assert [r[3] for r in over.rows] == ["a"] and over.rows[0][2] == "+3.000"
    assert [r[3] for r in under.rows] == ["d"]
    text = to_markdown([a], "T")
    assert "### Largest over-estimates" in text and "| 4.000 | 1.000 | +3.000 | a | A | V |" in text


def test_markdown_escapes_pipes_and_newlines():
    a = analyze_task("sst", ["i"], [["a | b\nc"]], np.array([0]), np.array([[0.0, 5, 0, 0, 0]]))
    assert "a \\| b c" in to_markdown([a], "T")


@pytest.mark.slow
def test_cli_writes_the_report(tiny_run, data_dir, tmp_path, capsys):
    out = tmp_path / "report.md"
    code = main([str(tiny_run), "--data-dir", str(data_dir), "--top", "3", "--limit", "24",
                 "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    text = out.read_text()
    assert text.strip() == printed.strip()
    for heading in ("## SST-5 sentiment", "### Most confident wrong predictions",
                    "## Quora paraphrase", "### False positives", "### False negatives",
                    "## STS similarity", "### Largest over-estimates",
                    "### Largest under-estimates"):
        assert heading in text
    assert "24 dev examples" in text
    # default output: RUN/analysis.md (in a copy: the session run is shared read-only)
    run = shutil.copytree(tiny_run, tmp_path / "run")
    code = main([str(run), "--data-dir", str(data_dir), "--top", "1", "--limit", "8",
                 "--tasks", "sts"])
    assert code == 0 and "## STS similarity" in (run / "analysis.md").read_text()


def test_cli_errors(tmp_path, capsys):
    assert main([str(tmp_path / "none")]) == 2
    assert "error:" in capsys.readouterr().err


NUMBER = re.compile(r"[-+]?\d+\.\d+")


def assert_same_report(a: str, b: str, atol: float = 0.0015) -> None:
    """The same report up to the last printed digit: evaluate pads 40 rows where the model run
    pads 24, which moves a float32 score by about 1e-4 and can flip a rounded digit."""
    assert NUMBER.sub("#", a) == NUMBER.sub("#", b)
    np.testing.assert_allclose([float(x) for x in NUMBER.findall(a)],
                               [float(x) for x in NUMBER.findall(b)], atol=atol, rtol=0)


@pytest.mark.slow
def test_analyze_after_evaluate_does_not_run_the_model(tiny_run, data_dir, tmp_path,
                                                      monkeypatch, capsys):
    """train.evaluate's dev outputs of the same checkpoint are read: no model is loaded or
    run, and the report is the one the model gives."""
    from train import analyze as analyze_module
    from train.evaluate import evaluate_run
    run = shutil.copytree(tiny_run, tmp_path / "run")  # the session run is shared read-only
    loads, calls = [], []
    load, predict = analyze_module.load_model, analyze_module.predict_task
    monkeypatch.setattr(analyze_module, "load_model",
                        lambda *a, **k: loads.append(a) or load(*a, **k))
    monkeypatch.setattr(analyze_module, "predict_task",
                        lambda *a, **k: calls.append(a[3]) or predict(*a, **k))
    args = [str(run), "--data-dir", str(data_dir), "--top", "3", "--limit", "24", "--no-progress"]

    assert main(args + ["--out", str(tmp_path / "model.md")]) == 0  # nothing saved: model runs
    assert len(loads) == 1 and calls == ["sst", "para", "sts"]
    evaluate_run(run, run / "predictions", str(data_dir), limit=40, progress=False)
    loads.clear(), calls.clear(), capsys.readouterr()
    assert main(args + ["--out", str(tmp_path / "saved.md")]) == 0
    assert loads == [] and calls == []  # the model ran zero times
    err = capsys.readouterr().err
    assert "dev-outputs.npz" in err and "the model was not run" in err
    assert str(tmp_path / "saved.md") in err.splitlines()[-1]  # the closing block names it
    assert_same_report((tmp_path / "saved.md").read_text(), (tmp_path / "model.md").read_text())

    # another checkpoint (--which last), or more rows than evaluate scored: the model runs
    assert main(args + ["--which", "last", "--out", str(tmp_path / "last.md")]) == 0
    assert calls == ["sst", "para", "sts"]
    calls.clear()
    assert main(args[:-3] + ["--limit", "60", "--tasks", "sts", "--no-progress",
                             "--out", str(tmp_path / "more.md")]) == 0
    assert calls == ["sts"]


def _table(text: str, heading: str) -> list[list[str]]:
    """The rows (cells) of the markdown table under `### heading...`."""
    lines = text.split(f"### {heading}", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    rows = [line for line in lines.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in row.strip("|").split(" | ")] for row in rows[1:]]


@pytest.mark.slow
def test_report_rows_are_the_models_mistakes_ranked(varied_run, data_dir, tmp_path):
    """Each row against train.evaluate's dev outputs of the same checkpoint and the dev files
    read independently: the right ids, predictions, gold labels, probabilities (scipy),
    sentences and order; the scores equal train.evaluate's."""
    import csv
    import json
    from scipy.special import expit, softmax
    from train.evaluate import evaluate_run
    scores = evaluate_run(varied_run, tmp_path / "eval", str(data_dir), limit=24,
                          progress=False)
    with np.load(tmp_path / "eval" / "dev-outputs.npz") as f:
        saved = {k: f[k] for k in f.files}
    out = tmp_path / "report.md"
    assert main([str(varied_run), "--data-dir", str(data_dir), "--top", "4", "--limit", "24",
                 "--out", str(out), "--no-progress"]) == 0
    text = out.read_text()

    def dev(name, key):
        with (data_dir / name).open(newline="", encoding="utf-8") as f:
            return {r["id"].strip(): r for r in csv.DictReader(f, delimiter="\t")}
    sst_rows, para_rows = dev("ids-sst-dev.csv", "sentence"), dev("quora-dev.csv", "")
    assert f"24 dev examples; accuracy {scores['sst_acc']:.4f}." in text
    assert f"accuracy {scores['para_acc']:.4f}." in text
    assert f"Pearson r {scores['sts_r']:.4f}." in text

    ids = [str(i) for i in saved["sst_ids"]]
    probs = softmax(saved["sst"].astype(np.float64), -1)
    pred = probs.argmax(-1)
    gold = np.array([int(sst_rows[i]["sentiment"]) for i in ids])
    wrong = [k for k in range(len(ids)) if pred[k] != gold[k]]
    want = sorted(wrong, key=lambda k: -probs[k, pred[k]])[:4]
    got = _table(text, "Most confident wrong predictions")
    assert len(wrong) >= 4 and [r[4] for r in got] == [ids[k] for k in want]
    for row, k in zip(got, want):
        assert row[:4] == [f"{probs[k, pred[k]]:.3f}", str(pred[k]), str(gold[k]),
                           f"{probs[k, gold[k]]:.3f}"]
        assert row[5] == " ".join(sst_rows[ids[k]]["sentence"].lower().split())  # as read

    ids = [str(i) for i in saved["para_ids"]]
    prob = expit(saved["para"].astype(np.float64))
    gold = np.array([int(float(para_rows[i]["is_duplicate"])) for i in ids])
    fp = sorted([k for k in range(len(ids)) if prob[k] > 0.5 and gold[k] == 0],
                key=lambda k: -prob[k])[:4]
    got = _table(text, "False positives")
    assert fp and [r[1] for r in got] == [ids[k] for k in fp]
    assert [r[0] for r in got] == [f"{prob[k]:.3f}" for k in fp]
    assert json.loads((tmp_path / "eval" / "scores.json").read_text())["limit"] == 24


def test_out_never_lands_on_a_file_it_did_not_write(tiny_run, data_dir, tmp_path, capsys):
    """--out onto the dev file it reads (even with --overwrite), onto a run's own file, or onto
    a file of the user's without --overwrite: refused, the file unchanged."""
    data = tmp_path / "data"
    shutil.copytree(data_dir, data, ignore=shutil.ignore_patterns("*train*"))
    mine = tmp_path / "mine.md"
    mine.write_text("my notes\n")
    cases = [(data / "sts-dev.csv", []), (mine, []), (data / "sts-dev.csv", ["--overwrite"]),
             (tiny_run / "metrics.jsonl", ["--overwrite"])]
    for target, extra in cases:
        before = target.read_bytes()
        code = main([str(tiny_run), "--data-dir", str(data), "--tasks", "sts", "--limit", "4",
                     "--top", "1", "--no-progress", "--out", str(target), *extra])
        assert code == 2 and str(target) in capsys.readouterr().err
        assert target.read_bytes() == before
