"""The device check's set-up and processes: the carried pack (wheels, data, weights), the
machine's versions, and every stage run as a process with its own time limit.

Standard library only: this runs before the carried wheels are installed, so it imports nothing
that needs them (`datasets`) and nothing heavy (JAX, PyTorch), which the stages load themselves.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PACK = "device-pack"
DEFAULT_WEIGHTS = "all-MiniLM-L6-v2"
# What the pack carries for the machine's image, which lacks them (datasets needs the others of
# its requirements, which the image has: pyarrow, pandas, fsspec, xxhash, huggingface-hub, ...).
PACK_WHEELS = ("datasets", "dill", "multiprocess")
VERSIONS = ("python", "jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax",
            "orbax-checkpoint", "torch", "transformers", "tokenizers", "datasets", "dill",
            "multiprocess", "pyarrow", "fsspec", "numpy")


class Log:
    """The check's log file; `say` also prints."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def say(self, line: str) -> None:
        text = f"[{self.elapsed():6.1f} s] {line}"
        print(text, flush=True)
        with open(self.path, "a") as f:
            f.write(text + "\n")


def find_pack(pack: str | None) -> Path | None:
    """The pack folder: `pack` ("none": no pack), else ./device-pack where it exists."""
    if pack == "none":
        return None
    folder = Path(pack or ROOT / DEFAULT_PACK)
    if pack and not folder.is_dir():
        raise SystemExit(f"--pack {pack}: no such folder (build it with `make device-pack`)")
    return folder if folder.is_dir() else None


def install_wheels(pack: Path | None, tmp: Path, log: Log) -> str | None:
    """Install the pack's wheels into tmp/site when `datasets` is missing; the folder to put on
    PYTHONPATH (None when nothing was installed)."""
    if importlib.util.find_spec("datasets") is not None:
        return None
    wheels = sorted((pack / "wheels").glob("*.whl")) if pack else []
    if not wheels:
        log.say("datasets is not installed and no pack wheels were found: stages that read "
                "data will fail (build the pack with `make device-pack`)")
        return None
    site = tmp / "site"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--disable-pip-version-check", "--target", str(site),
           *map(str, wheels)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    with open(log.path, "a") as f:
        f.write(done.stdout + done.stderr)
    if done.returncode != 0:
        log.say(f"pip install of the pack's wheels failed (exit {done.returncode}); see the log")
        return None
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    log.say(f"installed {', '.join(w.name for w in wheels)} into {site}")
    return str(site)


def unpack_data(pack: Path | None, data_dir: str | None, tmp: Path) -> tuple[str | None, str]:
    """(data folder for --data-dir, how it was found): the pack's data.tar.xz, decompressed into
    tmp, or `data_dir`, or the project's default (./data, ../shared/data)."""
    tarball = pack / "data.tar.xz" if pack else None
    if data_dir:
        return data_dir, data_dir
    if tarball and tarball.is_file():
        dest = tmp / "data"
        with tarfile.open(tarball, "r:xz") as tar:
            tar.extractall(dest, filter="data")
        return str(dest), f"{tarball} (xz)"
    return None, "project default (./data or ../shared/data)"


def choose_weights(pack: Path | None) -> tuple[str, str]:
    """(the --init of every stage, "float16 copy" or "exact"): the pack's float16 copy of the
    embedded default where the pack has one, else the embedded default itself."""
    model = pack / "model" if pack else None
    if model and (model / "model.safetensors").is_file():
        return str(model), "float16 copy"
    return DEFAULT_WEIGHTS, "exact"


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in VERSIONS[1:]:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def gpu_line() -> str | None:
    """nvidia-smi's name, driver and memory of each GPU, or None without nvidia-smi."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                               "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.SubprocessError) as err:
        return f"nvidia-smi failed: {err}"
    return done.stdout.strip() or done.stderr.strip()


def child_env(site: str | None, cache: Path, **extra: str) -> dict[str, str]:
    """The stages' environment: the repository (and installed wheels) on PYTHONPATH, the
    tokenization cache, unbuffered output."""
    env = dict(os.environ)
    paths = [p for p in (site, str(ROOT), env.get("PYTHONPATH")) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["BERT_JAX_CACHE"] = str(cache)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update(extra)
    return env


def run_process(cmd: list[str], env: dict, limit: float, log: Log) -> tuple[str, float, float]:
    """Run `cmd` (output appended to the log) for at most `limit` seconds: ("ok" | "error" |
    "timeout", wall seconds, CPU seconds). A process past its limit gets SIGTERM, then SIGKILL
    10 s later."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_before = usage.ru_utime + usage.ru_stime
    with open(log.path, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        start = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            status = "ok" if proc.wait(timeout=limit) == 0 else "error"
        except subprocess.TimeoutExpired:
            status = "timeout"
            for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 30)):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(timeout=grace)
                    break
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return status, time.monotonic() - start, usage.ru_utime + usage.ru_stime - cpu_before


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def read_jsonl(path: Path) -> list[dict]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line cut off by a stop
            pass
    return rows
