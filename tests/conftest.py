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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A converted folder holding a tiny random BERT (bert_jax.config.PRESETS["tiny"]) with the
    real uncased vocabulary: compiles in seconds."""
    import jax
    from bert_jax.config import PRESETS
    from bert_jax.converted import save_converted
    from bert_jax.embedded import embedded_model_dir
    from bert_jax.model import init_params
    out = tmp_path_factory.mktemp("tiny_model") / "model"
    save_converted(out, init_params(PRESETS["tiny"], jax.random.PRNGKey(0)), PRESETS["tiny"],
                   embedded_model_dir() / "vocab.txt")
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_model_dir, data_dir) -> Path:
    """A finished run folder (preset "concat" on the tiny model): 2 epochs of 2 steps on 16
    training examples per task, dev = the first 16 rows per task, max_length 32. Shared by
    the session: tests that write into a run folder copy it first."""
    from train.config import PRESETS
    from train.multitask import train_and_evaluate
    cfg = PRESETS["concat"].replace(init=str(tiny_model_dir), epochs=2, max_length=32,
                                    num_buckets=2, limit_train=16, limit_eval=16,
                                    eval_batch_size=16, log_every=1, lr=1e-3)
    out = tmp_path_factory.mktemp("tiny_run") / "run"
    train_and_evaluate(cfg, out, data_dir=str(data_dir), progress=False)
    return out


@pytest.fixture(scope="session")
def tokenizer():
    """The embedded default's WordPiece tokenizer (skips when the weights package is absent)."""
    from bert_jax.tokenizer import Tokenizer
    try:
        return Tokenizer.from_pretrained("default")
    except FileNotFoundError as e:
        pytest.skip(str(e))
