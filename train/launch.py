"""How a process joins a multi-process run: the launch its environment describes
(`launch_from_env`: JAX_* variables, SLURM, JAX's own detection) and, for process 0, JAX's
coordination service hosted in a child process (`ServiceProcess`).

JAX starts the coordination service inside process 0. Were it to die with process 0, the
others' error polling would abort them at once with JAX's fatal log (a C++ stack trace, exit
134; that callback cannot be replaced from Python in JAX 0.10). Hosted in a child that outlives
process 0 by JAX's heartbeat timeout plus 30 s, the service lets the others' watchdogs
(`train.distributed`) report process 0's death in one line, like any other process's.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import select
import subprocess
import sys
from typing import Mapping

from jax._src import distributed as jax_distributed  # JAX's State builds the service through it

from bert_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Launch:
    """How this process joins the run; None fields are left to JAX's cluster detection."""
    coordinator: str | None
    num_processes: int | None
    process_id: int | None
    source: str
    heartbeat_timeout: int = 60
    init_timeout: int = 300
    shutdown_timeout: int = 300


def _int_env(env: Mapping[str, str], name: str, default: int | None = None,
             minimum: int = 0) -> int | None:
    text = env.get(name, "").strip()
    if text and not (text.lstrip("-").isdigit() and int(text) >= minimum):
        raise ConfigError(f"{name}={text!r}: expected a whole number of at least {minimum}")
    return int(text) if text else default


def launch_from_env(env: Mapping[str, str] = os.environ) -> Launch | None:
    """The launch `env` describes (None: this process runs alone), in this order:
    JAX_COORDINATOR_ADDRESS (HOST:PORT of process 0) with JAX_NUM_PROCESSES and JAX_PROCESS_ID
    (else SLURM_NTASKS / SLURM_PROCID); inside `srun` with SLURM_NTASKS > 1, SLURM alone (JAX
    picks the step's first node); BERT_JAX_DISTRIBUTED=auto: JAX's detection (TPU pod slices,
    Open MPI); =off: alone. Timeouts (s): BERT_JAX_{HEARTBEAT,INIT,SHUTDOWN}_TIMEOUT."""
    mode = env.get("BERT_JAX_DISTRIBUTED", "").strip().lower()
    if mode in ("0", "off", "no", "false"):
        return None
    timeouts = dict(heartbeat_timeout=_int_env(env, "BERT_JAX_HEARTBEAT_TIMEOUT", 60, 2),
                    init_timeout=_int_env(env, "BERT_JAX_INIT_TIMEOUT", 300, 1),
                    shutdown_timeout=_int_env(env, "BERT_JAX_SHUTDOWN_TIMEOUT", 300, 1))
    address = env.get("JAX_COORDINATOR_ADDRESS", "").strip()
    if address:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"JAX_COORDINATOR_ADDRESS={address!r}: expected HOST:PORT of "
                              "process 0 (e.g. 10.0.0.1:12355)")
        names = [a if env.get(a) else b for a, b in (("JAX_NUM_PROCESSES", "SLURM_NTASKS"),
                                                      ("JAX_PROCESS_ID", "SLURM_PROCID"))]
        count, pid = _int_env(env, names[0], None, 1), _int_env(env, names[1], None, 0)
        for name, value in (("JAX_NUM_PROCESSES", count), ("JAX_PROCESS_ID", pid)):
            if value is None:
                raise ConfigError(
                    f"JAX_COORDINATOR_ADDRESS is set but {name} is not: start every process "
                    "with the same JAX_COORDINATOR_ADDRESS and JAX_NUM_PROCESSES (N) and its own "
                    "JAX_PROCESS_ID (0 to N-1)")
        if pid >= count:
            raise ConfigError(f"{names[1]}={pid} with {names[0]}={count}: process ids run from "
                              f"0 to {count - 1}")
        return Launch(address, count, pid, "JAX_* variables", **timeouts)
    slurm_count = _int_env(env, "SLURM_NTASKS", None, 1)
    if (slurm_count or 0) > 1 and env.get("SLURM_PROCID") and env.get("SLURM_STEP_NODELIST"):
        return Launch(None, slurm_count, _int_env(env, "SLURM_PROCID"), "SLURM", **timeouts)
    if mode in ("auto", "1", "on", "yes", "true"):
        return Launch(None, None, None, "BERT_JAX_DISTRIBUTED=auto", **timeouts)
    if mode:
        raise ConfigError(f"BERT_JAX_DISTRIBUTED={mode!r}: expected 'auto' or 'off'")
    return None


# Run by `ServiceProcess` in a child of process 0. Deaf to SIGINT and SIGTERM (a terminal's
# Ctrl-C, a scheduler signalling every process of a job: the run stops through the service);
# ends on "shutdown" from process 0's normal exit, or `linger` seconds after process 0 died.
_SERVICE_HOST = """
import json, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
from jax._src.lib import _jax
spec = json.loads(sys.argv[1])
try:
    service = _jax.get_distributed_runtime_service(*spec["args"], **spec["kwargs"])
except Exception as err:
    print("error", (str(err).strip().splitlines() or [type(err).__name__])[0], flush=True)
    sys.exit(1)
print("ready", flush=True)
if sys.stdin.readline().strip() != "shutdown":
    time.sleep(spec["linger"])
service.shutdown()
"""


class ServiceProcess:
    """JAX's coordination service in a child process: what `jax.distributed.initialize` builds
    in process 0 (the same arguments), so that process 0's death leaves it running for the
    others' watchdogs (`linger` s). `shutdown()` is JAX's own call at a normal exit."""

    def __init__(self, *args, **kwargs):
        linger = int(kwargs.get("heartbeat_timeout") or 100) + 30
        spec = json.dumps({"args": list(args), "kwargs": kwargs, "linger": linger})
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVICE_HOST, spec],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], 120)
        line = self.proc.stdout.readline().strip() if ready else "error: no answer in 120 s"
        if line != "ready":
            self.proc.kill()
            raise RuntimeError(f"the coordination service did not start on {args[0]}: "
                               f"{line.removeprefix('error').strip() or 'it exited'}")

    def shutdown(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.write("shutdown\n")
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@contextlib.contextmanager
def service_in_child_process():
    """While JAX initializes: process 0 builds its coordination service as a `ServiceProcess`."""
    real = jax_distributed._jax.get_distributed_runtime_service
    jax_distributed._jax.get_distributed_runtime_service = ServiceProcess
    try:
        yield
    finally:
        jax_distributed._jax.get_distributed_runtime_service = real
