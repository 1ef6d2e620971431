"""Tokenization of a loaded split, cached on disk by `datasets` under a content key.

`tokenize_split` adds the token ids of every sentence (`ids1`, `len1`, and `ids2`, `len2` for
pairs), or with `cross=True` of every pair encoded together (`ids1`, `len1`, `first1`); the
cache file's key hashes the split's content, the tokenizer, `max_length` and `cross`, so a
second call with the same inputs reads the file. An unwritable cache folder (read-only, or a
disk that fills up while the file is written) falls back to memory and a damaged cache file is
rebuilt, each with a warning naming it.

Progress: `datasets`' own "tokenizing" bar shows only where a bar draws in place (`live_progress`:
a terminal or a notebook); written to a file (CI, `nohup`, a cluster job) it is off, and a
single log line says what is being tokenized instead.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import logging
import os
import sys
from pathlib import Path

import datasets
import numpy as np

logger = logging.getLogger("bert_jax.data")

_CACHE_VERSION = "1"
# Write failures that leave the tokenization in memory instead of failing the run.
_WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


# ------------------------------------------------------------------------------ progress

def live_progress(stream=None) -> bool:
    """Whether a progress bar can draw in place on `stream` (default stderr): a terminal, or a
    notebook (tqdm draws a widget there). False for a file or a pipe, where each update of a bar
    would leave a line with carriage returns and escape sequences."""
    stream = sys.stderr if stream is None else stream
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
    return "ipykernel" in sys.modules


@contextlib.contextmanager
def _datasets_bars(show: bool):
    """`datasets`' progress bars on (as they were) when `show`, else off for the block."""
    if show or not datasets.is_progress_bar_enabled():
        yield
        return
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.enable_progress_bars()


# ------------------------------------------------------------------------------ tokenization

def default_cache_dir() -> Path:
    """`$BERT_JAX_CACHE/datasets`, or `~/.cache/bert_jax/datasets`."""
    root = os.environ.get("BERT_JAX_CACHE") or Path.home() / ".cache" / "bert_jax"
    return Path(root) / "datasets"


def _tokenizer_digest(tokenizer) -> str:
    h = hashlib.sha256()
    vocab_file = getattr(tokenizer, "vocab_file", None)
    if vocab_file is not None:
        h.update(Path(vocab_file).read_bytes())
    inner = getattr(tokenizer, "_tok", None)  # full tokenizers config: normaliser, model, template
    if inner is not None and hasattr(inner, "to_str"):
        config = json.loads(inner.to_str())
        for state in ("truncation", "padding"):  # per-call settings, not the tokenizer's identity
            config.pop(state, None)
        h.update(json.dumps(config, sort_keys=True).encode("utf-8"))
    if vocab_file is None and inner is None:
        raise ValueError("tokenize_split needs the project's Tokenizer (with vocab_file)")
    return h.hexdigest()


def _dataset_digest(ds: datasets.Dataset) -> str:
    h = hashlib.sha256()
    table = ds.with_format("arrow")[:]
    for name in sorted(table.column_names):
        h.update(name.encode() + b"\0")
        h.update(json.dumps(table.column(name).to_pylist(), ensure_ascii=False).encode(
            "utf-8", "surrogatepass"))
    return h.hexdigest()


def cache_key(ds: datasets.Dataset, tokenizer, max_length: int, cross: bool = False) -> str:
    """Hex digest of the dataset's content (all columns: what the source file and task gave),
    the tokenizer (vocab file bytes and settings), `max_length` and, when set, `cross` (so
    sides encoded alone keep the key they had before pairs could be encoded together)."""
    h = hashlib.sha256()
    parts = [_CACHE_VERSION, _dataset_digest(ds), _tokenizer_digest(tokenizer), str(max_length)]
    for part in parts + (["cross"] if cross else []):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


def _truncate(row: np.ndarray, max_length: int) -> np.ndarray:
    # Same as the tokenizer's own truncation of one sentence: keep [CLS] and the final [SEP].
    if len(row) <= max_length:
        return row
    return np.concatenate([row[:max_length - 1], row[-1:]])


def _encode_cross(tokenizer, max_length: int, texts_a, texts_b) -> dict:
    # Untruncated first (the lengths); the few pairs over max_length again, truncated: the
    # longest-first cut depends on both sides, so it is the tokenizer's, not `_truncate`'s.
    full = tokenizer.encode_pair_ids(list(texts_a), list(texts_b), max_length=1_000_000)
    long = [i for i, (ids, _) in enumerate(full) if len(ids) > max_length]
    cut = dict(zip(long, tokenizer.encode_pair_ids([texts_a[i] for i in long],
                                                   [texts_b[i] for i in long], max_length)))
    kept = [cut.get(i, pair) for i, pair in enumerate(full)]
    return {"ids1": [ids for ids, _ in kept],
            "len1": np.asarray([len(ids) for ids, _ in full], np.int32),
            "first1": np.asarray([first for _, first in kept], np.int32)}


def tokenize_split(ds: datasets.Dataset, tokenizer, max_length: int, *, cross: bool = False,
                   cache_dir: str | os.PathLike | None | bool = None) -> datasets.Dataset:
    """`ds` with token ids added via `Dataset.map(batched=True)`, cached on disk.

    Adds `ids1` (list of int32: [CLS] sentence1 [SEP], truncated to `max_length`) and `len1`
    (int32, the untruncated length); `ids2`/`len2` too for pair tasks. Each sentence is encoded
    on its own. With `cross=True` (pairs only) a pair is one sequence instead: `ids1` is
    [CLS] sentence1 [SEP] sentence2 [SEP] truncated longest-first to `max_length` (as
    `Tokenizer.encode_pair_ids`), `len1` its untruncated length and `first1` (int32) its number
    of tokens of type 0 (`pair_type_ids`); no `ids2`/`len2`. The cache file
    `tokens-<key>.arrow` lives in `cache_dir` (default `default_cache_dir()`; False: no disk
    cache); the key hashes the dataset's content, the tokenizer, `max_length` and `cross`, so a
    second call with the same inputs reuses it. Logs how many sentences (pairs, when `cross`)
    were truncated (see `count_truncated`).
    """
    if max_length < (3 if cross else 2):
        raise ValueError(f"max_length must be at least {3 if cross else 2} ([CLS] and "
                         f"{'two [SEP]' if cross else '[SEP]'}), not {max_length}")
    pair = "sentence2" in ds.column_names
    if cross and not pair:
        raise ValueError("cross=True encodes pairs together, but the dataset has no sentence2 "
                         "column: encode single sentences with cross=False")
    in_cols = ["sentence1", "sentence2"] if pair else ["sentence1"]
    features = ds.features.copy()
    for k in ("1",) if cross or not pair else ("1", "2"):
        features["ids" + k] = datasets.List(datasets.Value("int32"))
        features["len" + k] = datasets.Value("int32")
    if cross:
        features["first1"] = datasets.Value("int32")

    def encode(*cols):
        if cross:
            return _encode_cross(tokenizer, max_length, *cols)
        out = {}
        for k, texts in zip(("1", "2"), cols):
            full = tokenizer.encode_ids(list(texts), max_length=1_000_000)
            out["ids" + k] = [_truncate(r, max_length) for r in full]
            out["len" + k] = np.asarray([len(r) for r in full], np.int32)
        return out

    key = cache_key(ds, tokenizer, max_length, cross)
    show = live_progress()
    map_split = functools.partial(ds.map, encode, batched=True, input_columns=in_cols,
                                  features=features, new_fingerprint=key[:40], desc="tokenizing")

    def run(**kwargs):
        with _datasets_bars(show):
            return map_split(**kwargs)

    cache_file = None
    if cache_dir is not False:
        folder = Path(cache_dir) if cache_dir not in (None, True) else default_cache_dir()
        cache_file = _writable_cache_file(folder, f"tokens-{key[:40]}.arrow")
    if not show and (cache_file is None or not cache_file.exists()):
        logger.info("tokenizing %d rows%s", len(ds),
                    f" into the cache {cache_file}" if cache_file is not None else " in memory")
    if cache_file is None:
        out = run(keep_in_memory=True)
    else:
        before = set(cache_file.parent.glob("tmp*"))
        try:
            out = run(cache_file_name=str(cache_file), load_from_cache_file=True)
            out.with_format("arrow")[:1]  # a damaged file fails here, not later in training
        except OSError as err:
            if err.errno not in _WRITE_ERRORS:
                raise
            # A full disk (or a folder that became read-only) while writing: what the write
            # left is removed (datasets' temporary file, when closing it failed too).
            for partial in [cache_file, *(set(cache_file.parent.glob("tmp*")) - before)]:
                with contextlib.suppress(OSError):
                    partial.unlink()
            logger.warning("%s: cannot write the token cache there (%s); tokenizing in memory. "
                           "Free disk space, or set BERT_JAX_CACHE to another folder to cache "
                           "it", cache_file.parent, err.strerror or err)
            out = run(keep_in_memory=True)
        except Exception as err:  # noqa: BLE001 - any unreadable cache: rebuild it once
            if not cache_file.exists():
                raise
            logger.warning("%s: the token cache is damaged (%s: %s); rebuilding it", cache_file,
                           type(err).__name__, str(err)[:200])
            cache_file.unlink()
            out = run(cache_file_name=str(cache_file), load_from_cache_file=False)
    n = count_truncated(out, max_length)
    if n:
        logger.warning("%d %s%s longer than max_length=%d tokens truncated (of %d)", n,
                       "pair" if cross else "sentence", "s" if n > 1 else "", max_length,
                       len(out) * (2 if pair and not cross else 1))
    return out


def _writable_cache_file(folder: Path, name: str) -> Path | None:
    """`folder / name` when the folder can hold a cache file; else None (tokenize in memory)
    after a warning naming the folder and the fix (`BERT_JAX_CACHE`)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return folder / name
    except OSError as err:
        logger.warning("%s: cannot write the token cache there (%s); tokenizing in memory. Set "
                       "BERT_JAX_CACHE to a writable folder to cache it", folder,
                       err.strerror or err)
        return None


def count_truncated(ds: datasets.Dataset, max_length: int) -> int:
    """How many sentences of a tokenized dataset were longer than `max_length` tokens (pairs,
    of a dataset tokenized with `cross=True`)."""
    table = ds.with_format("arrow")[:]
    return int(sum((table.column(c).to_numpy() > max_length).sum()
                   for c in ("len1", "len2") if c in table.column_names))

