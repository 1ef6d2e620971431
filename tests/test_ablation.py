"""train.ablation's command line: its presets and seed are checked before anything is written,
a damaged results.jsonl is one error line (a last line cut by a kill is dropped), and a preset
stopped part-way continues from its checkpoint (the tool has no --resume flag to advise)."""
from __future__ import annotations

import json

import pytest

from train import ablation
from bert_jax.cli import SEED_MAX

RECORD = {"run": "baseline-seed11711", "preset": "baseline", "base_preset": "baseline",
          "overrides": {}, "seed": 11711, "epochs": 1, "wall_seconds": 60.0,
          "sst_acc": 0.3, "para_acc": 0.6, "sts_r": 0.1, "overall": 0.48}


@pytest.fixture
def trainings(monkeypatch):
    """The calls to `train_and_evaluate`, which writes only its folder and returns scores."""
    calls = []

    def fake_train(cfg, out, files, **kwargs):
        calls.append((out, kwargs))
        out.mkdir(parents=True, exist_ok=True)
        return {"sst_acc": 0.3, "para_acc": 0.6, "sts_r": 0.1, "overall": 0.48}
    monkeypatch.setattr(ablation, "train_and_evaluate", fake_train)
    return calls


def test_an_unknown_preset_is_one_line_before_anything_runs(tmp_path, capsys, trainings):
    root = tmp_path / "abl"
    assert ablation.main(["--out", str(root), "--presets", "baseline,cosin"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: --presets baseline,cosin: no preset cosin; pass some of "
                   + ",".join(ablation.ORDER))
    assert not root.exists() and trainings == []


@pytest.mark.parametrize("tool", ["train.ablation", "train.multitask", "benchmarks"])
@pytest.mark.parametrize("seed", ["-1", str(2**70), str(SEED_MAX + 1), "1.5"])
def test_a_seed_out_of_range_is_one_parser_line(tmp_path, capsys, tool, seed):
    """Every --seed is checked by the parser (numpy and JAX seeds: 0 to 2**32 - 1)."""
    import benchmarks.cli
    from train import multitask
    parse = {"train.ablation": ablation.build_parser(), "benchmarks": benchmarks.cli.build_parser(),
             "train.multitask": multitask.build_parser()}[tool].parse_args
    with pytest.raises(SystemExit) as exit_:
        parse(["--seed", seed])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: argument --seed: " in err
    assert (f"{seed} is out of range: pass a seed from 0 to {SEED_MAX}" in err
            if seed != "1.5" else "'1.5' is not a whole number" in err)
    assert ablation.build_parser().parse_args(["--seed", str(SEED_MAX)]).seed == SEED_MAX


def test_a_cut_last_line_of_results_is_dropped(tmp_path, capsys, trainings, data_dir):
    root = tmp_path / "abl"
    (root / RECORD["run"]).mkdir(parents=True)
    results = root / "results.jsonl"
    results.write_text(json.dumps(RECORD) + "\n" + json.dumps(RECORD)[:40])
    assert ablation.main(["--out", str(root), "--presets", "baseline,cosine",
                          "--data-dir", str(data_dir)]) == 0
    assert [out.name for out, _ in trainings] == ["cosine-seed11711"]
    lines = results.read_text().splitlines()
    assert [json.loads(line)["run"] for line in lines] == [RECORD["run"], "cosine-seed11711"]
    out = capsys.readouterr().out
    assert "| `baseline` |" in out and "| `cosine` |" in out


@pytest.mark.parametrize("damage", ["7", json.dumps({**RECORD, "overall": None})])
def test_a_damaged_results_line_is_one_error_line(tmp_path, capsys, trainings, damage):
    root = tmp_path / "abl"
    root.mkdir()
    results = root / "results.jsonl"
    results.write_text(damage + "\n" + json.dumps(RECORD) + "\n")
    assert ablation.main(["--out", str(root), "--table"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {results}: line 1 ") and "\n" not in err
    assert "delete that line" in err and trainings == []


def test_a_preset_stopped_part_way_continues_from_its_checkpoint(tmp_path, trainings, tiny_run,
                                                                  data_dir):
    """A run folder with a checkpoint but no line in results.jsonl (the ablation was killed
    mid-preset) is resumed, not refused with advice to pass a --resume it does not have."""
    import shutil
    root = tmp_path / "abl"
    shutil.copytree(tiny_run, root / "baseline-seed11711")
    (root / "results.jsonl").write_text("")
    assert ablation.main(["--out", str(root), "--presets", "baseline,cosine",
                          "--data-dir", str(data_dir)]) == 0
    assert [(out.name, kw["resume"]) for out, kw in trainings] == [
        ("baseline-seed11711", True), ("cosine-seed11711", False)]


def test_a_users_tasks_train_beside_every_preset_and_are_columns(tmp_path, capsys, monkeypatch,
                                                                 data_dir):
    """--tasks-file reaches every training, names the runs' keys, and each run's own scores
    (`mood_acc`) are recorded and tabulated; a row without them shows `-`."""
    reviews = tmp_path / "reviews.csv"
    reviews.write_text("id,review,mood\n1,good,happy\n2,bad,sad\n")
    tasks_file = tmp_path / "mine.toml"
    tasks_file.write_text('[mood]\nkind = "classification"\ntrain = "reviews.csv"\n'
                          'dev = "reviews.csv"\ntext = ["review"]\nlabel = "mood"\n'
                          'classes = ["sad", "happy"]\n')
    calls = []

    def fake_train(cfg, out, files, **kwargs):
        calls.append((out.name, kwargs["tasks"]))
        out.mkdir(parents=True, exist_ok=True)
        return {"sst_acc": 0.3, "para_acc": 0.6, "sts_r": 0.1, "mood_acc": 0.75,
                "overall": 0.5, "steps": 4}
    monkeypatch.setattr(ablation, "train_and_evaluate", fake_train)
    root = tmp_path / "abl"
    root.mkdir()
    (root / "results.jsonl").write_text(json.dumps(RECORD) + "\n")
    assert ablation.main(["--out", str(root), "--presets", "cosine", "--data-dir",
                          str(data_dir), "--tasks-file", str(tasks_file)]) == 0
    assert calls == [("cosine-tasks=mine-seed11711", str(tasks_file))]
    record = json.loads((root / "results.jsonl").read_text().splitlines()[-1])
    assert record["mood_acc"] == 0.75 and "steps" not in record
    table = capsys.readouterr().out
    assert "| SST acc | para acc | STS r | mood_acc | overall | wall | seed |" in table
    assert "| 0.300 | 0.600 | 0.100 | - | 0.480 |" in table  # the earlier run: no mood
    assert "| 0.300 | 0.600 | 0.100 | 0.750 | 0.500 |" in table
    tasks_file.write_text('[mood]\nkind = "nope"\n')  # a mistake: one line, nothing trained
    assert ablation.main(["--out", str(root), "--presets", "baseline", "--data-dir",
                          str(data_dir), "--tasks-file", str(tasks_file)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tasks_file}") and len(calls) == 1
