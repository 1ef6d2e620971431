"""train.flags and what `python -m train.multitask` checks and says before and after the run:
the first log line (what differs from the preset), the refusal of an --out that holds a run
and of the CPU under --no-allow-cpu (as `make train-full` passes it), and the closing list
against the files a run leaves on disk."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import jax
import pytest

from train import multitask
from train.config import PRESETS
from train.errors import TrainingError
from train.flags import changed_settings, check_backend, check_new_run

ROOT = Path(__file__).resolve().parents[1]


def test_changed_settings_are_those_that_differ_from_the_preset():
    base = PRESETS["more-epochs"]
    cfg = base.replace(max_steps=600, head_lr=1e-3, keep_last=1)
    assert changed_settings(cfg, base) == {"max_steps": 600, "head_lr": 1e-3, "keep_last": 1}
    assert changed_settings(base, base) == {}


def test_the_cpu_is_refused_only_under_no_allow_cpu():
    check_backend(None, "cpu", "10 epochs")
    check_backend(True, "cpu", "10 epochs")
    check_backend(False, "gpu", "10 epochs")
    with pytest.raises(TrainingError, match=r"pass --allow-cpu .*make train-full ALLOW_CPU=1"):
        check_backend(False, "cpu", "10 epochs")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the refusal is the CPU's")
def test_train_full_on_the_cpu_stops_at_once_with_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert multitask.main(["--no-allow-cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: JAX runs on the CPU here (no usable GPU/TPU), where this "
                              "run (10 epochs) takes many hours: pass --allow-cpu")
    assert not [line for line in err if line.startswith("error")][:-1]
    assert not out.exists()  # nothing loaded, nothing written


def make_dry_run(*args: str) -> str:
    """The commands `make` would run (make -n), with the venv marked installed."""
    done = subprocess.run(["make", "-n", "--always-make", "-f", str(ROOT / "Makefile"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return " ".join(done.stdout.replace("\\\n", " ").split())


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
def test_make_train_full_asks_for_allow_cpu_and_make_train_keeps_one_state():
    assert "train.multitask --preset more-epochs --out checkpoints/more-epochs --no-allow-cpu" \
        in make_dry_run("train-full")
    assert "--allow-cpu" in make_dry_run("train-full", "ALLOW_CPU=1").split()
    train = make_dry_run("train")
    assert "--max-steps 600 --head-lr 1e-3 --keep-last 1 --out checkpoints/main" in train
    # Switching ACCEL: the install removes the other builds' plugins and the other markers.
    assert "rm -f .venv/.core-*" in train and "jax[-_]cuda" in train
    assert "pip uninstall" in train and "-c constraints.txt" in train


def test_an_out_that_holds_a_run_is_refused_before_any_work(tiny_run, tmp_path, capsys):
    with pytest.raises(TrainingError, match=r"already holds a run \(its last/ checkpoint is at "
                                            r"step 4\): pass --resume"):
        check_new_run(tiny_run, resume=False)
    check_new_run(tiny_run, resume=True)  # continuing it is what --resume is for
    check_new_run(tmp_path / "new", resume=False)
    assert not (tmp_path / "new").exists()
    assert multitask.main(["--out", str(tiny_run), "--init", "/nonexistent"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {tiny_run} already holds a run")
    assert "make train ARGS=--resume" in err[-1] and "OUT=checkpoints/NAME" in err[-1]


def test_first_line_says_what_differs_and_the_closing_list_is_the_folder(tiny_run, tmp_path,
                                                                          capsys, monkeypatch):
    """The run is a real one's folder (the session's tiny run, copied): every file and folder
    it holds is listed, folders as folders; the lock file is not an output."""
    out = tmp_path / "run"

    def copy_of_a_real_run(cfg, out_dir, **kwargs):
        shutil.copytree(tiny_run, out_dir)
        (Path(out_dir) / ".train.lock").touch()
        return {**json.loads((tiny_run / "summary.json").read_text()), "seconds": 1.0}
    monkeypatch.setattr(multitask, "train_and_evaluate", copy_of_a_real_run)
    assert multitask.main(["--preset", "concat", "--max-steps", "7", "--out", str(out),
                           "--no-progress"]) == 0
    printed = capsys.readouterr()
    first = next(line for line in printed.err.splitlines() if "run " in line)
    assert first.endswith(f"run {out}: concat with {{\"max_steps\": 7}} (every setting: "
                          f"{out / 'train_config.json'})")
    lines = printed.out.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("wrote "))
    listed = [line.strip() for line in lines[start + 1:]]
    on_disk = [p for p in out.iterdir() if p.name != ".train.lock"]
    assert sorted(listed) == sorted(f"{p}/" if p.is_dir() else str(p) for p in on_disk)
    files = sum(p.is_file() for p in on_disk)
    folders = len(on_disk) - files
    assert lines[start] == f"wrote {files} files and {folders} folders:"
    assert {"config.json", "vocab.txt"} <= {p.name for p in on_disk}


def test_resume_finds_the_runs_own_tasks_without_the_task_file(tmp_path):
    """--resume without --tasks-file takes the definitions and the tasks trained from the
    run's train_config.json; --tasks-file adds its tasks to the preset's when --tasks is not
    given."""
    from bert_jax.tasks import Task
    from train.flags import base_config, build_parser, config_from_args
    (tmp_path / "mood.csv").write_text("id,text,mood\na,fine,good\nb,poor,bad\n")
    (tmp_path / "tasks.toml").write_text(
        '[mood]\nkind = "classification"\ntrain = "mood.csv"\ndev = "mood.csv"\n'
        'text = "text"\nlabel = "mood"\nclasses = ["bad", "good"]\n')

    def parse(argv):
        base, name = base_config(argv)
        return config_from_args(build_parser(base, name).parse_args(argv), base, tmp_path / "run")

    first = parse(["--preset", "concat", "--tasks-file", str(tmp_path / "tasks.toml")])
    assert first.tasks == ("sst", "para", "sts", "mood")
    assert [t.name for t in first.user_tasks] == ["mood"]
    assert isinstance(first.user_tasks[0], Task)
    assert first.user_tasks[0].file("train") == str(tmp_path / "mood.csv")
    (tmp_path / "run").mkdir()
    first.to_json(tmp_path / "run" / "train_config.json")
    (tmp_path / "tasks.toml").unlink()  # the file is gone: the run's record is enough
    resumed = parse(["--preset", "concat", "--resume"])
    assert resumed.user_tasks == first.user_tasks and resumed.tasks == first.tasks
    assert parse(["--preset", "concat"]).user_tasks == ()  # a new run: no tasks of its own
