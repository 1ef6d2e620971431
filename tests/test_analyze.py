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
    fp, fn, per_class, confusions = a.tables
    assert [r[1] for r in fp.rows] == ["0", "1"]
    assert [r[1] for r in fn.rows] == ["2", "3"]  # lowest probability first
    assert fn.rows[0][2:] == ["x2", "y2"]
    assert fp.columns == ["p(paraphrase)", "id", "sentence1", "sentence2"]
    assert a.score == 2 / 6  # right: 4 (gold 1) and 5 (gold 0)
    # predicted 1, 1, 0, 0, 1, 0: each class 3 gold, 3 predicted, 1 right (5 and 4)
    assert per_class.rows == [["0", "3", "3", "1", "0.333", "0.333", "0.333"],
                              ["1", "3", "3", "1", "0.333", "0.333", "0.333"]]
    assert confusions.rows == [["0", "1", "2", "0.667"], ["1", "0", "2", "0.667"]]


def test_sts_over_and_under_estimates():
    pred = np.array([4.0, 1.0, 2.5, 0.0, 3.0])
    gold = np.array([1.0, 1.5, 2.5, 4.0, 2.0])
    a = analyze_task("sts", list("abcde"), [list("ABCDE"), list("VWXYZ")], gold, pred, top=1)
    over, under, _ = a.tables  # then the error by gold score
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
                        lambda *a, **k: calls.append(getattr(a[3], "name", a[3]))
                        or predict(*a, **k))
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


# ------------------------------------------------------------------ a user's own tasks

def nli_task():
    from bert_jax.tasks import Task
    return Task("nli", "pair-classification", text=("premise", "hypothesis"), label="label",
                classes=("neutral", "entailment", "contradiction"))


def test_a_user_classification_task_with_string_classes():
    """Its class values (not indices) in the rows, its own text columns, per-class counts,
    precision, recall and F1 and the confusions, all against loops over the examples here."""
    task = nli_task()
    rng = np.random.default_rng(7)
    n = 60
    gold = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[gold]
    premises, hypotheses = [f"p{i}" for i in range(n)], [f"h{i}" for i in range(n)]
    ids = [f"id{i}" for i in range(n)]
    a = analyze_task(task, ids, [premises, hypotheses], gold, logits, top=4)
    wrong, per_class, confusions = a.tables
    pred = logits.argmax(-1)
    assert a.score == np.mean(pred == gold) and a.score_key == "nli_acc"
    assert a.title == "nli (pair-classification)" and a.score_name == "accuracy"
    assert wrong.columns == ["p(pred)", "pred", "gold", "p(gold)", "id", "premise", "hypothesis"]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    want = sorted((k for k in range(n) if pred[k] != gold[k]), key=lambda k: -probs[k, pred[k]])
    assert [r[4] for r in wrong.rows] == [ids[k] for k in want[:4]]
    for row, k in zip(wrong.rows, want):
        assert row[1:3] == [task.classes[pred[k]], task.classes[gold[k]]]
        assert row[5:] == [premises[k], hypotheses[k]]
    for c, row in enumerate(per_class.rows):
        right = sum(1 for k in range(n) if gold[k] == c and pred[k] == c)
        n_gold, n_pred = sum(gold == c), sum(pred == c)
        precision, recall = right / n_pred, right / n_gold
        assert row == [task.classes[c], str(n_gold), str(n_pred), str(right), f"{precision:.3f}",
                       f"{recall:.3f}", f"{2 * precision * recall / (precision + recall):.3f}"]
    pairs = {(g, p): sum(1 for k in range(n) if gold[k] == g and pred[k] == p)
             for g in range(3) for p in range(3) if g != p}
    counts = [int(r[2]) for r in confusions.rows]
    assert counts == sorted((c for c in pairs.values() if c), reverse=True)[:4]
    for g_name, p_name, count, share in confusions.rows:
        g, p = task.classes.index(g_name), task.classes.index(p_name)
        assert int(count) == pairs[g, p] and share == f"{pairs[g, p] / sum(gold == g):.3f}"
    text = to_markdown([a], "T")
    assert "## nli (pair-classification)" in text and "### Per class" in text


def test_a_user_task_of_two_string_classes_lists_false_positives_and_negatives():
    from bert_jax.tasks import Task
    task = Task("polar", "classification", text=("review",), label="polarity",
                classes=("neg", "pos"))
    logits = np.array([2.0, -1.0, 0.5, -3.0])
    a = analyze_task(task, list("abcd"), [["w", "x", "y", "z"]], np.array([0, 1, 1, 0]), logits)
    fp, fn = a.tables[:2]
    assert fp.title.startswith("False positives (gold neg") and fp.columns[:2] == ["p(pos)", "id"]
    assert fn.title.startswith("False negatives (gold pos")
    assert [r[1] for r in fp.rows] == ["a"] and [r[1] for r in fn.rows] == ["b"]
    assert fp.rows[0][0] == f"{1 / (1 + np.exp(-2.0)):.3f}" and fp.rows[0][2:] == ["w"]


def test_a_user_regression_task_gets_its_error_by_gold_score():
    """Five equal bins over the task's range (1..10, the last bin closed), each bin's n, mean
    gold, mean prediction, mean error and mean absolute error against loops here."""
    from bert_jax.tasks import Task
    task = Task("stars", "regression", text=("review",), label="stars", range=(1.0, 10.0))
    rng = np.random.default_rng(2)
    gold = np.concatenate([rng.uniform(1, 10, 40), [1.0, 10.0, 2.8]])
    pred = gold + rng.normal(size=len(gold))
    a = analyze_task(task, [str(i) for i in range(len(gold))], [["s"] * len(gold)], gold, pred,
                     top=3)
    over, under, bins = a.tables
    assert over.title == "Largest over-estimates (predicted higher than gold)"
    assert a.score_key == "stars_r" and a.title == "stars (regression)"
    edges = [1.0, 2.8, 4.6, 6.4, 8.2, 10.0]
    for b, row in enumerate(bins.rows):
        inside = [k for k in range(len(gold)) if edges[b] <= gold[k] < edges[b + 1]
                  or (b == 4 and gold[k] == 10.0)]
        err = [pred[k] - gold[k] for k in inside]
        assert row[:2] == [f"[{edges[b]:.2f}, {edges[b + 1]:.2f}{']' if b == 4 else ')'}",
                           str(len(inside))]
        assert row[2:] == [f"{np.mean(gold[inside]):.3f}", f"{np.mean(pred[inside]):.3f}",
                           f"{np.mean(err):+.3f}", f"{np.mean(np.abs(err)):.3f}"]
    assert sum(int(r[1]) for r in bins.rows) == len(gold)


def test_analyze_reads_a_user_tasks_dev_file_by_its_definition(tmp_path):
    """A user task's dev file (its own columns, string labels, an absolute path) is read
    without a data folder; saved outputs by id stand in for the model."""
    import dataclasses
    from train.analyze import analyze
    rows = [("q1", "a man sleeps", "a person rests", "entailment"),
            ("q2", "a dog runs", "a cat sits", "contradiction"),
            ("q3", "kids play", "children are outside", "neutral"),
            ("q4", "it rains", "the ground is wet", "entailment")]
    dev = tmp_path / "nli-dev.csv"
    dev.write_text("pair,premise,hypothesis,label\n" + "".join(",".join(r) + "\n" for r in rows))
    task = dataclasses.replace(nli_task(), id="pair", files=(("train", str(dev)),
                                                               ("dev", str(dev))))
    logits = {"q1": [0, 3, 0], "q2": [0, 0, 2], "q3": [0, 1, 0], "q4": [2, 0, 0]}
    saved = ({"nli": {k: np.array(v, float) for k, v in logits.items()}}, tmp_path / "x.npz")
    a, = analyze(None, [task], data_dir=None, top=5, saved=saved)
    assert (a.n, a.score, a.source) == (4, 0.5, str(tmp_path / "x.npz"))
    from scipy.special import softmax
    p3, p4 = softmax(logits["q3"]), softmax(logits["q4"])  # wrong: q4 (0.79), then q3 (0.58)
    wrong = a.tables[0].rows
    assert [r[:5] for r in wrong] == [
        [f"{p4[0]:.3f}", "neutral", "entailment", f"{p4[1]:.3f}", "q4"],
        [f"{p3[1]:.3f}", "entailment", "neutral", f"{p3[0]:.3f}", "q3"]]
    assert wrong[0][5:] == ["it rains", "the ground is wet"]


@pytest.fixture(scope="module")
def user_task_run(tmp_path_factory, tiny_model_dir, data_dir):
    """A tiny run of the three built-ins and two tasks of a user's own, from a file written
    here (the first 40 SST dev rows): `mood` (classes "sad", "meh", "happy") and `stars` (a
    score in 1..10)."""
    import csv
    from bert_jax.tasks import Task
    from train.config import PRESETS
    from train.multitask import train_and_evaluate
    folder = tmp_path_factory.mktemp("user_task_run")
    with (data_dir / "ids-sst-dev.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))[:40]
    reviews = folder / "reviews.csv"
    with reviews.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["id", "review", "mood", "stars"])
        for k, r in enumerate(rows):
            label = int(r["sentiment"])
            out.writerow([r["id"].strip(), r["sentence"], ("sad", "sad", "meh", "happy",
                                                           "happy")[label], 2 * label + 1 + k % 2])
    files = (("train", str(reviews)), ("dev", str(reviews)))
    tasks = [Task("mood", "classification", text=("review",), label="mood",
                  classes=("sad", "meh", "happy"), files=files),
             Task("stars", "regression", text=("review",), label="stars", range=(1.0, 10.0),
                  files=files)]
    cfg = PRESETS["concat"].replace(init=str(tiny_model_dir), epochs=1, max_length=32,
                                    num_buckets=2, limit_train=16, limit_eval=16,
                                    eval_batch_size=16, log_every=1, lr=1e-3)
    run = folder / "run"
    train_and_evaluate(cfg, run, data_dir=str(data_dir), progress=False, tasks=tasks)
    return run


@pytest.mark.slow
def test_analyze_compare_and_plots_of_a_run_with_its_own_tasks(user_task_run, data_dir,
                                                               tmp_path, capsys):
    """train.analyze finds the run's own tasks in train_config.json (no task file) and reports
    each, its score equal to the run's dev score; --tasks names them; train.compare tabulates
    their scores; the run's curves draw their losses and scores."""
    import json
    from bert_jax import plots
    from train import compare
    run, out = user_task_run, tmp_path / "report.md"
    best = [json.loads(line) for line in (run / "metrics.jsonl").open()][-1]
    assert {"mood_acc", "stars_r"} <= set(best)
    args = [str(run), "--data-dir", str(data_dir), "--top", "2", "--limit", "16",
            "--no-progress"]
    assert main(args + ["--out", str(out)]) == 0
    text, err = out.read_text(), capsys.readouterr().err
    for heading in ("## SST-5 sentiment", "## Quora paraphrase", "## STS similarity",
                    "## mood (classification)", "### Per class", "## stars (regression)",
                    "### Error by gold score"):
        assert heading in text
    mood = text.split("## mood (classification)")[1]
    assert f"16 dev examples; accuracy {best['mood_acc']:.4f}." in mood
    assert "| class | gold | predicted |" in mood and "| sad |" in mood
    assert f"Pearson r {best['stars_r']:.4f}." in text.split("## stars (regression)")[1]
    assert "mood_acc" in err and "stars_r" in err  # the closing block's scores
    assert main(args + ["--tasks", "stars", "--out", str(tmp_path / "stars.md")]) == 0
    assert "## stars" in (tmp_path / "stars.md").read_text() and "## mood" not in (
        tmp_path / "stars.md").read_text()
    with pytest.raises(SystemExit):
        main(args + ["--tasks", "nope"])
    assert "choose from sst, para, sts, mood, stars" in capsys.readouterr().err

    assert compare.main([str(run)]) == 0
    header, _, row = capsys.readouterr().out.strip().splitlines()
    assert header.endswith("| SST acc | para acc | STS r | mood_acc | stars_r | overall |")
    assert row.endswith(" | ".join(f"{best[k]:.3f}" for k in ("sst_acc", "para_acc", "sts_r",
                                                                "mood_acc", "stars_r",
                                                                "overall")) + " |")
    fig = plots.training_curves_figure(run)
    labels = {line.get_label() for ax in fig.axes[:2] for line in ax.get_lines()}
    assert {"mood (cross-entropy)", "stars (MSE)", "mood accuracy", "stars Pearson r"} <= labels
