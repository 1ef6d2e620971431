"""bert_jax.data.load_task: the whole pipeline in one call (load, validate, tokenize, view),
truncation counted, sentences empty once normalised treated as bad rows."""
from __future__ import annotations

import csv
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bert_jax.cs224n import DataError
from bert_jax.data import load_task
from bert_jax.embedded import embedded_model_dir
from conftest import require
from csv_files import HEADERS, sst_file, write_tsv


def _rows(path: Path) -> list[dict]:
    """The file's rows as `csv.DictReader` reads the CS224N tab-separated files."""
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_load_task(data_dir, tokenizer, tmp_path):
    """Ids, labels and token ids of each example equal an independent reading: csv.DictReader
    for the rows, transformers' BertTokenizerFast for the ids (truncated to max_length)."""
    hf = require("transformers").BertTokenizerFast.from_pretrained(embedded_model_dir())

    def hf_ids(sentences: list[str], max_length: int) -> list[list[int]]:
        return hf(sentences, truncation=True, max_length=max_length)["input_ids"]

    dev = load_task(data_dir, "sts", "dev", tokenizer, max_length=16, limit=50,
                    cache_dir=tmp_path)
    rows = _rows(data_dir / "sts-dev.csv")[:50]
    assert dev.source.endswith("sts-dev.csv") and len(dev) == 50
    assert dev.example_ids == [r["id"] for r in rows]
    np.testing.assert_array_equal(dev.labels, np.float32([float(r["similarity"]) for r in rows]))
    assert dev.labels.dtype == np.float32
    for ids, want in ((dev.ids1, hf_ids([r["sentence1"] for r in rows], 16)),
                      (dev.ids2, hf_ids([r["sentence2"] for r in rows], 16))):
        assert [a.tolist() for a in ids] == want
    full = [len(x) for x in hf([r[k] for r in rows for k in ("sentence1", "sentence2")])["input_ids"]]
    assert dev.truncated == sum(n > 16 for n in full) > 0
    test = load_task(data_dir / "sts-test-student.csv", "sts", "test", tokenizer,
                     max_length=64, limit=200, cache_dir=tmp_path)
    test_rows = _rows(data_dir / "sts-test-student.csv")[:200]
    assert test.labels is None and test.example_ids == [r["id"] for r in test_rows]
    assert [a.tolist() for a in test.ids1] == hf_ids([r["sentence1"] for r in test_rows], 64)
    sst = load_task(data_dir, "sst", "dev", tokenizer, limit=100, cache_dir=tmp_path)
    sst_rows = _rows(data_dir / "ids-sst-dev.csv")[:100]
    assert sst.ids2 is None and sst.labels.dtype == np.int32
    np.testing.assert_array_equal(sst.labels, [int(r["sentiment"]) for r in sst_rows])
    assert [a.tolist() for a in sst.ids1] == hf_ids([r["sentence"] for r in sst_rows], 128)
    with pytest.raises(DataError, match="no test file"):
        load_task(data_dir, "para", "test", tokenizer, cache_dir=tmp_path)
    para = load_task(data_dir, "para", "dev", tokenizer, limit=2000, skip_bad_rows=True,
                     cache_dir=tmp_path)
    para_rows = _rows(data_dir / "quora-dev.csv")[:2000]  # lines 2-2001: before the bad rows
    assert para.example_ids == [r["id"] for r in para_rows]
    np.testing.assert_array_equal(para.labels, [int(float(r["is_duplicate"])) for r in para_rows])
    assert para.labels.dtype == np.int32
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
