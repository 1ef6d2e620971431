"""Cross-encoded pairs (`[CLS] a [SEP] b [SEP]`, token types 0/1): `Tokenizer.encode_pair_ids`
and `tokenize_split(cross=True)` against transformers' `BertTokenizerFast(a, b)`, and the encoder
on the joint sequences (padded, and packed several to a row) against PyTorch `BertModel`.

Real Quora and STS dev pairs, lowercased and stripped as the project does, plus long pairs that
force longest-first truncation at a small `max_length`, the first side longer and the second.
"""
from __future__ import annotations

import csv
import hashlib
import logging

import datasets
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require

torch = require("torch")
transformers = require("transformers")

from bert_jax.model import BertModel  # noqa: E402
from bert_jax.packing import pack  # noqa: E402
from bert_jax.embedded import embedded_model_dir  # noqa: E402
from bert_jax.token_cache import (  # noqa: E402
    _CACHE_VERSION, _dataset_digest, _tokenizer_digest, cache_key, count_truncated,
    tokenize_split)
from bert_jax.tokenizer import pad_ids, pair_type_ids  # noqa: E402

ATOL = 1e-5
MAX_LENGTHS = (512, 40, 24)


def read_pairs(path, n):
    """The first `n` (sentence1, sentence2) of a tab-separated file, lowercased and stripped."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))[:n]
    return [(r["sentence1"].lower().strip(), r["sentence2"].lower().strip()) for r in rows]


@pytest.fixture(scope="module")
def pairs(data_dir):
    """([a], [b]): 10 Quora and 10 STS dev pairs, then four long ones: a much longer than b,
    b much longer than a, both long, both long and equal in length."""
    real = read_pairs(data_dir / "quora-dev.csv", 10) + read_pairs(data_dir / "sts-dev.csv", 10)
    long_a = " ".join(a for a, _ in real[10:16])
    long_b = " ".join(b for _, b in real[:8])
    extra = [(long_a, real[2][1]), (real[13][0], long_b), (long_a, long_b),
             ("one two three " * 12, "four five six " * 12)]
    first, second = zip(*(real + extra))
    return list(first), list(second)


@pytest.fixture(scope="module")
def hf():
    return transformers.BertTokenizerFast.from_pretrained(embedded_model_dir())


def hf_pairs(hf, a, b, max_length=None):
    """(ids, token types) per pair, as lists, from BertTokenizerFast(a, b)."""
    kwargs = {"truncation": True, "max_length": max_length} if max_length else {}
    out = hf(a, b, return_token_type_ids=True, **kwargs)
    return out["input_ids"], out["token_type_ids"]


@pytest.mark.parametrize("max_length", MAX_LENGTHS)
def test_joint_ids_and_token_types_equal_bert_tokenizer_fast(tokenizer, hf, pairs, max_length):
    a, b = pairs
    want_ids, want_types = hf_pairs(hf, a, b, max_length)
    got = tokenizer.encode_pair_ids(a, b, max_length=max_length)
    assert len(got) == len(a)
    for i, ((ids, first), w_ids, w_types) in enumerate(zip(got, want_ids, want_types)):
        assert ids.dtype == np.int32 and isinstance(first, int)
        assert ids.tolist() == w_ids, f"pair {i}: {a[i]!r} / {b[i]!r}"
        types = pair_type_ids(len(ids), first)
        assert types.dtype == np.int32
        assert types.tolist() == w_types, f"pair {i}"
    if max_length < 512:  # the comparison covers longest-first cuts of each side
        full_a, full_b = (tokenizer.count_tokens(t) - 2 for t in pairs)
        kept_a = np.asarray([first - 2 for _, first in got])
        kept_b = np.asarray([len(ids) - first - 1 for ids, first in got])
        assert ((kept_a < full_a) & (kept_b == full_b)).any()  # only a cut
        assert ((kept_b < full_b) & (kept_a == full_a)).any()  # only b cut
        assert ((kept_a < full_a) & (kept_b < full_b)).any()  # both cut
        assert max(len(ids) for ids, _ in got) == max_length


def test_pair_type_ids_and_bad_arguments(tokenizer):
    np.testing.assert_array_equal(pair_type_ids(5, 3), [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(pair_type_ids(3, 3), [0, 0, 0])
    with pytest.raises(ValueError, match="outside"):
        pair_type_ids(3, 4)
    with pytest.raises(ValueError, match="at least 3"):
        tokenizer.encode_pair_ids(["a"], ["b"], max_length=2)
    with pytest.raises(TypeError, match="two lists"):
        tokenizer.encode_pair_ids("a", "b")
    with pytest.raises(ValueError, match="texts_pair"):
        tokenizer.encode_pair_ids(["a", "b"], ["c"])


def pair_dataset(a, b):
    return datasets.Dataset.from_dict({"id": [f"p{i}" for i in range(len(a))],
                                       "sentence1": a, "sentence2": b,
                                       "label": [i % 2 for i in range(len(a))]})


def test_tokenize_split_cross(tokenizer, hf, pairs, tmp_path, caplog):
    a, b = pairs
    ds = pair_dataset(a, b)
    max_length = 24
    with caplog.at_level(logging.WARNING, logger="bert_jax.data"):
        tok = tokenize_split(ds, tokenizer, max_length, cross=True, cache_dir=tmp_path)
    assert {"ids1", "len1", "first1"} <= set(tok.column_names)
    assert not {"ids2", "len2"} & set(tok.column_names)
    want_ids, want_types = hf_pairs(hf, a, b, max_length)
    full_ids, _ = hf_pairs(hf, a, b)
    assert tok["ids1"][:] == want_ids
    assert [pair_type_ids(len(i), f).tolist() for i, f in zip(tok["ids1"], tok["first1"])] \
        == want_types
    assert tok["len1"][:] == [len(i) for i in full_ids]
    n = sum(len(i) > max_length for i in full_ids)
    assert 0 < n < len(a)
    assert count_truncated(tok, max_length) == n
    assert f"{n} pairs longer than max_length={max_length} tokens truncated (of {len(a)})" \
        in caplog.text

    # a second call reads the cache; the bi encoding of the same split is another file
    (cross_file,) = tmp_path.glob("tokens-*.arrow")
    again = tokenize_split(pair_dataset(a, b), tokenizer, max_length, cross=True,
                           cache_dir=tmp_path)
    assert [f["filename"] for f in again.cache_files] == [str(cross_file)]
    bi = tokenize_split(ds, tokenizer, max_length, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("tokens-*.arrow"))) == 2
    assert bi.cache_files[0]["filename"] != str(cross_file)
    assert {"ids1", "ids2", "len1", "len2"} <= set(bi.column_names)
    assert "first1" not in bi.column_names
    assert bi["ids1"][:] == [ids.tolist() for ids in tokenizer.encode_ids(a, max_length)]
    # the bi key is what it was before `cross` existed, so caches written then still hit
    h = hashlib.sha256()
    for part in (_CACHE_VERSION, _dataset_digest(ds), _tokenizer_digest(tokenizer),
                 str(max_length)):
        h.update(part.encode() + b"\0")
    assert cache_key(ds, tokenizer, max_length) == h.hexdigest()
    assert cache_key(ds, tokenizer, max_length, cross=True) != h.hexdigest()


def test_tokenize_split_cross_needs_pairs(tokenizer):
    singles = datasets.Dataset.from_dict({"id": ["a"], "sentence1": ["hello"], "label": [1]})
    with pytest.raises(ValueError, match="no sentence2"):
        tokenize_split(singles, tokenizer, 16, cross=True, cache_dir=False)


# ------------------------------------------------------------------------------ the encoder

@pytest.fixture(scope="module")
def joint(tokenizer, pairs):
    """Eight joint sequences (4 real pairs, 4 long ones cut at 40 tokens) padded to the longest:
    int32 `input_ids`, `attention_mask`, `token_type_ids` [8, T], and the unpadded (ids, first)."""
    a, b = pairs
    pick = [0, 1, 12, 13, 20, 21, 22, 23]
    rows = tokenizer.encode_pair_ids([a[i] for i in pick], [b[i] for i in pick], max_length=40)
    length = max(len(ids) for ids, _ in rows)
    input_ids, mask = pad_ids([ids for ids, _ in rows], length, tokenizer.pad_id)
    types = np.zeros_like(input_ids)
    for r, (ids, first) in enumerate(rows):
        types[r, :len(ids)] = pair_type_ids(len(ids), first)
    return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": types}, rows


@pytest.fixture(scope="module")
def padded_out(default_model, joint):
    config, params = default_model
    batch, _ = joint
    return BertModel(config, dtype=jnp.float32).apply(
        {"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])


def test_encoder_on_joint_sequences_equals_torch(joint, padded_out):
    batch, _ = joint
    assert batch["attention_mask"].min() == 0 and batch["token_type_ids"].max() == 1
    model = transformers.BertModel.from_pretrained(embedded_model_dir()).eval()
    with torch.no_grad():
        want = model(**{k: torch.from_numpy(v.astype(np.int64)) for k, v in batch.items()})
    keep = batch["attention_mask"].astype(bool)
    hidden = np.asarray(padded_out.last_hidden_state)
    np.testing.assert_allclose(hidden[keep], want.last_hidden_state.numpy()[keep], rtol=0,
                               atol=ATOL)
    np.testing.assert_allclose(np.asarray(padded_out.pooler_output), want.pooler_output.numpy(),
                               rtol=0, atol=ATOL)


def test_packed_joint_sequences_equal_the_padded_pass(default_model, joint, padded_out):
    config, params = default_model
    batch, rows = joint
    ids = [r for r, _ in rows]
    packed = pack(ids, row_length=64)
    assert len(packed["input_ids"]) < len(ids)  # several pairs share a row
    types = np.zeros_like(packed["input_ids"])  # each pair's types where pack put its ids
    for k, (r, first) in enumerate(rows):
        where = packed["segment_ids"] == k + 1
        assert (packed["input_ids"][where] == r).all()
        types[where] = pair_type_ids(len(r), first)

    def run(token_type_ids):
        return BertModel(config, dtype=jnp.float32).apply(
            {"params": params}, packed["input_ids"], None, token_type_ids,
            position_ids=packed["position_ids"], segment_ids=packed["segment_ids"],
            num_segments=len(ids))

    out = run(types)
    hidden = np.asarray(out.last_hidden_state)
    want = np.asarray(padded_out.last_hidden_state)
    for k, r in enumerate(ids):
        np.testing.assert_allclose(hidden[packed["segment_ids"] == k + 1], want[k, :len(r)],
                                   rtol=0, atol=ATOL, err_msg=f"pair {k}")
    np.testing.assert_allclose(np.asarray(out.pooler_output),
                               np.asarray(padded_out.pooler_output), rtol=0, atol=ATOL)
    # the token types matter: all zeros is a different encoding
    zeros = np.asarray(run(np.zeros_like(types)).last_hidden_state)
    assert np.abs(zeros[packed["segment_ids"] == 1] - want[0, :len(ids[0])]).max() > 1e-2
