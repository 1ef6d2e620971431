"""Multi-process runs: one `python -m train.multitask` process per host (or GPU), as one run.

`initialize()` reads the launch from the environment (`launch_from_env`) and calls
`jax.distributed.initialize` with explicit arguments, gloo CPU collectives and timeouts; a run
whose processes do not all join within BERT_JAX_INIT_TIMEOUT, or a process started with another
JAX_NUM_PROCESSES than process 0, ends with one `error:` line (not JAX's abort).
`check_same_run` compares digests of every process's settings, data, vocabulary and initial
weights and refuses a difference before any step. Failures end every process with one `error:`
line, never a hang: a watchdog thread keeps a sign of life in JAX's coordination service and
watches the others'; a process that fails says so there (`guard()`), one that dies goes silent
(BERT_JAX_HEARTBEAT_TIMEOUT, default 60 s; JAX's own, later heartbeat verdict is a backstop
that aborts with a stack trace). SIGTERM goes to JAX's preemption service: every process stops
after the same step (`stop_signal`), with a checkpoint.

Process 0's death is reported like any other's: JAX's coordination service, which it starts,
lives in a child process that outlives it (`train.launch.ServiceProcess`).
"""
from __future__ import annotations

import atexit
import contextlib
import hashlib
import itertools
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Mapping

import jax
import numpy as np
from jax._src import distributed as jax_distributed  # the coordination client (as orbax uses)
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from bert_jax.errors import BertJaxError, ConfigError
from train.launch import Launch, launch_from_env, service_in_child_process

log = logging.getLogger("train.distributed")

PREFIX = "bert_jax/"
# Settings naming files: their contents are compared, not their paths (mounts may differ).
PATH_FIELDS = frozenset({"init", "data_dir", "sst_phrases", "sst_train", "sst_dev", "para_train",
                         "para_dev", "sts_train", "sts_dev"})


class PeerError(BertJaxError, RuntimeError):
    """Another process of a multi-process run failed, died, or could not be reached."""


def initialize(env: Mapping[str, str] = os.environ) -> bool:
    """Join the run `env` describes (False: this process runs alone). Before any JAX device is
    touched. ConfigError: a launch that cannot work; PeerError: the others cannot be reached."""
    launch = launch_from_env(env)
    if launch is None:
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    how = (f"Start all processes within {launch.init_timeout} s (BERT_JAX_INIT_TIMEOUT) with "
           "the same coordinator address, reachable from every host, the same "
           "JAX_NUM_PROCESSES and distinct ids")
    # JAX's own deadline for every process to join aborts the process (a C++ stack trace, exit
    # 134): this timer says why in one line first, and ends the process (exit 2).
    timer = threading.Timer(launch.init_timeout, _never_joined, args=(launch, how))
    timer.daemon = True
    timer.start()
    try:
        with service_in_child_process():
            jax.distributed.initialize(
                coordinator_address=launch.coordinator, num_processes=launch.num_processes,
                process_id=launch.process_id, initialization_timeout=launch.init_timeout + 60,
                # JAX's verdict aborts with a stack trace: the watchdog's one line comes first
                heartbeat_timeout_seconds=2 * launch.heartbeat_timeout + 10,
                shutdown_timeout_seconds=launch.shutdown_timeout)
    except (RuntimeError, ValueError) as err:
        raise PeerError(f"could not start the multi-process run (from {launch.source}): "
                        f"{_first_line(err)}. {how}") from None
    finally:
        timer.cancel()
    log.info("process %d of %d: %d local devices of %d (from %s)", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count(), launch.source)
    if jax.process_count() > 1:
        _WATCH.start(launch)
    if launch.num_processes is not None and launch.num_processes != jax.process_count():
        # Process 0 decides the run's size: a process told another number joins it anyway.
        err = ConfigError(
            f"this process was started for {launch.num_processes} processes (from "
            f"{launch.source}) but joined a run of {jax.process_count()}, the number process 0 "
            "was started with. Start every process with the same JAX_NUM_PROCESSES")
        if _WATCH.client is not None:
            _WATCH.record_failure(err, 2)  # the others stop too, naming this process
        raise err
    return True


def _never_joined(launch: Launch, how: str) -> None:
    """Not every process joined within the launch's init timeout: one line, exit 2."""
    who = ("process 0 (the coordinator) is not reachable, or another process" if launch.process_id
           else "another process")
    print(f"error: could not start the multi-process run (from {launch.source}): "
          f"{launch.num_processes or 'the'} processes did not all join within "
          f"{launch.init_timeout} s: {who} never started, or was started with another "
          f"JAX_NUM_PROCESSES. {how}", file=sys.stderr, flush=True)
    os._exit(2)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:400]


class _Watchdog:
    """The thread that keeps this process's sign of life fresh in the coordination service and
    ends the process (one error line, exit 2) when another process fails or goes silent.
    `status`: "running", "failing" (this process stops for an error) or "finished"."""

    def __init__(self):
        self.client, self.status, self.exit_code = None, "running", 2
        self.lock, self.dead, self.stopping = threading.Lock(), set(), threading.Event()

    def start(self, launch: Launch) -> None:
        self.client = jax_distributed.global_state.client
        self.me, self.count = jax.process_index(), jax.process_count()
        self.timeout, self.address = launch.heartbeat_timeout, launch.coordinator or "detected"
        self.interval = max(0.2, min(2.0, self.timeout / 6))
        atexit.register(self.at_exit)  # registered after JAX's handler: runs before it
        self.thread = threading.Thread(target=self.run, name="bert_jax-watchdog", daemon=True)
        self.thread.start()

    def set_status(self, value: str) -> None:
        with contextlib.suppress(Exception):
            self.client.key_value_set(f"{PREFIX}status/{self.me}", value, allow_overwrite=True)

    def run(self) -> None:
        beats, seen, count, started = {}, {}, 0, time.monotonic()
        run = f"this {self.count}-process run"
        while self.status != "failing" and not self.stopping.is_set():
            count += 1
            try:
                self.client.key_value_set(f"{PREFIX}alive/{self.me}", str(count),
                                          allow_overwrite=True)
                entries = dict(self.client.key_value_dir_get(PREFIX))
            except Exception as err:  # the coordination service (process 0) is gone
                return self.fail(f"lost contact with process 0 of {run} (the coordinator, "
                                 f"{self.address}): it has stopped; see its output "
                                 f"({_first_line(err)})")
            now = time.monotonic()
            for peer in range(self.count):
                status = entries.get(f"{PREFIX}status/{peer}", "running")
                beat = entries.get(f"{PREFIX}alive/{peer}")
                if beat != beats.get(peer):
                    beats[peer], seen[peer] = beat, now
                if peer == self.me or status == "finished" or self.status != "running":
                    continue
                if status != "running":
                    self.fail(f"process {peer} of {run} stopped: {status.partition(chr(10))[2]}")
                elif now - seen.get(peer, started) > self.timeout:
                    self.dead.add(peer)
                    self.fail(f"process {peer} of {run} gave no sign of life for {self.timeout} "
                              "s (BERT_JAX_HEARTBEAT_TIMEOUT): it died (killed, out of memory?) "
                              "or hangs; see its output")
            self.stopping.wait(self.interval)

    def fail(self, message: str) -> None:
        """End this process for another's failure: one line, exit 2 (unless it is stopping or
        done already)."""
        with self.lock:
            if self.status != "running":
                return
            self.status = "failing"
        print(f"error: {message}. Restart every process (with --resume to continue from the "
              "last checkpoint)", file=sys.stderr, flush=True)
        self.set_status(f"exited\nit stopped because another did ({message})")
        self.exit(2)

    def record_failure(self, err: BaseException, code: int) -> None:
        with self.lock:
            if self.status != "running":
                return
            self.status, self.exit_code = "failing", code
        self.set_status(f"failed\n{_first_line(err)}")

    def finish(self) -> None:
        with self.lock:
            self.status = "finished"
        self.set_status("finished")

    def exit(self, code: int) -> None:
        """os._exit, skipping JAX's shutdown barrier (it would wait for processes that will not
        come). Process 0 hosts the coordination service: it first waits (10 s at most) until
        the others have read why it stops."""
        deadline = time.monotonic() + min(self.timeout, 10)
        while self.me == 0 and time.monotonic() < deadline:
            try:
                entries = dict(self.client.key_value_dir_get(f"{PREFIX}status/"))
            except Exception:
                break
            if all(entries.get(f"{PREFIX}status/{p}", "running") != "running"
                   for p in range(1, self.count) if p not in self.dead):
                break
            time.sleep(0.1)
        with contextlib.suppress(Exception):
            sys.stdout.flush(), sys.stderr.flush(), logging.shutdown()
        os._exit(code)

    def at_exit(self) -> None:
        if self.status == "finished":
            # A normal end: stop the thread before the interpreter does. Python ends a daemon
            # thread at exit by unwinding it, and one caught inside a coordination-service call
            # aborts the process ("FATAL: exception not rethrown", exit -6: seen once).
            self.stopping.set()
            self.thread.join(timeout=self.interval + 30)
            return  # JAX's shutdown barrier follows
        if self.status == "running":  # ended outside guard(): say so to the others
            self.record_failure(RuntimeError("it exited before the run finished"), 2)
        self.exit(self.exit_code)


_WATCH = _Watchdog()


# How a failed exchange with a dead process reads (JaxRuntimeError, or a ValueError out of a
# multihost_utils gather): "Gloo all-reduce failed: ... Connection reset by peer", ...
_COMMUNICATION = ("gloo", "connection reset", "connection closed", "unavailable:",
                  "deadline_exceeded", "coordination service", "barrier timed out")


@contextlib.contextmanager
def guard():
    """Around a training in a multi-process run: an error is published to the other processes
    (they stop with one line naming this process and the error); a failed exchange (a process
    died mid-step) is named by the watchdog, else becomes a PeerError; the end is published."""
    if _WATCH.client is None:
        yield
        return
    if _WATCH.status == "finished":  # a second training in the same processes
        _WATCH.status = "running"
        _WATCH.set_status("running")
    try:
        yield
    except BaseException as err:
        if getattr(err, "signum", None):  # an agreed stop (stop_signal): every process saved
            _WATCH.exit_code = 128 + err.signum
            _WATCH.finish()
            raise
        if isinstance(err, Exception) and any(s in str(err).lower() for s in _COMMUNICATION):
            deadline = time.monotonic() + _WATCH.timeout + 3 * _WATCH.interval
            while _WATCH.status == "running" and time.monotonic() < deadline:
                time.sleep(0.1)  # the watchdog names the process that stopped, and exits
            peer = PeerError(f"an exchange with the other processes failed ({_first_line(err)})"
                             ": another process of this run has probably stopped; see its "
                             "output. Restart every process (with --resume to continue)")
            _WATCH.record_failure(peer, 2)
            raise peer from None
        # as main's: 2 for the project's errors (a full disk during a save is one: not the
        # device's memory, whatever tensorstore's "RESOURCE_EXHAUSTED" said), 3 for the
        # device's memory, 130 for an interrupt, else 1
        code = (2 if isinstance(err, BertJaxError) else 130 if isinstance(err, KeyboardInterrupt)
                else 3 if "RESOURCE_EXHAUSTED" in str(err) else 1)
        _WATCH.record_failure(err, code)
        raise
    else:
        _WATCH.finish()


def stop_signal(step: int) -> int | None:
    """SIGTERM when the processes agreed to stop at `step` (JAX's preemption sync, started by
    a SIGTERM to any of them). Call after every step; None in a single-process run."""
    if _WATCH.client is not None and jax_distributed.global_state.preemption_sync_manager:
        if multihost_utils.reached_preemption_sync_point(step):
            log.warning("stopping at step %d: a process of the run received SIGTERM", step)
            return signal.SIGTERM
    return None


def handles_signals() -> bool:
    """Multi-process: SIGTERM is JAX's (`stop_signal`), SIGINT stops at once (no handlers)."""
    return _WATCH.client is not None


def _digest(*parts: Any) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        array = isinstance(part, np.ndarray)
        h.update(f"{part.dtype}{part.shape}".encode() if array else repr(part).encode())
        h.update((np.ascontiguousarray(part).tobytes() if array else b"") + b"\0")
    return h.hexdigest()


def _data_item(data) -> tuple[str, str]:
    ragged = [data.ids1] + ([data.ids2] if data.ids2 is not None else [])
    arrays = [np.concatenate(ids) if len(ids) else np.zeros(0, np.int32) for ids in ragged]
    lengths = [np.array([len(x) for x in ids], np.int64) for ids in ragged]
    labels = data.labels if data.labels is not None else np.zeros(0)
    return (_digest(*arrays, *lengths, np.asarray(labels), "\n".join(data.example_ids)),
            f"{len(data)} examples from {data.source or '?'}")


def run_fingerprint(cfg, run, weights) -> dict[str, tuple[str, str]]:
    """{what: (digest, description)} of a run's settings (but file paths), each data split,
    the vocabulary and the initial encoder weights."""
    items = {f"--{name.replace('_', '-')}": (_digest(value), repr(value))
             for name, value in cfg.to_dict().items() if name not in PATH_FIELDS}
    for split, datasets in (("train", run.train), ("dev", run.dev)):
        for task, data in datasets.items():
            items[f"{task} {split} data"] = _data_item(data)
    vocab = run.tokenizer.vocab_file
    items["vocabulary"] = (_digest(vocab.read_bytes()), str(vocab))
    leaves = jax.tree_util.tree_flatten_with_path(weights)[0]
    items["initial weights"] = (_digest(*[x for path, leaf in leaves
                                          for x in (jax.tree_util.keystr(path), np.asarray(leaf))]),
                                f"--init {cfg.init}")
    return items


_EXCHANGES = itertools.count(1)


def exchange(value: Any, timeout: float | None = None) -> list[Any]:
    """Every process's `value` (JSON), in process order, through the coordination service."""
    client = jax_distributed.global_state.client
    key = f"{PREFIX}exchange/{next(_EXCHANGES)}/"
    client.key_value_set(key + str(jax.process_index()), json.dumps(value))
    wait_ms = int(1000 * (timeout or 600))
    try:
        return [json.loads(client.blocking_key_value_get(key + str(p), wait_ms))
                for p in range(jax.process_count())]
    except jax.errors.JaxRuntimeError as err:
        raise PeerError(f"another process did not reach the same point of the run within "
                        f"{wait_ms // 1000} s ({_first_line(err)}); see its output") from None


def describe_differences(everyone: list[dict[str, tuple[str, str]]]) -> list[str]:
    """`run_fingerprint`s of every process (in process order) -> one text per item that is not
    the same everywhere: "NAME (process 0: DESCRIPTION; process 2: DESCRIPTION)", settings
    first, naming process 0 and each process that differs from it."""
    differences = []
    for name in sorted(set().union(*everyone), key=lambda n: (not n.startswith("--"), n)):
        values = [tuple(items[name]) if name in items else ("", "absent") for items in everyone]
        if len({digest for digest, _ in values}) > 1:
            shown = "; ".join(f"process {p}: {desc}" for p, (digest, desc) in enumerate(values)
                              if p == 0 or digest != values[0][0])
            differences.append(f"{name} ({shown})")
    return differences


def check_same_run(cfg, run, weights) -> None:
    """Refuse (ConfigError) a multi-process run whose processes differ in settings, data,
    vocabulary or initial weights, naming each difference and the processes involved."""
    if jax.process_count() == 1:
        return
    differences = describe_differences(exchange(run_fingerprint(cfg, run, weights)))
    if differences:
        more = f" and {len(differences) - 6} more" if len(differences) > 6 else ""
        raise ConfigError(
            "the processes of this multi-process run differ in " + ", ".join(differences[:6])
            + more + ". Start every process with the same command, settings and data")
    log.info("all %d processes have the same settings, data and weights", jax.process_count())


def gather_outputs(predict, mesh):
    """`predict` with its outputs replicated on every device: a process can only read arrays
    whose every part is on its own devices (dev scores are computed in every process)."""
    if jax.process_count() == 1:
        return predict
    return jax.jit(predict, out_shardings=NamedSharding(mesh, P()))


def replicate(tree, mesh):
    """`tree` as arrays replicated over `mesh`, each process placing its own copy. Unlike
    `jax.device_put`, no gather of every array to every process to check that they agree:
    `check_same_run` compared digests of the weights already."""
    if jax.process_count() == 1:
        return tree
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda x: jax.make_array_from_callback(
        np.shape(x), sharding, lambda index, x=np.asarray(x): x[index]), tree)
