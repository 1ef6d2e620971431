"""train.evaluate: command lines refused before any work, prediction files (the CS224N format,
every id of the input), scores and plots of every task a run defines (the built-ins and the
user's), runs combined only when they define the same tasks."""
from __future__ import annotations

import numpy as np
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


def test_prediction_files_in_the_cs224n_format(tmp_path):
    """The built-ins' files as CS224N's handout writes them (their column names, class ids,
    `%.6f` scores); a user task's name its label column and hold label values."""
    from bert_jax.tasks import PARA, SST, STS, Task
    nli = Task("nli", "pair-classification", text=("a", "b"), label="gold",
               classes=("NEUTRAL", "ENTAILMENT", "CONTRADICTION"))
    cases = [(SST, np.array([3, 0]), "id,Predicted_Sentiment \nx1 , 3 \nx2 , 0 \n"),
             (PARA, np.array([1, 0]), "id,Predicted_Is_Paraphrase \nx1 , 1 \nx2 , 0 \n"),
             (STS, np.array([4.25, 0.1234567], np.float32),
              "id,Predicted_Similarity \nx1 , 4.250000 \nx2 , 0.123457 \n"),
             (nli, np.array([1, 2]),
              "id,Predicted_gold \nx1 , ENTAILMENT \nx2 , CONTRADICTION \n"),
             (nli.replace(column_names=("Predicted_Label",)), np.array([0, 0]),
              "id,Predicted_Label \nx1 , NEUTRAL \nx2 , NEUTRAL \n")]
    for task, predictions, want in cases:
        path = tmp_path / f"{task.name}.csv"
        evaluate.write_predictions(path, task, ["x1", "x2"], predictions)
        assert path.read_text() == want, task.name


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


WORDS = ("good bad film plot actor slow fast funny dull long short great awful music story "
         "scene ending cast script pace").split()


def _sentence(rng, n=5) -> str:
    return " ".join(rng.choice(WORDS, n))


def _user_task_files(folder):
    """A pair-classification task with string labels in .csv files (cross-encoded; its own id
    column, a test file, one bad dev row: no hypothesis) and a regression task in .jsonl files
    without an id column (the rows' line numbers are their ids)."""
    import csv
    import json
    from bert_jax.tasks import Task
    rng = np.random.default_rng(3)
    folder.mkdir()
    for split, n in (("train", 24), ("dev", 12), ("test", 8)):
        with (folder / f"nli-{split}.csv").open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["pid", "premise", "hypothesis"] + (["gold"] if split != "test" else []))
            for i in range(n):
                w.writerow([f"p{split[:2]}{i}", _sentence(rng), _sentence(rng)]
                           + ([str(rng.choice(["no", "yes"]))] if split != "test" else []))
            if split == "dev":
                w.writerow(["pbad", "a premise, no hypothesis", "", "yes"])
    for split, n in (("train", 24), ("dev", 12)):
        with (folder / f"stars-{split}.jsonl").open("w", encoding="utf-8") as f:
            for _ in range(n):
                f.write(json.dumps({"review": _sentence(rng, 6),
                                    "stars": round(float(rng.uniform(1, 5)), 1)}) + "\n")
    nli = Task("nli", "pair-classification", text=("premise", "hypothesis"), label="gold",
               classes=("no", "yes"), id="pid", encoding="cross",
               files=tuple((s, str(folder / f"nli-{s}.csv")) for s in ("train", "dev", "test")))
    stars = Task("stars", "regression", text=("review",), label="stars", range=(1.0, 5.0),
                 id="", column_names=("Predicted_Stars",),
                 files=tuple((s, str(folder / f"stars-{s}.jsonl")) for s in ("train", "dev")))
    return nli, stars


@pytest.fixture(scope="module")
def user_run(tmp_path_factory, tiny_model_dir, data_dir):
    """A tiny run (as conftest's tiny_run, 4 steps) that defines two tasks of its own beside the
    built-ins and trains them with SST: (run folder, (nli, stars) definitions)."""
    from train.config import PRESETS
    from train.multitask import train_and_evaluate
    folder = tmp_path_factory.mktemp("user_run")
    nli, stars = _user_task_files(folder / "files")
    cfg = PRESETS["concat"].replace(init=str(tiny_model_dir), epochs=2, max_length=32,
                                    num_buckets=2, limit_train=16, limit_eval=16,
                                    eval_batch_size=16, log_every=1, lr=1e-3, tasks=("sst",),
                                    skip_bad_rows=True)
    train_and_evaluate(cfg, folder / "run", data_dir=str(data_dir), progress=False,
                       tasks=[nli, stars])
    return folder / "run", (nli, stars)


def _written(path):
    """(header, [(id, value)]) of a prediction file, split as the CS224N format writes it."""
    lines = path.read_text().splitlines()
    return lines[0], [tuple(line[:-1].split(" , ")) for line in lines[1:]]


@pytest.mark.slow
def test_a_user_tasks_predictions_and_scores(user_run, data_dir, tmp_path, capsys):
    """Every task the run defines gets its prediction files: ids as in its own file (its id
    column, or the line numbers), label values ("yes", not 1) or scores, a header naming the
    label column (or the definition's column name); its dev score equals accuracy and scipy's
    Pearson r computed from the written file against the gold file, and `overall` is over all
    five tasks."""
    import csv
    import json
    from scipy.stats import pearsonr
    run, (nli, stars) = user_run
    out = tmp_path / "predictions"
    assert evaluate.main([str(run), "--out", str(out), "--data-dir", str(data_dir),
                          "--limit", "16", "--no-progress"]) == 0
    printed = capsys.readouterr()
    scores = json.loads((out / "scores.json").read_text())

    with open(nli.file("dev"), newline="", encoding="utf-8") as f:
        gold = {r["pid"]: r["gold"] for r in csv.DictReader(f)}
    del gold["pbad"]  # no hypothesis: left out and named
    header, rows = _written(out / "nli-dev-output.csv")
    assert header == "id,Predicted_gold "
    assert [i for i, _ in rows] == list(gold)
    assert {v for _, v in rows} <= {"no", "yes"}
    assert scores["nli_acc"] == pytest.approx(np.mean([gold[i] == v for i, v in rows]))
    assert scores["left_out"]["nli-dev-output.csv"] == [{"line": 14, "id": "pbad"}]
    assert "nli-dev-output.csv: 12 rows; 1 bad row of nli-dev.csv left out" in printed.err

    with open(nli.file("test"), newline="", encoding="utf-8") as f:
        test_ids = [r["pid"] for r in csv.DictReader(f)]
    header, rows = _written(out / "nli-test-output.csv")
    assert [i for i, _ in rows] == test_ids and {v for _, v in rows} <= {"no", "yes"}

    stars_gold = [json.loads(line)["stars"]
                  for line in open(stars.file("dev"), encoding="utf-8")]
    header, rows = _written(out / "stars-dev-output.csv")
    assert header == "id,Predicted_Stars "
    assert [i for i, _ in rows] == [str(k) for k in range(1, len(stars_gold) + 1)]
    assert all(len(v.split(".")[1]) == 6 for _, v in rows)
    want_r = pearsonr([float(v) for _, v in rows], stars_gold).statistic
    assert scores["stars_r"] == pytest.approx(want_r, abs=1e-4)
    assert not (out / "stars-test-output.csv").exists()

    parts = [scores["sst_acc"], scores["para_acc"], (scores["sts_r"] + 1) / 2,
             scores["nli_acc"], (scores["stars_r"] + 1) / 2]
    assert scores["overall"] == pytest.approx(np.mean(parts), abs=1e-9)
    first = printed.out.splitlines()[0]
    for key in ("nli_acc", "stars_r", "overall"):
        assert f"{key} {scores[key]:.3f}" in first
    assert set(scores["dev_files"]) == {"sst", "para", "sts", "nli", "stars"}
    assert (out / "nli_confusion.png").is_file() and (out / "stars_scatter.png").is_file()
    with np.load(out / evaluate.DEV_OUTPUTS_FILE) as f:
        assert f["nli"].shape == (12,) and list(f["stars_ids"]) == [i for i, _ in rows]


@pytest.mark.slow
def test_runs_defining_other_tasks_are_not_combined(user_run, tiny_run, data_dir, tmp_path,
                                                    capsys):
    run, _ = user_run
    code = evaluate.main([str(tiny_run), str(run), "--out", str(tmp_path / "out"),
                          "--data-dir", str(data_dir), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {run}: its tasks differ from {tiny_run}'s (nli, stars:")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_an_ensemble_of_runs_with_a_user_task(user_run, data_dir, tmp_path):
    """Two runs defining the same user tasks: the ensemble's outputs of each are
    combine_outputs of the runs' own, and its prediction file holds the label values of
    those combined outputs."""
    import shutil
    import jax
    from conftest import replace_best
    from bert_jax.checkpoints import load_run
    from train.ensemble import combine_outputs
    run, (nli, stars) = user_run
    other = tmp_path / "run2"
    shutil.copytree(run, other, ignore=shutil.ignore_patterns("predictions"))
    loaded = load_run(other)
    keys = iter(jax.random.split(jax.random.PRNGKey(5), len(jax.tree.leaves(loaded.params))))
    replace_best(other, jax.tree.map(
        lambda x: x + 0.05 * jax.random.normal(next(keys), x.shape, x.dtype), loaded.params),
        loaded.meta)
    common = ["--data-dir", str(data_dir), "--limit", "8", "--no-progress"]
    outputs = []
    for name, runs in (("a", [run]), ("b", [other]), ("ens", [run, other])):
        assert evaluate.main([str(r) for r in runs] + ["--out", str(tmp_path / name)]
                             + common) == 0
        with np.load(tmp_path / name / evaluate.DEV_OUTPUTS_FILE) as f:
            outputs.append({k: f[k] for k in f.files})
    a, b, ens = outputs
    assert not np.allclose(a["stars"], b["stars"])
    for task in (nli, stars):
        np.testing.assert_allclose(ens[task.name], combine_outputs(task, [a[task.name],
                                                                          b[task.name]]),
                                   rtol=1e-5, atol=1e-5)
    _, rows = _written(tmp_path / "ens" / "nli-dev-output.csv")
    assert [v for _, v in rows] == ["yes" if x > 0 else "no" for x in ens["nli"]]
