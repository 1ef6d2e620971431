"""Shared fixtures: the data folder, a session cache for converted models, the default model."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("bert_jax") is None:  # not pip-installed: test the checkout
    sys.path.insert(0, str(REPO_ROOT))

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The CS224N multitask TSV files; tests using it skip when they are absent."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"{DATA_DIR}: data folder absent")
    return DATA_DIR


@pytest.fixture(scope="session", autouse=True)
def bert_jax_cache(tmp_path_factory) -> Path:
    """Point `BERT_JAX_CACHE` at a session temp folder so tests never write to ~/.cache."""
    cache = tmp_path_factory.mktemp("bert_jax_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BERT_JAX_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="session")
def default_model():
    """(BertConfig, float32 params) of the embedded all-MiniLM-L6-v2, loaded once."""
    from bert_jax import DEFAULT_MODEL, load_pretrained
    return load_pretrained(DEFAULT_MODEL)
