"""Multi-process runs (train/distributed.py): real `python -m train.multitask` processes on this
machine, launched as the README says (JAX_COORDINATOR_ADDRESS on 127.0.0.1 and a free port,
JAX_NUM_PROCESSES, JAX_PROCESS_ID), one CPU device each, gradients exchanged through gloo;
compared with one process holding the same number of devices. Every process is started with a
timeout and killed in a `finally`; the processes share a compilation cache (each run compiles
the same programs)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from bert_jax.checkpoints import RunCheckpoints
from train import distributed
from train.distributed import describe_differences

ROOT = Path(__file__).resolve().parents[1]
HEARTBEAT = 5  # BERT_JAX_HEARTBEAT_TIMEOUT of the test runs: a dead peer is noticed in seconds
RUN_TIMEOUT = 420  # seconds one process may run (a loaded machine); the tests stay far below
STEPS = 16  # 16 steps per epoch on 128 examples per task; a checkpoint every 2 steps
# (long enough that a signal sent after the checkpoint of step 2 lands before the last step,
# even on a loaded machine: JAX acts on a SIGTERM at the next step)


# --------------------------------------------------------------------------- in one process

def test_differences_name_the_setting_and_each_process():
    same = {"--lr": ("a", "0.001"), "sst train data": ("d", "64 examples from x.csv")}
    other = {**same, "--lr": ("b", "0.002")}
    assert describe_differences([same, same, same]) == []
    assert describe_differences([same, other, same]) == [
        "--lr (process 0: 0.001; process 1: 0.002)"]
    missing = {"--lr": same["--lr"]}
    assert describe_differences([same, missing]) == [
        "sst train data (process 0: 64 examples from x.csv; process 1: absent)"]


def test_one_process_runs_as_before():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    predict = lambda params, batch: batch  # noqa: E731
    assert distributed.gather_outputs(predict, mesh) is predict
    tree = {"w": np.ones(3)}
    assert distributed.replicate(tree, mesh) is tree
    assert distributed.stop_signal(1) is None and not distributed.handles_signals()
    distributed.check_same_run(None, None, None)  # nothing to compare with
    with distributed.guard():
        pass


# --------------------------------------------------------------------------- real processes

@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("jax_compilation_cache")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_args(tiny_model_dir, data_dir, out, *extra) -> list[str]:
    """The tiny model on 128 examples per task, dropout on (the preset's 0.1), STEPS steps,
    checkpoints every 2 steps, dev scores on 16 examples per task at the end."""
    return ["--no-progress", "--preset", "concat", "--init", str(tiny_model_dir),
            "--data-dir", str(data_dir), "--out", str(out), "--max-length", "32",
            "--num-buckets", "1", "--limit-train", "128", "--limit-eval", "16",
            "--eval-batch-size", "16", "--epochs", "1", "--max-steps", str(STEPS),
            "--save-every", "2", "--log-every", "2", "--lr", "1e-3", *extra]


class Processes:
    """`python -m train.multitask` processes writing to log files; every one still running when
    the block ends (a failed assertion included) is killed."""

    def __init__(self, cache: Path, logs: Path):
        self.cache, self.logs, self.procs, self.files = cache, logs, [], []

    def env(self, devices: int, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM_"))}
        env.update(PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu",
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                   JAX_COMPILATION_CACHE_DIR=str(self.cache),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
                   BERT_JAX_HEARTBEAT_TIMEOUT=str(HEARTBEAT), BERT_JAX_INIT_TIMEOUT="120", **extra)
        return env

    def start(self, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"process{len(self.procs)}.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "train.multitask", *args], cwd=ROOT,
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        self.files.append(log)
        return proc

    def start_two(self, args_of) -> list[subprocess.Popen]:
        """Two processes of one run, one CPU device each, as the README launches them."""
        port = free_port()
        return [self.start(args_of(i), self.env(1, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                                                 JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)))
                for i in range(2)]

    def output(self, proc) -> str:
        return Path(self.files[self.procs.index(proc)].name).read_text(errors="replace")

    def wait(self, procs, timeout=RUN_TIMEOUT) -> list[int]:
        deadline = time.monotonic() + timeout
        return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=60)
        for log in self.files:
            log.close()


def final_state(run_dir: Path) -> tuple[int, dict]:
    """(step, params) of the newest checkpoint in `run_dir/last`, read on this process's one
    device whatever devices wrote it."""
    ckpts = RunCheckpoints(run_dir, read_only=True)
    try:
        step = ckpts.latest_step()
        local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        restored = ckpts.last.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(None, fallback_sharding=local)))
    finally:
        ckpts.close()
    return step, jax.device_get(restored.state["params"])


def max_difference(a, b) -> float:
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a, b)))


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def wait_for(condition, procs, timeout=RUN_TIMEOUT, what="the condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert all(p.poll() is None for p in procs), f"a process ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory, tiny_model_dir, data_dir, compile_cache) -> Path:
    """The reference: the same run in one process holding two CPU devices."""
    out = tmp_path_factory.mktemp("one_process") / "run"
    with Processes(compile_cache, out.parent / "logs") as procs:
        proc = procs.start(run_args(tiny_model_dir, data_dir, out), procs.env(2))
        assert procs.wait([proc]) == [0], procs.output(proc)
    return out


@pytest.mark.slow
def test_two_processes_train_as_one_process_with_two_devices(
        one_process_run, tiny_model_dir, data_dir, compile_cache, tmp_path):
    out = tmp_path / "run"
    with Processes(compile_cache, tmp_path / "logs") as procs:
        pair = procs.start_two(lambda i: run_args(tiny_model_dir, data_dir, out))
        codes = procs.wait(pair)
        outputs = [procs.output(p) for p in pair]
    assert codes == [0, 0], outputs
    assert "process 1 of 2: 1 local devices of 2" in outputs[1]
    assert "all 2 processes have the same settings, data and weights" in outputs[0]
    step, params = final_state(out)
    ref_step, ref_params = final_state(one_process_run)
    assert step == ref_step == STEPS
    assert max_difference(params, ref_params) <= 1e-5
    # Dev scores, losses: the same, written once (by process 0).
    dev, ref_dev = read_lines(out / "metrics.jsonl"), read_lines(one_process_run / "metrics.jsonl")
    assert [r["step"] for r in dev] == [r["step"] for r in ref_dev] == [STEPS]
    for key in ("sst_acc", "para_acc", "sts_r", "overall"):
        assert dev[0][key] == pytest.approx(ref_dev[0][key], abs=1e-5)
    losses = read_lines(out / "train_log.jsonl")
    assert [r["step"] for r in losses] == list(range(2, STEPS + 1, 2))
    for ours, ref in zip(losses, read_lines(one_process_run / "train_log.jsonl")):
        assert ours["loss"] == pytest.approx(ref["loss"], abs=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["overall"] == pytest.approx(ref_dev[0]["overall"], abs=1e-5)
    assert (out / "best").is_dir() and (out / "train_config.json").is_file()


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_one_step_and_resume_matches(
        one_process_run, tiny_model_dir, data_dir, compile_cache, tmp_path):
    """A scheduler's SIGTERM reaches one process: both stop after the same step with a
    checkpoint (JAX's preemption sync), exit 143; both restarted with --resume reach the
    parameters of the uninterrupted run."""
    out = tmp_path / "run"
    with Processes(compile_cache, tmp_path / "logs") as procs:
        pair = procs.start_two(lambda i: run_args(tiny_model_dir, data_dir, out))
        wait_for(lambda: (out / "last" / "2").is_dir(), pair, what="the checkpoint of step 2")
        pair[1].send_signal(signal.SIGTERM)
        codes = procs.wait(pair)
        outputs = [procs.output(p) for p in pair]
        assert codes == [128 + signal.SIGTERM] * 2, outputs
        stopped = [o.split("stopped by SIGTERM at step ")[1].split(";")[0] for o in outputs]
        assert stopped[0] == stopped[1] and 2 <= int(stopped[0]) < STEPS, stopped
        assert RunCheckpoints(out).latest_step() == int(stopped[0])

        resumed = procs.start_two(lambda i: run_args(tiny_model_dir, data_dir, out, "--resume"))
        codes = procs.wait(resumed)
        assert codes == [0, 0], [procs.output(p) for p in resumed]
    step, params = final_state(out)
    assert step == STEPS
    assert max_difference(params, final_state(one_process_run)[1]) <= 1e-5
    # Each step logged once: the stop flushed its losses, the resumed run went on after it.
    logged = [r["step"] for r in read_lines(out / "train_log.jsonl")]
    k = int(stopped[0])  # logged every 2 steps, at the stop, every 2 after it, at the end
    assert logged == sorted(set(range(2, k + 1, 2)) | {k} | set(range(k + 2, STEPS, 2))
                            | {STEPS}), logged


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0])
def test_a_killed_process_ends_the_other_in_bounded_time(
        victim, tiny_model_dir, data_dir, compile_cache, tmp_path):
    """SIGKILL one process as training starts: the other says so in one error line naming it
    (exit 2) within the heartbeat timeout, never hangs. Process 0 too: the coordination service
    it starts lives in its child process (`ServiceProcess`), which outlives it; were the service
    inside process 0, JAX would abort the survivor with a stack trace (exit 134)."""
    out = tmp_path / "run"
    with Processes(compile_cache, tmp_path / "logs") as procs:
        pair = procs.start_two(lambda i: run_args(tiny_model_dir, data_dir, out, "--max-steps",
                                                  "1000", "--epochs", "200"))
        wait_for(lambda: all("train steps:" in procs.output(p) for p in pair), pair,
                 what="the training loop")
        pair[victim].kill()
        killed = time.monotonic()
        survivor = pair[1 - victim]
        code = survivor.wait(timeout=HEARTBEAT + 60)
        took = time.monotonic() - killed
        output = procs.output(survivor)
    assert took <= HEARTBEAT + 30, (took, output)
    assert code == 2, output
    errors = error_lines(output)
    assert len(errors) == 1, output
    assert f"process {victim} of this 2-process run gave no sign of life" in errors[0], errors
    assert "Traceback" not in output and "Check failure" not in output, output


@pytest.mark.slow
def test_processes_with_other_settings_or_data_are_refused_at_start(
        tiny_model_dir, data_dir, compile_cache, tmp_path):
    out = tmp_path / "run"
    with Processes(compile_cache, tmp_path / "logs") as procs:
        pair = procs.start_two(lambda i: run_args(tiny_model_dir, data_dir, out, *(
            ["--lr", "2e-3", "--limit-train", "136"] if i == 1 else [])))
        codes = procs.wait(pair, timeout=240)
        outputs = [procs.output(p) for p in pair]
    assert codes == [2, 2], outputs
    for output in outputs:
        errors = error_lines(output)
        assert len(errors) == 1, output
        assert "the processes of this multi-process run differ in" in errors[0]
        assert "--lr (process 0: 0.001; process 1: 0.002)" in errors[0]
        assert "--limit-train (process 0: 128; process 1: 136)" in errors[0]
        assert "sst train data (process 0: 128 examples from " in errors[0]
        assert "Traceback" not in output
    assert not (out / "last").exists()  # refused before any step


# --------------------------------------------------------------------------- joining a run

# A process that joins a run as train.multitask's main does first (a BertJaxError: one error
# line, exit 2), then waits for the run to end.
JOIN = """
import sys, time
from bert_jax.errors import BertJaxError
from train import distributed
try:
    distributed.initialize()
except BertJaxError as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
print("joined", flush=True)
time.sleep(60)
"""


def start_joining(port: int, count: str, pid: int, tmp_path: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM_"))}
    env.update(JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
               JAX_NUM_PROCESSES=count, JAX_PROCESS_ID=str(pid), BERT_JAX_INIT_TIMEOUT="8",
               BERT_JAX_HEARTBEAT_TIMEOUT=str(HEARTBEAT), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-c", JOIN], cwd=ROOT, env=env, text=True,
                            stdout=open(tmp_path / f"process{pid}.log", "w"),
                            stderr=subprocess.STDOUT)


@pytest.mark.slow
@pytest.mark.parametrize("alone", [0, 1])
def test_a_peer_that_never_starts_is_one_line_not_a_stack_trace(alone, tmp_path):
    """One process of a two-process run started alone: JAX's deadline for every process to
    join would abort it (a C++ stack trace, exit 134); it ends with one error line, exit 2."""
    proc = start_joining(free_port(), "2", alone, tmp_path)
    try:
        assert proc.wait(timeout=90) == 2
    finally:
        proc.kill()
    output = (tmp_path / f"process{alone}.log").read_text(errors="replace")
    assert error_lines(output) == [line for line in output.splitlines() if line.strip()], output
    assert "did not all join within 8 s" in output and "JAX_NUM_PROCESSES" in output


@pytest.mark.slow
def test_processes_started_with_other_process_counts_both_stop(tmp_path):
    """Process 0 started for 2 processes, process 1 for 3: process 1 joins process 0's run of 2
    all the same. Both stop with one line naming JAX_NUM_PROCESSES, exit 2 (both exited 0)."""
    port = free_port()
    procs = [start_joining(port, count, pid, tmp_path) for pid, count in ((0, "2"), (1, "3"))]
    try:
        codes = [p.wait(timeout=90) for p in procs]
    finally:
        for p in procs:
            p.kill()
    outputs = [(tmp_path / f"process{pid}.log").read_text(errors="replace") for pid in (0, 1)]
    assert codes == [2, 2], outputs
    for output in outputs:
        (error,) = error_lines(output)
        assert ("started for 3 processes (from JAX_* variables) but joined a run of 2" in error
                and "Start every process with the same JAX_NUM_PROCESSES" in error), output
        assert "Traceback" not in output and "Check failure" not in output
