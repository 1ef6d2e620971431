"""The report's seven presets (`train.config.PRESETS`) train as they did before tasks became data.

`fixtures/preset_reference.json` holds, for each preset, the per-step losses, gradient norms and
learning rates, the dev scores and a summary of every parameter leaf after 6 steps (a tiny
encoder, 16 examples per task: `fixtures/make_preset_reference.py` says what exactly), as
written by commit b6f7f0e, the code before tasks became data. This test runs the same script
against the code under test (the `train` and `bert_jax` that pytest imports, on the CPU) and
compares with these tolerances:

- losses, gradient norms, learning rates: relative 1e-5, absolute 1e-6, at every step;
- parameters: the same leaf paths and shapes, and per leaf a float64 sum and sum of squares
  within relative 1e-5 (a sum relative to sqrt(n * sum of squares), which bounds the sum of
  the n absolute values: a leaf whose values sum to about 0 is held to its values' scale);
- dev scores (accuracies, Pearson r, overall): absolute 1e-6 at every evaluation.

Why not bit-for-bit: a loss built from task definitions may be traced in another order (a sum
of the tasks' losses, a head applied through a lookup), and XLA may then reorder a float32 sum,
which moves a result by a few units in the last place (about 1e-7 relative). Why no looser:
a real change (another data order or sample, another initialisation of a head, another loss,
head, pooling or learning rate) moves the losses and parameters by 1e-3 or more after one step
at the learning rate of 1e-3 these runs use.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bert_jax
import train
from train.config import PRESETS

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SCRIPT = FIXTURES / "make_preset_reference.py"
REFERENCE = json.loads((FIXTURES / "preset_reference.json").read_text())
PRESET_NAMES = ("baseline", "multi-dataset", "cosine", "mean-pooling", "multitask", "concat",
                "more-epochs")
LOSS_RTOL, LOSS_ATOL = 1e-5, 1e-6  # also gradient norms and learning rates
PARAM_RTOL = 1e-5
SCORE_ATOL = 1e-6


def close(got: float, want: float, rtol: float, atol: float = 0.0) -> bool:
    return math.isclose(got, want, rel_tol=rtol, abs_tol=atol)


def step_log_differences(want: list[dict], got: list[dict]) -> list[str]:
    """What differs between two train_log.jsonl record lists (losses, grad_norm, lr)."""
    if [r["step"] for r in want] != [r["step"] for r in got]:
        return [f"logged steps {[r['step'] for r in got]}, before {[r['step'] for r in want]}"]
    problems = []
    for w, g in zip(want, got):
        keys = {k for k in w if k.startswith("loss")} | {"grad_norm", "lr"}
        got_losses = {k for k in g if k.startswith("loss")}
        if got_losses != {k for k in w if k.startswith("loss")}:
            problems.append(f"step {w['step']}: losses {sorted(got_losses)}, before "
                            f"{sorted(k for k in w if k.startswith('loss'))}")
            continue
        problems += [f"step {w['step']}: {k} {g.get(k)}, before {w[k]}" for k in sorted(keys)
                     if k in w and not (k in g and close(g[k], w[k], LOSS_RTOL, LOSS_ATOL))]
    return problems


def param_differences(want: list[dict], got: list[dict]) -> list[str]:
    """What differs between two parameter summaries (path, shape, sum, sum of squares)."""
    shapes = {r["path"]: r["shape"] for r in want}
    got_shapes = {r["path"]: r["shape"] for r in got}
    if shapes != got_shapes:
        return [f"parameter {p}: shape {got_shapes.get(p)}, before {shapes.get(p)}"
                for p in sorted(set(shapes) | set(got_shapes))
                if shapes.get(p) != got_shapes.get(p)]
    got_leaves = {r["path"]: r for r in got}
    problems = []
    for w in want:
        g = got_leaves[w["path"]]
        scale = math.sqrt(math.prod(w["shape"]) * w["sumsq"])  # >= the sum of |values|
        if abs(g["sum"] - w["sum"]) > PARAM_RTOL * scale:
            problems.append(f"{w['path']}: sum {g['sum']!r}, before {w['sum']!r}")
        if not close(g["sumsq"], w["sumsq"], PARAM_RTOL):
            problems.append(f"{w['path']}: sum of squares {g['sumsq']!r}, before {w['sumsq']!r}")
    return problems


def score_differences(want: list[dict], got: list[dict]) -> list[str]:
    """What differs between two metrics.jsonl record lists (when, and every dev score)."""
    if [(r["step"], r.get("epoch")) for r in want] != [(r["step"], r.get("epoch")) for r in got]:
        return [f"evaluations at (step, epoch) {[(r['step'], r.get('epoch')) for r in got]}, "
                f"before {[(r['step'], r.get('epoch')) for r in want]}"]
    return [f"step {w['step']}: {k} {g.get(k)}, before {v}" for w, g in zip(want, got)
            for k, v in w.items() if isinstance(v, float)
            and not (isinstance(g.get(k), float) and close(g[k], v, 0.0, SCORE_ATOL))]


def code_roots() -> list[str]:
    """The folders the tested `train` and `bert_jax` packages are imported from."""
    return list(dict.fromkeys(str(Path(package.__file__).resolve().parents[1])
                              for package in (train, bert_jax)))


@pytest.fixture(scope="module")
def current(tmp_path_factory, data_dir) -> dict:
    """The script's record of the seven presets, trained by the code under test on the CPU."""
    out = tmp_path_factory.mktemp("presets") / "current.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        code_roots() + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    done = subprocess.run([sys.executable, str(SCRIPT), "--data-dir", str(data_dir), "--out",
                           str(out)], env=env, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-5000:]
    return json.loads(out.read_text())


def test_the_reference_covers_the_seven_presets_and_the_script_settings():
    assert sorted(REFERENCE["presets"]) == sorted(PRESET_NAMES)
    assert set(PRESET_NAMES) <= set(PRESETS)
    for name, run in REFERENCE["presets"].items():
        assert run["steps"] == run["checkpoint_step"] == REFERENCE["overrides"]["max_steps"]
        assert [r["step"] for r in run["train_log"]] == list(range(1, run["steps"] + 1)), name


@pytest.mark.slow
@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_trains_as_before_tasks_became_data(name, current):
    assert current["overrides"] == REFERENCE["overrides"]
    want, got = REFERENCE["presets"][name], current["presets"][name]
    assert (got["steps"], got["checkpoint_step"]) == (want["steps"], want["checkpoint_step"])
    problems = (step_log_differences(want["train_log"], got["train_log"])
                + param_differences(want["params"], got["params"])
                + score_differences(want["metrics"], got["metrics"]))
    assert not problems, f"{name}: {len(problems)} differences:\n" + "\n".join(problems[:20])
