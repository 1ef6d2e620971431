"""`bert_jax.Tokenizer` against transformers' `BertTokenizerFast` on every dev sentence.

Texts are lowercased and stripped as the project does. (In transformers 5,
`BertTokenizerFast(vocab_file=...)` gives wrong ids, so the reference is `from_pretrained` on the
embedded model folder.)
"""
from __future__ import annotations

import csv

import numpy as np
import pytest
from conftest import require

transformers = require("transformers")

from bert_jax import Tokenizer  # noqa: E402
from bert_jax.pretrained import embedded_model_dir  # noqa: E402

KEYS = ("input_ids", "attention_mask", "token_type_ids")


def read_column(path, *columns):
    """One list of lowercased, stripped texts per column of a tab-separated file."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [[(row[c] or "").lower().strip() for row in rows] for c in columns]


@pytest.fixture(scope="module")
def texts(data_dir):
    """singles: every dev sentence (SST, Quora, STS); pairs: (first, second) of Quora + STS."""
    (sst,) = read_column(data_dir / "ids-sst-dev.csv", "sentence")
    quora = read_column(data_dir / "quora-dev.csv", "sentence1", "sentence2")
    sts = read_column(data_dir / "sts-dev.csv", "sentence1", "sentence2")
    assert (len(sst), len(quora[0]), len(sts[0])) == (1101, 20214, 863)
    return {"singles": sst + quora[0] + quora[1] + sts[0] + sts[1],
            "pairs": (quora[0] + sts[0], quora[1] + sts[1]),
            "sts": sts}


@pytest.fixture(scope="module")
def ours():
    return Tokenizer.from_pretrained("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def hf():
    return transformers.BertTokenizerFast.from_pretrained(embedded_model_dir())


def hf_arrays(hf, *texts, **kwargs):
    out = hf(*texts, return_tensors="np", return_token_type_ids=True, **kwargs)
    return {k: out[k] for k in KEYS}


def assert_same(ours_out, hf_out):
    for key in KEYS:
        assert ours_out[key].dtype == np.int32
        np.testing.assert_array_equal(ours_out[key], hf_out[key], err_msg=key)


def test_single_sentence_ids(ours, hf, texts):
    singles = texts["singles"]
    got = ours.encode_ids(singles, max_length=512)
    want = hf(singles, truncation=True, max_length=512)["input_ids"]
    assert all(g.dtype == np.int32 for g in got)
    bad = [i for i, (g, w) in enumerate(zip(got, want)) if g.tolist() != w]
    assert not bad, f"{len(bad)} sentences differ, first: {singles[bad[0]]!r}"
    lengths = ours.count_tokens(singles)
    assert lengths.dtype == np.int32
    np.testing.assert_array_equal(lengths, [len(w) for w in want])


def test_pairs_padded_to_longest(ours, hf, texts):
    first, second = texts["pairs"]
    got = ours(first, second, max_length=512, padding="longest")
    assert_same(got, hf_arrays(hf, first, second, truncation=True, max_length=512,
                               padding="longest"))
    assert got["token_type_ids"].max() == 1


@pytest.mark.parametrize("max_length", [8, 24])
def test_truncation_and_max_length_padding(ours, hf, texts, max_length):
    first, second = texts["sts"]
    singles = ours(first, max_length=max_length)
    assert singles["input_ids"].shape == (len(first), max_length)
    assert_same(singles, hf_arrays(hf, first, truncation=True, max_length=max_length,
                                   padding="max_length"))
    pairs = ours(first, second, max_length=max_length, padding="max_length")
    assert_same(pairs, hf_arrays(hf, first, second, truncation="longest_first",
                                 max_length=max_length, padding="max_length"))


def test_padding_modes(ours):
    batch = ["a b c d e f", "a"]
    longest = ours(batch, padding="longest")
    assert longest["input_ids"].shape == (2, 8)
    np.testing.assert_array_equal(longest["attention_mask"].sum(1), [8, 3])
    assert (longest["input_ids"][1, 3:] == ours.pad_id).all()
    assert ours(batch, max_length=16)["input_ids"].shape == (2, 16)
    with pytest.raises(ValueError, match="padding"):
        ours(batch, padding="do_not_pad")
