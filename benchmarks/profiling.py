"""Where a compiled JAX train step's time goes: a jax.profiler trace split by phase and op kind
(`--profile`; PyTorch's counterpart is `TorchTrainRunner.profile`)."""
from __future__ import annotations

import collections
import re
import tempfile
import time
from pathlib import Path

import jax


def op_phase(op_name: str) -> str:
    """forward, backward or optimizer+other, from an HLO instruction's op_name metadata."""
    if "transpose(jvp(" in op_name:
        return "backward"
    if "jvp(" in op_name:
        return "forward"
    return "optimizer+other"


def op_kind(event: str) -> str:
    """A profiler event's kind of work, from its HLO instruction name."""
    base = re.sub(r"[.\d]+$", "", event)
    if base in ("dot", "custom-call") or base.endswith(("ynn_fusion", "xnn_fusion")) \
            or "onednn" in base or "gemm" in base or "cublas" in base:
        return "matmul"
    if base.startswith(("copy", "transpose")) or "transpose" in base:
        return "copy/transpose"
    if base.startswith("all-reduce"):
        return "all-reduce"
    if base in ("broadcast", "wrapped_broadcast"):
        return "broadcast (fill)"
    if base in ("while", "scatter", "wrapped_scatter"):
        return base.replace("wrapped_", "")
    return "elementwise/reduce fusions"


def profile_jax(runner, batch, steps: int = 3) -> dict:
    """Op time of the compiled JAX step of `runner` (a `timing.JaxTrainRunner`) from a
    jax.profiler trace, summed over threads and split by phase (from each HLO instruction's
    op_name: forward, backward, optimizer+other) and kind."""
    hlo = runner.step.lower(runner.state, batch).compile().as_text()
    op_names = {m.group(1): m.group(2) for m in re.finditer(
        r'%([\w.\-]+) = [^\n]*?metadata=\{op_name="([^"]*)"', hlo)}
    runner.run(batch)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        with jax.profiler.trace(folder):
            for _ in range(steps):
                runner.run(batch)
        wall = (time.perf_counter() - start) / steps
        path = next(Path(folder).rglob("*.xplane.pb"))
        data = jax.profiler.ProfileData.from_file(str(path))
    by_phase, by_kind, by_op = collections.Counter(), collections.Counter(), collections.Counter()
    by_phase_kind = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            if line.name == "python" or "XLA" not in line.name:
                continue
            for ev in line.events:
                if ev.name.startswith("ThunkExecutor") or "Await" in ev.name \
                        or ev.name not in op_names and not re.search(r"\.\d+$|^[a-z\-_]+$", ev.name):
                    continue
                secs = ev.duration_ns / 1e9 / steps
                phase, kind = op_phase(op_names.get(ev.name, "")), op_kind(ev.name)
                by_phase[phase] += secs
                by_kind[kind] += secs
                by_phase_kind[f"{phase}/{kind}"] += secs
                by_op[ev.name] += secs
    total = sum(by_phase.values())
    top = [{"op": name, "seconds": sec, "phase": op_phase(op_names.get(name, "")),
            "op_name": op_names.get(name, "")[-90:]} for name, sec in by_op.most_common(12)]
    return {"wall_seconds_per_step": wall, "op_seconds_per_step": total,
            "by_phase": dict(by_phase.most_common()), "by_kind": dict(by_kind.most_common()),
            "by_phase_and_kind": dict(by_phase_kind.most_common()),
            "top_ops": top}
