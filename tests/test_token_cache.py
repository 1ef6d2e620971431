"""bert_jax.token_cache: token ids equal the tokenizer's, the disk cache is reused, and an
unwritable or damaged cache falls back or is rebuilt."""
from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from bert_jax.cs224n import load_split
from bert_jax.task_data import task_data
from bert_jax.token_cache import count_truncated, tokenize_split
from csv_files import good_sst, sst_file


@pytest.mark.parametrize("name,task,max_length", [("ids-sst-dev.csv", "sst", 16),
                                                  ("sts-dev.csv", "sts", 24)])
def test_tokenize_split_equals_encode_ids(data_dir, tokenizer, tmp_path, name, task, max_length):
    ds = load_split(data_dir / name, task)
    tok = tokenize_split(ds, tokenizer, max_length, cache_dir=tmp_path)
    cols = ["1"] if task == "sst" else ["1", "2"]
    truncated = 0
    for k in cols:
        sentences = ds[f"sentence{k}"][:]
        want = tokenizer.encode_ids(sentences, max_length=max_length)
        got = tok[f"ids{k}"][:]
        assert len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(np.asarray(g, np.int32), w)
        full = tokenizer.count_tokens(sentences)
        np.testing.assert_array_equal(np.asarray(tok[f"len{k}"][:]), full)
        truncated += int((full > max_length).sum())
    assert truncated > 0  # the small max_length makes the comparison cover truncation
    assert count_truncated(tok, max_length) == truncated
    data = task_data(tok, task)
    assert len(data) == len(ds) and data.example_ids == ds["id"][:]
    assert all(r.dtype == np.int32 and r[0] == tokenizer.cls_id and r[-1] == tokenizer.sep_id
               for r in data.ids1)
    assert (data.ids2 is None) == (task == "sst")
    assert data.labels.dtype == (np.float32 if task == "sts" else np.int32)
    assert data.lengths.max() <= max_length


def test_tokenize_cache_is_reused(data_dir, tokenizer, tmp_path, monkeypatch):
    ds = load_split(data_dir / "sts-dev.csv", "sts")
    calls = []
    encode = tokenizer.encode_ids

    def spy(texts, max_length=512):
        calls.append(len(texts))
        return encode(texts, max_length)

    monkeypatch.setattr(tokenizer, "encode_ids", spy)
    first = tokenize_split(ds, tokenizer, 64, cache_dir=tmp_path)
    files = list(tmp_path.glob("tokens-*.arrow"))
    assert len(files) == 1 and calls
    assert [f["filename"] for f in first.cache_files] == [str(files[0])]
    mtime = os.stat(files[0]).st_mtime_ns
    calls.clear()
    again = load_split(data_dir / "sts-dev.csv", "sts")  # a fresh parse: same content, same key
    second = tokenize_split(again, tokenizer, 64, cache_dir=tmp_path)
    assert calls == []
    assert os.stat(files[0]).st_mtime_ns == mtime
    assert second[:] == first[:]
    # another max_length, or other content, is another cache file
    tokenize_split(ds, tokenizer, 32, cache_dir=tmp_path)
    tokenize_split(ds.select(range(10)), tokenizer, 64, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("tokens-*.arrow"))) == 3
    # cache_dir=False: nothing written
    before = sorted(tmp_path.iterdir())
    tokenize_split(ds, tokenizer, 48, cache_dir=False)
    assert sorted(tmp_path.iterdir()) == before


def test_unusable_token_cache_falls_back_or_is_rebuilt(tmp_path, tokenizer, caplog,
                                                       monkeypatch):
    p = sst_file(tmp_path, good_sst(6))
    ds = load_split(p, "sst")
    want = task_data(tokenize_split(ds, tokenizer, 16, cache_dir=False), "sst").ids1
    # BERT_JAX_CACHE pointing at a file: tokenize in memory, saying so
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("x")
    monkeypatch.setenv("BERT_JAX_CACHE", str(blocker))
    with caplog.at_level(logging.WARNING, logger="bert_jax.data"):
        got = task_data(tokenize_split(ds, tokenizer, 16), "sst").ids1
    assert "cannot write the token cache there" in caplog.text and "BERT_JAX_CACHE" in caplog.text
    assert [a.tolist() for a in got] == [a.tolist() for a in want]
    # a damaged cache file: named, rebuilt, same ids
    cache = tmp_path / "cache"
    tokenize_split(ds, tokenizer, 16, cache_dir=cache)
    (arrow,) = cache.glob("tokens-*.arrow")
    arrow.write_bytes(b"\x00not arrow at all")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bert_jax.data"):
        got = task_data(tokenize_split(ds, tokenizer, 16, cache_dir=cache), "sst").ids1
    assert f"{arrow}: the token cache is damaged" in caplog.text
    assert [a.tolist() for a in got] == [a.tolist() for a in want]
    assert task_data(tokenize_split(ds, tokenizer, 16, cache_dir=cache), "sst").ids1[0].tolist() \
        == want[0].tolist()  # the rebuilt file loads


def test_a_disk_that_fills_up_while_caching_falls_back_to_memory(tmp_path, tokenizer, caplog,
                                                                  monkeypatch):
    """The cache folder is writable but the disk fills up while datasets writes the file
    (ENOSPC out of its Arrow writer): a warning naming the folder, the ids tokenized in memory,
    nothing left in the folder."""
    import errno

    from datasets.arrow_writer import ArrowWriter
    ds = load_split(sst_file(tmp_path, good_sst(6)), "sst")
    want = task_data(tokenize_split(ds, tokenizer, 16, cache_dir=False), "sst").ids1

    finalize = ArrowWriter.finalize

    def disk_full(self, *args, **kwargs):
        if self._path is not None:  # a file; in memory (keep_in_memory) there is room
            raise OSError(errno.ENOSPC, "No space left on device")
        return finalize(self, *args, **kwargs)
    monkeypatch.setattr(ArrowWriter, "finalize", disk_full)
    cache = tmp_path / "cache"
    with caplog.at_level(logging.WARNING, logger="bert_jax.data"):
        got = task_data(tokenize_split(ds, tokenizer, 16, cache_dir=cache), "sst").ids1
    assert (f"{cache}: cannot write the token cache there (No space left on device); "
            "tokenizing in memory") in caplog.text
    assert [a.tolist() for a in got] == [a.tolist() for a in want]
    assert list(cache.iterdir()) == []
