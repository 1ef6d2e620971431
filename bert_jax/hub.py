"""HuggingFace model names (`bert-base-uncased`, `org/name`) resolved to a local folder through
`huggingface_hub`'s local cache. Nothing is downloaded unless asked: with `BERT_JAX_DOWNLOAD=1`
(and `HF_HUB_OFFLINE` unset) a model missing from the cache is fetched, only the files a BERT
encoder needs (config, weights, vocabulary, tokenizer files). Otherwise a missing model is a
one-line error saying how to get the files.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
from huggingface_hub.utils import validate_repo_id

from bert_jax.errors import ConfigError, MissingFileError

MODEL_FILES = ["config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "model.safetensors", "pytorch_model.bin"]
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def looks_like_hub_id(name: str) -> bool:
    """`bert-base-uncased` or `org/name`, and no such local path."""
    return bool(_HUB_ID.fullmatch(name)) and not Path(name).exists()


def _offline() -> bool:
    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "") in (
        "1", "true", "TRUE", "yes", "ON", "on")


def _cache_dir() -> str:
    """The hub cache as the environment names it now (`HF_HUB_CACHE`, `HF_HOME/hub`)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return constants.HF_HUB_CACHE


def download_allowed() -> bool:
    """Downloads are opt-in (`BERT_JAX_DOWNLOAD=1`) and never under `HF_HUB_OFFLINE`."""
    return os.environ.get("BERT_JAX_DOWNLOAD") == "1" and not _offline()


def hub_model_dir(repo_id: str) -> Path:
    """The local folder of `repo_id`'s encoder files: from the cache; downloaded only when
    `download_allowed()`. A name the hub would reject ('bert--base', 'a/b/c') is a ConfigError,
    before any lookup."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ConfigError(
            f"{repo_id!r}: neither a folder here nor a HuggingFace model name the hub accepts "
            f"({str(err).partition(':')[0]}): pass an existing folder, or a name such as "
            "'bert-base-uncased' or 'org/name' (letters, digits, '-', '_' and '.', no '--' or "
            "'..', at most 96 characters)") from None
    cache = _cache_dir()
    try:
        return Path(snapshot_download(repo_id, allow_patterns=MODEL_FILES, cache_dir=cache,
                                      local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    how = (f"fetch it where there is network (`hf download {repo_id} "
           f"{' '.join(MODEL_FILES[:4])} model.safetensors`) into the cache that HF_HOME / "
           "HF_HUB_CACHE name here, or pass the folder of its files")
    if not download_allowed():
        why = ("HF_HUB_OFFLINE is set" if _offline() else
               "downloads are off (set BERT_JAX_DOWNLOAD=1 to fetch it)")
        raise MissingFileError(f"{repo_id}: not in the local HuggingFace cache ({cache}) and "
                               f"{why}: {how}")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=MODEL_FILES, cache_dir=cache))
    except Exception as err:  # noqa: BLE001 - network, auth, unknown repo: one message
        raise MissingFileError(
            f"{repo_id}: not in the local HuggingFace cache ({cache}) and "
            f"not downloadable ({type(err).__name__}: {str(err).splitlines()[0][:200]}): "
            f"{how}") from None
