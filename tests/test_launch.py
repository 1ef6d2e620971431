"""train/launch.py: the launch a process's environment describes, and JAX's coordination
service hosted in a child process (`ServiceProcess`). The two-process runs that rely on it,
process 0's death included, are in test_distributed.py."""
from __future__ import annotations

import socket

import pytest

from bert_jax.errors import ConfigError
from train.launch import Launch, ServiceProcess, launch_from_env


def test_no_launch_variables_means_one_process():
    assert launch_from_env({}) is None
    assert launch_from_env({"SLURM_NTASKS": "1", "SLURM_PROCID": "0",
                            "SLURM_STEP_NODELIST": "n1"}) is None  # a one-task job
    off = {"JAX_COORDINATOR_ADDRESS": "h:1", "BERT_JAX_DISTRIBUTED": "off"}
    assert launch_from_env(off) is None


def test_the_readme_launch_is_read_in_full():
    env = {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:12355", "JAX_NUM_PROCESSES": "2",
           "JAX_PROCESS_ID": "1", "BERT_JAX_HEARTBEAT_TIMEOUT": "7"}
    launch = launch_from_env(env)
    assert launch == Launch("127.0.0.1:12355", 2, 1, "JAX_* variables", heartbeat_timeout=7)
    assert launch.init_timeout == 300
    # Under srun, SLURM gives the count and the id; SLURM alone gives the coordinator too.
    slurm = {"SLURM_NTASKS": "8", "SLURM_PROCID": "3", "SLURM_STEP_NODELIST": "node[1-2]"}
    assert launch_from_env({**slurm, "JAX_COORDINATOR_ADDRESS": "node1:1234"}) == Launch(
        "node1:1234", 8, 3, "JAX_* variables")
    assert launch_from_env(slurm) == Launch(None, 8, 3, "SLURM")
    assert launch_from_env({"BERT_JAX_DISTRIBUTED": "auto"}) == Launch(
        None, None, None, "BERT_JAX_DISTRIBUTED=auto")


@pytest.mark.parametrize("env, message", [
    # The launch without JAX_NUM_PROCESSES ended in "Number of processes must be defined".
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1", "JAX_PROCESS_ID": "0"},
     "JAX_COORDINATOR_ADDRESS is set but JAX_NUM_PROCESSES is not"),
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1", "JAX_NUM_PROCESSES": "2"},
     "but JAX_PROCESS_ID is not"),
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
     "process ids run from 0 to 1"),
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1", "JAX_NUM_PROCESSES": "two",
      "JAX_PROCESS_ID": "0"}, "JAX_NUM_PROCESSES='two': expected a whole number"),
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1"}, "expected HOST:PORT"),
    ({"BERT_JAX_DISTRIBUTED": "maybe"}, "expected 'auto' or 'off'"),
    ({"BERT_JAX_DISTRIBUTED": "auto", "BERT_JAX_HEARTBEAT_TIMEOUT": "0"},
     "BERT_JAX_HEARTBEAT_TIMEOUT='0': expected a whole number of at least 2"),
])
def test_an_incomplete_launch_is_refused_naming_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        launch_from_env(env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_service_process_serves_until_shutdown():
    """JAX's service in a child: it accepts connections on its port until `shutdown()` (JAX's
    own call at a normal exit), then the child is gone."""
    port = free_port()
    service = ServiceProcess(f"127.0.0.1:{port}", 2, heartbeat_timeout=20, shutdown_timeout=5,
                             recoverable=False)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass
        assert service.proc.poll() is None
    finally:
        service.shutdown()
    assert service.proc.poll() is not None
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_a_service_that_cannot_start_is_named():
    """A port another program holds: an error naming the address, not a hang."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(RuntimeError, match=f"did not start on {address}"):
            ServiceProcess(address, 2, heartbeat_timeout=20, shutdown_timeout=5)
