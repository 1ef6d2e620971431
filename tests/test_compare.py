"""train.compare: best-epoch choice, fixed epochs, mean and sample spread, clear errors."""
from __future__ import annotations

import json
import statistics

import pytest

from train.compare import main, pick, run_row, spread, table


def fake_run(path, seed, epochs):
    """A run folder as train.multitask writes it: per-epoch dev records and the config."""
    path.mkdir(parents=True)
    (path / "train_config.json").write_text(json.dumps({"seed": seed}))
    with (path / "metrics.jsonl").open("w") as f:
        for i, (sst, para, sts) in enumerate(epochs, 1):
            overall = (sst + para + (sts + 1) / 2) / 3
            f.write(json.dumps({"step": 100 * i, "epoch": float(i), "sst_acc": sst,
                                "para_acc": para, "sts_r": sts, "overall": overall}) + "\n")
    return path


@pytest.fixture
def runs(tmp_path):
    return [fake_run(tmp_path / "s1", 1, [(0.40, 0.80, 0.86), (0.50, 0.82, 0.88), (0.45, 0.81, 0.88)]),
            fake_run(tmp_path / "s2", 2, [(0.48, 0.83, 0.87), (0.46, 0.80, 0.85)]),
            fake_run(tmp_path / "s3", 3, [(0.41, 0.79, 0.86), (0.43, 0.80, 0.87), (0.49, 0.82, 0.88)])]


def test_best_epoch_is_the_highest_overall(runs):
    assert [run_row(r, None)["epoch"] for r in runs] == [2.0, 1.0, 3.0]
    assert run_row(runs[0], None)["sst_acc"] == 0.50
    assert run_row(runs[1], None)["seed"] == 2


def test_fixed_epoch_and_missing_epoch(runs):
    assert run_row(runs[2], 1)["sst_acc"] == 0.41
    with pytest.raises(SystemExit, match="no dev scores for epoch 3 .*1, 2"):
        run_row(runs[1], 3)


def test_mean_and_sample_std_match_statistics(runs):
    rows = [run_row(r, None) for r in runs]
    stats = spread(rows)
    for key in ("sst_acc", "para_acc", "sts_r", "overall"):
        values = [r[key] for r in rows]
        assert stats[key][0] == pytest.approx(statistics.mean(values))
        assert stats[key][1] == pytest.approx(statistics.stdev(values))
    text = table(rows)
    sst = [0.50, 0.48, 0.49]
    assert f"{statistics.mean(sst):.3f} ± {statistics.stdev(sst):.3f}" in text
    assert "| 2 of 3 |" in text and "mean ± std over 3 runs" in text


def test_ties_keep_the_first_epoch():
    recs = [{"epoch": 1.0, "overall": 0.7}, {"epoch": 2.0, "overall": 0.7}]
    assert pick(recs, None)["epoch"] == 1.0


def test_cli_names_the_missing_file(tmp_path, capsys):
    with pytest.raises(SystemExit, match="nope/metrics.jsonl: no such file"):
        main([str(tmp_path / "nope")])


def test_cli_json(runs, capsys):
    assert main([str(r) for r in runs] + ["--epoch", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["sst_acc"] for r in out["runs"]] == [0.40, 0.48, 0.41]
    assert out["mean_std"]["sst_acc"][0] == pytest.approx(statistics.mean([0.40, 0.48, 0.41]))


def test_out_never_replaces_a_file_it_did_not_write(runs, tmp_path, capsys):
    """--out onto a run's own file is refused even with --overwrite; another existing file only
    with --overwrite; an earlier output of train.compare is replaced."""
    log = runs[0] / "metrics.jsonl"
    before = log.read_bytes()
    for extra in ([], ["--overwrite"]):
        assert main([str(runs[0]), "--out", str(log), *extra]) == 2
        assert "inside a training run folder" in capsys.readouterr().err
        assert log.read_bytes() == before
    notes = tmp_path / "notes.md"
    notes.write_text("mine\n")
    assert main([str(runs[0]), "--out", str(notes)]) == 2
    assert "--overwrite" in capsys.readouterr().err and notes.read_text() == "mine\n"
    table_file = tmp_path / "table.md"
    assert main([str(r) for r in runs] + ["--out", str(table_file)]) == 0
    assert main([str(runs[0]), "--json", "--out", str(table_file)]) == 0  # its own: replaced
    assert main([str(runs[1]), "--out", str(table_file)]) == 0
    assert main([str(runs[0]), "--out", str(notes), "--overwrite"]) == 0
    assert notes.read_text().startswith("| run | seed |")


def test_a_runs_own_task_is_a_column_when_every_run_scored_it(tmp_path, capsys):
    """A user task's score (`nli_acc`) in every run's metrics.jsonl is a column with its mean
    and spread; a score only one run has (`extra_r`) is left out, and a line says so."""
    rows = []
    for seed, (nli, extra) in enumerate(((0.61, 0.3), (0.65, None), (0.70, None)), 1):
        run = fake_run(tmp_path / f"s{seed}", seed, [(0.4, 0.8, 0.86)])
        record = json.loads((run / "metrics.jsonl").read_text())
        scores = {"nli_acc": nli, **({"extra_r": extra} if extra is not None else {})}
        record = {**{k: v for k, v in record.items() if k != "overall"}, **scores,
                  "overall": record["overall"], "best": True}
        (run / "metrics.jsonl").write_text(json.dumps(record) + "\n")
        rows.append(run)
    assert main([str(r) for r in rows]) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert lines[0] == "| run | seed | epoch | SST acc | para acc | STS r | nli_acc | overall |"
    assert lines[2].endswith("| 0.400 | 0.800 | 0.860 | 0.610 | 0.710 |")  # fake_run's overall
    nli = [0.61, 0.65, 0.70]
    assert f"| {statistics.mean(nli):.3f} ± {statistics.stdev(nli):.3f} |" in lines[-1]
    assert f"note: extra_r left out: only {rows[0]} scored it" in err
    assert "nli_acc 0.653" in err  # the closing block's mean
    assert main([str(rows[0]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"][0]["extra_r"] == 0.3
