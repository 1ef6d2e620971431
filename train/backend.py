"""Which backend JAX runs on, and the warning when an accelerator build fell back to the CPU."""
from __future__ import annotations

import importlib.metadata

import jax

from bert_jax import backend_log

# Packages that put JAX on an accelerator: installed, yet the backend is "cpu", means JAX could
# not use the device (no driver, no device visible, a version mismatch) and fell back silently.
ACCELERATOR_PACKAGES = ("jax-cuda12-plugin", "jax-cuda13-plugin", "jax-cuda12-pjrt",
                        "jax-rocm60-plugin", "libtpu", "libtpu-nightly")


def backend_report() -> tuple[str, str | None]:
    """(a line naming the backend and its devices, a one-line warning or None when a GPU/TPU
    build of JAX is installed but JAX fell back to the CPU, and None too when JAX's own record of
    that failure already went out as one line: `bert_jax.backend_log`)."""
    installed = []
    for name in ACCELERATOR_PACKAGES:
        try:
            installed.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    devices = jax.devices()
    line = (f"JAX {jax.__version__} on {jax.default_backend()}: {len(devices)} device(s) "
            f"({devices[0].device_kind}), {jax.process_count()} process(es)")
    warning = None
    if installed and jax.default_backend() == "cpu" and not backend_log.fallback_said():
        warning = (f"{', '.join(installed)} is installed but JAX runs on the CPU: it found no "
                   "usable GPU/TPU (check `nvidia-smi` or the TPU runtime, and `python -c 'import "
                   "jax; print(jax.devices())'`); training continues on the CPU")
    return line, warning
