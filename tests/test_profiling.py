"""benchmarks.profiling: HLO instruction names sorted into phases and kinds, and a traced step's
op time split by them."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.profiling import op_kind, op_phase, profile_jax


@pytest.mark.parametrize("op_name, phase", [
    ("jit(step)/jit(main)/transpose(jvp(MultitaskBert))/encoder/dot_general", "backward"),
    ("jit(step)/jit(main)/jvp(MultitaskBert)/encoder/dot_general", "forward"),
    ("jit(step)/jit(main)/adamw/mul", "optimizer+other"), ("", "optimizer+other")])
def test_op_phase(op_name, phase):
    assert op_phase(op_name) == phase


@pytest.mark.parametrize("event, kind", [
    ("dot.12", "matmul"), ("custom-call.3", "matmul"), ("gemm_fusion.2", "matmul"),
    ("copy.4", "copy/transpose"), ("transpose.1", "copy/transpose"),
    ("all-reduce.7", "all-reduce"), ("broadcast.2", "broadcast (fill)"),
    ("wrapped_scatter", "scatter"), ("while.3", "while"),
    ("fusion.21", "elementwise/reduce fusions"), ("add", "elementwise/reduce fusions")])
def test_op_kind(event, kind):
    assert op_kind(event) == kind


class Runner:
    """A plain gradient step on w [64, 64] (what `profile_jax` needs of `timing.JaxTrainRunner`:
    `step`, `state`, `run`)."""

    def __init__(self):
        def loss(w, x):
            return jnp.sum(jnp.tanh(x @ w) ** 2)

        def step(w, x):
            value, grad = jax.value_and_grad(loss)(w, x)
            return w - 1e-3 * grad, value
        self.step = jax.jit(step)
        self.state = jnp.asarray(np.random.default_rng(0).normal(size=(64, 64)), jnp.float32)
        self.runs = 0

    def run(self, batch):
        self.state, value = self.step(self.state, batch)
        jax.block_until_ready(value)
        self.runs += 1


def test_profile_jax_splits_a_gradient_step_by_phase_and_kind():
    runner = Runner()
    x = jnp.asarray(np.random.default_rng(1).normal(size=(256, 64)), jnp.float32)
    res = profile_jax(runner, x, steps=2)
    assert runner.runs == 3  # one warm-up run, then the two traced
    total = res["op_seconds_per_step"]
    assert 0 < total and res["wall_seconds_per_step"] > 0
    assert set(res["by_phase"]) <= {"forward", "backward", "optimizer+other"}
    assert {"forward", "backward"} <= set(res["by_phase"])  # x @ w and its transpose
    for split in ("by_phase", "by_kind", "by_phase_and_kind"):
        assert sum(res[split].values()) == pytest.approx(total), split
    assert {key.split("/", 1)[0] for key in res["by_phase_and_kind"]} == set(res["by_phase"])
    assert {key.split("/", 1)[1] for key in res["by_phase_and_kind"]} == set(res["by_kind"])
    top = res["top_ops"]
    assert 0 < len(top) <= 12 and [t["seconds"] for t in top] == sorted(
        (t["seconds"] for t in top), reverse=True)
