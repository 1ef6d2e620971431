"""bert_jax.outputs: every tool writes only into what it created. The guard itself, then per
tool (train.multitask, train.evaluate, train.ablation; compare, analyze and predict in their
own tests) that its outputs never land on a file it did not create, and `--resume` of a run
never rewrites what the run recorded nor trains on other data."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bert_jax.errors import OutputExistsError
from bert_jax.outputs import (OutputFile, check_new_run_folder, check_output_file,
                              check_output_folder)
from train import ablation, evaluate
from train.config import TrainConfig
from train.errors import TrainingError
from train.multitask import train_and_evaluate

MINE = OutputFile("tool --out", lambda head: head.startswith("# mine"), ("report.md",))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` and its bytes (the lock a training takes left out)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".train.lock"}


def test_output_file_rules(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_config.json").write_text("{}")
    data = tmp_path / "data"
    data.mkdir()
    (data / "sts-dev.csv").write_text("x")
    other = tmp_path / "other.txt"
    other.write_text("theirs")
    ours = tmp_path / "ours.md"
    ours.write_text("# mine\n")
    assert check_output_file(tmp_path / "new.md", MINE) == tmp_path / "new.md"
    assert check_output_file(ours, MINE) == ours          # its own earlier output
    assert check_output_file(run / "report.md", MINE)      # its job inside a run
    assert check_output_file(other, MINE, overwrite=True) == other
    refused = [(other, {}, "--overwrite"), (run / "train_config.json", {"overwrite": True},
                                            "inside a training run folder"),
               (run / "sub" / "report.md", {}, "inside a training run folder"),
               (data / "new.md", {}, "inside a CS224N data folder"),
               (tmp_path, {}, "is a folder"),
               (ours, {"overwrite": True, "protected": [tmp_path / "." / "ours.md"]},
                "its own input")]
    for path, kwargs, message in refused:
        with pytest.raises(OutputExistsError, match=message):
            check_output_file(path, MINE, **kwargs)


def test_folder_rules(tmp_path):
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "config.json").write_text("{}")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".train.lock").write_text("")
    (tmp_path / "empty").mkdir()
    for ok in ("new", "empty", "run"):
        check_new_run_folder(tmp_path / ok, resume=False)
    for bad, message in (("user", "is not a run folder"), ("run/inner", "inside a training run")):
        with pytest.raises(OutputExistsError, match=message):
            check_new_run_folder(tmp_path / bad, resume=False)
    never = lambda folder: False
    check_output_folder(tmp_path / "run" / "predictions", "t", recognise=never,
                        allowed_in_run=("predictions",))
    with pytest.raises(OutputExistsError, match="not an earlier output of t"):
        check_output_folder(tmp_path / "user", "t", recognise=never)


def test_training_never_writes_into_a_folder_that_is_not_a_run(tiny_model_dir, data_dir,
                                                                tmp_path):
    """--out U, where U holds the user's config.json, metrics.jsonl and vocab.txt: refused
    before anything is written."""
    user = tmp_path / "mine"
    user.mkdir()
    for name in ("config.json", "metrics.jsonl", "vocab.txt"):
        (user / name).write_text(f"the user's {name}\n")
    before = snapshot(user)
    cfg = TrainConfig(init=str(tiny_model_dir), epochs=1, max_steps=1, limit_train=8,
                      limit_eval=8, max_length=16, eval_batch_size=8, tensorboard=False)
    with pytest.raises(TrainingError, match="is not a run folder"):
        train_and_evaluate(cfg, user, data_dir=str(data_dir), progress=False)
    assert snapshot(user) == before and sorted(p.name for p in user.iterdir()) == sorted(before)


def copy_run(tiny_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("predictions", ".train.lock"))
    return run


@pytest.mark.slow
def test_resume_of_a_finished_run_keeps_its_dev_scores(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    before = json.loads((run / "summary.json").read_text())
    cfg = TrainConfig.from_json(run / "train_config.json")
    train_and_evaluate(cfg, run, resume=True, progress=False)
    after = json.loads((run / "summary.json").read_text())
    for key in ("sst_acc", "para_acc", "sts_r", "overall", "steps"):
        assert after[key] == before[key], key


@pytest.mark.slow
def test_resume_refuses_other_data_and_a_missing_train_config(tiny_run, data_dir, tmp_path):
    """Other sentences or labels under the same settings, or no train_config.json to check
    the settings against: refused, and the run folder is left as it was."""
    run = copy_run(tiny_run, tmp_path)
    cfg = TrainConfig.from_json(run / "train_config.json").replace(epochs=3)
    other = tmp_path / "data"
    shutil.copytree(data_dir, other, ignore=shutil.ignore_patterns("sst-train-phrases.csv"))
    lines = (other / "sts-train.csv").read_text(encoding="utf-8").split("\n")
    fields = lines[1].split("\t")
    fields[-1] = "0.0" if float(fields[-1]) > 1 else "5.0"  # another label in the first row
    lines[1] = "\t".join(fields)
    (other / "sts-train.csv").write_text("\n".join(lines), encoding="utf-8")
    before = snapshot(run)
    with pytest.raises(TrainingError, match="other training data"):
        train_and_evaluate(cfg, run, data_dir=str(other), resume=True, progress=False)
    assert snapshot(run) == before
    (run / "train_config.json").unlink()
    with pytest.raises(TrainingError, match="train_config.json: missing"):
        train_and_evaluate(cfg, run, resume=True, progress=False)


def test_evaluate_never_writes_into_a_folder_it_did_not_make(tiny_run, data_dir, tmp_path,
                                                              capsys):
    """--out the run folder itself, the data folder, or a folder of the user's: refused
    before any work, nothing in it changed."""
    user = tmp_path / "mine"
    user.mkdir()
    (user / "sst-dev-output.csv").write_text("the user's own file\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "sts-dev.csv").write_text("x\n")
    for out in (tiny_run, user, data, tiny_run / "best"):
        before = snapshot(out) if out.exists() else None
        code = evaluate.main([str(tiny_run), "--out", str(out), "--data-dir", str(data_dir),
                              "--limit", "4", "--no-progress"])
        assert code == 2 and str(out) in capsys.readouterr().err
        assert (snapshot(out) if out.exists() else None) == before


def test_ablation_never_writes_into_a_folder_it_did_not_make(tmp_path, capsys):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("the user's\n")
    assert ablation.main(["--out", str(user), "--presets", "baseline"]) == 2
    assert "not an earlier output of train.ablation" in capsys.readouterr().err
    assert sorted(p.name for p in user.iterdir()) == ["notes.txt"]


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A folder `tmp_path/ro` that `os.access` reports as not writable (a read-only file
    system, or one without permission: root ignores permission bits, so it is simulated)."""
    import os
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if (
        mode & os.W_OK and Path(p).absolute() == ro) else real(p, mode, *a, **k))
    return ro


def test_check_writable_folder(tmp_path, read_only):
    from bert_jax.errors import OutputWriteError
    from bert_jax.outputs import check_writable_folder
    check_writable_folder(tmp_path / "new" / "deeper", "--out")  # made later: fine
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(OutputWriteError, match=f"--out {a_file / 'x'}: {a_file} is a file, not "
                                               "a folder. Choose another --out$"):
        check_writable_folder(a_file / "x", "--out")
    with pytest.raises(OutputWriteError, match=f"--output f.csv: cannot write into {read_only} "
                                               r"\(a read-only file system"):
        check_writable_folder(read_only / "sub", "--output", "f.csv")


@pytest.mark.parametrize("tool", ["train.multitask", "train.evaluate", "bert_jax.predict"])
def test_a_read_only_output_is_one_line_before_any_work(tool, read_only, tiny_model_dir,
                                                        tiny_run, data_dir, tmp_path, capsys):
    from bert_jax import predict
    from train import multitask
    sentences = tmp_path / "in.txt"
    sentences.write_text("a fine film\n")
    out = read_only / "out"
    main, argv = {
        "train.multitask": (multitask.main, ["--init", str(tiny_model_dir), "--max-steps", "1",
                                             "--limit-train", "8", "--limit-eval", "8",
                                             "--max-length", "16", "--no-tensorboard",
                                             "--data-dir", str(data_dir), "--no-progress",
                                             "--out", str(out)]),
        "train.evaluate": (evaluate.main, [str(tiny_run), "--data-dir", str(data_dir),
                                           "--limit", "4", "--no-progress", "--out", str(out)]),
        "bert_jax.predict": (predict.main, [str(tiny_run), "--task", "sst", "--input",
                                            str(sentences), "--output", str(out)]),
    }[tool]
    assert main(argv) != 0
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: --out{'put' if tool == 'bert_jax.predict' else ''} {out}: "
                          f"cannot write into {read_only} (a read-only file system")
    assert list(read_only.iterdir()) == []
