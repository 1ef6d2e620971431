"""Helpers the data tests share: writing CS224N-format TSV files and checking DataErrors."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from bert_jax.cs224n import DataError, load_split

HEADERS = {"sst": ["", "id", "sentence", "sentiment"],
           "para": ["", "id", "sentence1", "sentence2", "is_duplicate"],
           "sts": ["", "id", "sentence1", "sentence2", "similarity"]}


SKIP_HINT = "skip_bad_rows=True"


def write_tsv(path: Path, header, rows) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(header)
        for i, row in enumerate(rows):
            w.writerow([str(i)] + list(row))
    return path


def sst_file(tmp_path, rows, name="sst.csv"):
    return write_tsv(tmp_path / name, HEADERS["sst"], rows)


def good_sst(n=3):
    return [(f"id{i}", f"A fine sentence {i} .", str(i % 5)) for i in range(n)]


def raises(path, task="sst", line=None, match=None, hint=SKIP_HINT, **kw):
    """Load and check the DataError: file name, `line N`, the problem and the hint."""
    with pytest.raises(DataError) as info:
        load_split(path, task, **kw)
    msg = str(info.value)
    assert Path(path).name in msg
    if line is not None:
        assert f"line {line}:" in msg
    if match is not None:
        assert match in msg, msg
    if hint is not None:
        assert hint in msg, msg
    return msg
