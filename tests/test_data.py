"""bert_jax.data.load_task: the whole pipeline in one call (load, validate, tokenize, view),
truncation counted, sentences empty once normalised treated as bad rows."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bert_jax.cs224n import DataError
from bert_jax.data import load_task
from csv_files import HEADERS, sst_file, write_tsv


def test_load_task(data_dir, tokenizer, tmp_path):
    dev = load_task(data_dir, "sts", "dev", tokenizer, max_length=64, limit=50,
                    cache_dir=tmp_path)
    assert len(dev) == 50 and dev.labels.shape == (50,) and dev.ids2 is not None
    assert dev.source.endswith("sts-dev.csv")
    test = load_task(data_dir / "sts-test-student.csv", "sts", "test", tokenizer,
                     max_length=64, limit=200, cache_dir=tmp_path)
    assert len(test) == 200 and test.labels is None
    with pytest.raises(DataError, match="no test file"):
        load_task(data_dir, "para", "test", tokenizer, cache_dir=tmp_path)
    para = load_task(data_dir, "para", "dev", tokenizer, limit=300, skip_bad_rows=True,
                     cache_dir=tmp_path)
    assert len(para) == 300 and para.labels.dtype == np.int32
    with pytest.raises(DataError, match="line 2577"):
        load_task(data_dir, "para", "dev", tokenizer, limit=300, cache_dir=tmp_path)


def test_long_sentence_truncated_and_counted(tmp_path, tokenizer, caplog):
    long = " ".join(["word"] * 40)
    p = write_tsv(tmp_path / "long.csv", HEADERS["sts"],
                  [("a", "short one", long, "1.0"), ("b", "fine", "ok", "2.0")])
    with caplog.at_level(logging.WARNING, logger="bert_jax.data"):
        data = load_task(p, "sts", "dev", tokenizer, max_length=16, cache_dir=tmp_path / "c")
    assert data.truncated == 1
    assert len(data.ids2[0]) == 16 and data.ids2[0][-1] == tokenizer.sep_id
    np.testing.assert_array_equal(data.ids2[0], tokenizer.encode_ids([long], 16)[0])
    assert "1 sentence longer than max_length=16 tokens truncated" in caplog.text
    assert data.lengths[0] == 16


def test_sentences_empty_once_normalised_are_bad_rows(tmp_path, tokenizer, caplog):
    # Zero-width and control characters survive str.strip() but BERT's normaliser deletes them.
    rows = [("a", "a fine film", "1"), ("b", "\u200b\u200b", "2"), ("c", "\x07", "3"),
            ("d", "dull", "0")]
    p = sst_file(tmp_path, rows)
    assert tokenizer.encode_ids(["\u200b\u200b", "\x07"], 16)[0].tolist() == [
        tokenizer.cls_id, tokenizer.sep_id]
    with pytest.raises(DataError, match=r"line 3: a sentence is empty once normalised"):
        load_task(p, "sst", "train", tokenizer, max_length=16, cache_dir=False)
    with caplog.at_level(logging.WARNING, logger="bert_jax.data"):
        data = load_task(p, "sst", "train", tokenizer, max_length=16, cache_dir=False,
                         skip_bad_rows=True)
    assert data.example_ids == ["a", "d"] and data.labels.tolist() == [1, 0]
    assert "skipped 2 rows whose sentence is empty once normalised (lines 3, 4)" in caplog.text


def test_the_inference_api_loads_without_the_data_pipeline():
    """`bert_jax.api` (MultitaskModel) needs TaskData and batching, not `datasets` (1 s to
    import): the data modules import it only to read a file."""
    code = ("import sys, bert_jax.api, bert_jax.inference, bert_jax.task_data, bert_jax.batching; "
            "print(sorted(m for m in sys.modules if m == 'datasets' or m.startswith('datasets.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
