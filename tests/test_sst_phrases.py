"""--sst-phrases: labelled SST train-tree phrases join the SST training sentences (train only)."""
from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest

from train import sst_phrases as sp
from train.config import PRESETS, TrainConfig

PHRASES = "sst-train-phrases.csv"


@pytest.fixture(scope="module")
def phrase_rows(data_dir) -> dict[str, tuple[int, int]]:
    """{id: (words, label)} of every row of the phrases file, read with csv.DictReader."""
    with open(data_dir / PHRASES, newline="") as f:
        return {r["id"]: (len(r["sentence"].split()), int(r["sentiment"]))
                for r in csv.DictReader(f, delimiter="\t")}


@pytest.fixture(scope="module")
def small_phrases(data_dir, tmp_path_factory):
    """The first 3,000 rows of the phrases file (fast to parse), as a file of the same format."""
    lines = (data_dir / PHRASES).read_text().splitlines(keepends=True)
    path = tmp_path_factory.mktemp("phrases") / "phrases-3000.csv"
    path.write_text("".join(lines[:3001]))
    return path


def _config(phrases="", **changes) -> TrainConfig:
    return PRESETS["concat"].replace(sst_phrases=str(phrases), limit_train=40, limit_eval=16,
                                     **changes)


def _run_data(cfg, data_dir):
    from train.multitask import data_files, load_run_data
    return load_run_data(cfg, data_files(str(data_dir)))


def _same(a, b) -> bool:
    return (a.example_ids == b.example_ids and np.array_equal(a.labels, b.labels)
            and len(a.ids1) == len(b.ids1)
            and all(np.array_equal(x, y) for x, y in zip(a.ids1, b.ids1))
            and (a.ids2 is None) == (b.ids2 is None)
            and (a.ids2 is None or all(np.array_equal(x, y) for x, y in zip(a.ids2, b.ids2))))


@pytest.mark.slow
def test_off_by_default_and_training_data_unchanged(data_dir, tokenizer):
    assert TrainConfig().sst_phrases == "" and PRESETS["concat"].sst_phrases == ""
    from bert_jax.data import load_task
    run = _run_data(_config(), data_dir)
    for task, got in run.train.items():
        want = load_task(data_dir, task, "train", tokenizer, max_length=128, limit=40,
                         skip_bad_rows=True)
        assert _same(got, want), task
    train = dict(run.train)
    assert sp.add_phrases(train, _config(), tokenizer) is train


@pytest.mark.slow
def test_on_phrases_join_sst_train_only_and_dev_is_untouched(data_dir, small_phrases,
                                                              phrase_rows):
    off = _run_data(_config(), data_dir)
    on = _run_data(_config(small_phrases, sst_phrases_count=25, sst_phrases_min_words=3), data_dir)
    sst = on.train["sst"]
    assert len(sst) == 40 + 25
    assert sst.example_ids[:40] == off.train["sst"].example_ids  # the sentences come first
    assert all(i.startswith("p") for i in sst.example_ids[40:])
    assert sst.labels.dtype == np.int32 and len(sst.ids1) == len(sst.labels)
    for task in ("para", "sts"):
        assert _same(on.train[task], off.train[task])
    for task in ("sst", "para", "sts"):
        assert _same(on.dev[task], off.dev[task])
        assert not any(i in phrase_rows for i in on.dev[task].example_ids)


@pytest.mark.parametrize("match", [True, False])
def test_count_min_words_and_labels_hold(small_phrases, phrase_rows, tokenizer, match):
    weights = np.array([1, 2, 2, 2, 1]) if match else None
    data = sp.load_phrases(small_phrases, tokenizer, count=60, min_words=4, seed=3,
                           max_length=128, label_weights=weights)
    assert len(data) == 60 == len(set(data.example_ids))
    for ex_id, label in zip(data.example_ids, data.labels):
        words, file_label = phrase_rows[ex_id]
        assert words >= 4 and label == file_label
    # Each phrase is tokenized as a sentence: [CLS] ... [SEP], at least one token per word.
    assert all(r[0] == tokenizer.cls_id and r[-1] == tokenizer.sep_id and len(r) >= 6
               for r in data.ids1)
    if match:  # 60 in proportions 1:2:2:2:1
        assert np.bincount(data.labels, minlength=5).tolist() == [8, 15, 15, 15, 7]


def test_sample_is_deterministic_in_the_seed(small_phrases, tokenizer):
    load = lambda seed: sp.load_phrases(small_phrases, tokenizer, count=30, min_words=3,
                                        seed=seed, max_length=128).example_ids
    assert load(11711) == load(11711)
    assert load(11711) != load(1)


def test_more_than_available_takes_all_candidates(small_phrases, phrase_rows, tokenizer):
    small_ids = set(list(phrase_rows)[:3000])
    long_ones = {i for i in small_ids if phrase_rows[i][0] >= 20}
    data = sp.load_phrases(small_phrases, tokenizer, count=10_000, min_words=20, seed=0,
                           max_length=128)
    assert set(data.example_ids) == long_ones


@pytest.mark.slow
def test_fill_makes_sst_as_large_as_the_largest_task(data_dir, tokenizer):
    from train.input_pipeline import steps_per_epoch
    cfg = _config(data_dir / PHRASES)  # count -1: fill
    off = _run_data(_config().replace(limit_train=0, tasks=("sst",)), data_dir).train["sst"]
    para = dataclasses.replace(off, task="para", ids1=off.ids1 * 2, ids2=off.ids1 * 2,
                               labels=np.zeros(2 * len(off), np.int32),
                               example_ids=[f"q{i}" for i in range(2 * len(off))])
    train = {"sst": off, "para": para}
    assert sp.fill_count(train) == len(off)
    on = sp.add_phrases(train, cfg, tokenizer)
    assert len(on["sst"]) == len(para) and on["para"] is para and train["sst"] is off
    assert steps_per_epoch(on, cfg) == steps_per_epoch(train, cfg)
    # Matched labels: as many phrases as sentences, so the same count of every label.
    assert (np.bincount(on["sst"].labels[len(off):], minlength=5).tolist()
            == np.bincount(off.labels, minlength=5).tolist())
    # SST already the largest: nothing to fill.
    assert sp.add_phrases({"sst": off}, cfg, tokenizer)["sst"] is off


def test_label_quotas_cap_and_redistribute():
    assert sp.label_quotas(10, [1, 1, 1, 1, 1], [9] * 5).tolist() == [2, 2, 2, 2, 2]
    assert sp.label_quotas(7, [1, 1, 1, 1, 1], [9] * 5).tolist() == [2, 2, 1, 1, 1]
    # Label 0 has only 1 phrase: its share goes to the others in proportion.
    assert sp.label_quotas(10, [4, 1, 1, 1, 1], [1, 9, 9, 9, 9]).tolist() == [1, 3, 2, 2, 2]
    # Weight 0: none; not enough phrases in the weighted labels: all of them.
    assert sp.label_quotas(10, [1, 0, 1, 0, 0], [2, 9, 3, 9, 9]).tolist() == [2, 0, 3, 0, 0]
    assert sp.label_quotas(0, [1] * 5, [9] * 5).tolist() == [0] * 5


def test_bad_values_are_refused(data_dir, tokenizer):
    with pytest.raises(ValueError, match="sst_phrases_count"):
        TrainConfig(sst_phrases_count=-2)
    with pytest.raises(ValueError, match="sst_phrases_min_words"):
        TrainConfig(sst_phrases_min_words=0)
    with pytest.raises(ValueError, match="tasks must include sst"):
        TrainConfig(sst_phrases="x.csv", tasks=("para", "sts"))
    from train.multitask import build_parser, config_from_args
    args = build_parser().parse_args(["--sst-phrases", "p.csv", "--sst-phrases-count", "-1",
                                      "--sst-phrases-min-words", "3",
                                      "--no-sst-phrases-match-labels"])
    cfg = config_from_args(args)
    assert (cfg.sst_phrases, cfg.sst_phrases_count, cfg.sst_phrases_min_words,
            cfg.sst_phrases_match_labels) == ("p.csv", -1, 3, False)
    with pytest.raises(ValueError, match="sst_phrases_count"):
        config_from_args(build_parser().parse_args(["--sst-phrases-count", "-5"]))
    # A file that is not a labelled SST file is refused with the loader's error.
    from bert_jax.cs224n import DataError
    with pytest.raises(DataError, match="missing column"):
        sp.load_phrases(data_dir / "sts-dev.csv", tokenizer, count=5, min_words=1, seed=0,
                        max_length=32)
