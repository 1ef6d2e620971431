"""Phrase-level SST supervision: labelled phrases of the SST *train* trees join the SST sentences.

`sst-train-phrases.csv` (150,739 rows, the format of `ids-sst-train.csv`: id, sentence,
sentiment 0..4) holds every inner node of the Stanford Sentiment Treebank's train trees, whole
sentences left out. Training on phrases as well as sentences is what the treebank was built for
(Socher et al., 2013); the report trained on sentences only, so this is off by default
(`TrainConfig.sst_phrases == ""`) and runs that use it are runs with extra data.

What joins the SST training set, and why (the aim is SST-5 accuracy on dev *sentences*):

- **How many** (`sst_phrases_count`, default -1 = "fill"): as many phrases as make SST as large
  as the largest training task. A multitask epoch has as many steps as the largest task has
  batches (Quora here: 13,507 // 8 = 1,688), and SST, the smaller task, already starts a second
  seeded pass of its 8,544 sentences within each epoch; filling it with 13,507 - 8,544 = 4,963
  phrases replaces those repeats by new labelled text while the epoch length, the number of
  steps and the schedule stay those of the sentences-only run (an equal training budget).
  With the full Quora file "fill" adds more phrases (all that pass the filter at most).
- **Which** (`sst_phrases_min_words`, default 5): phrases of at least 5 words (PTB tokens as
  written in the file). Short phrases are mostly neutral fragments (74% of single tokens and
  61% of three-word phrases are labelled 2, against 19% of the sentences) and far from the
  sentences scored on dev (19 words on average); phrases of 5 or more words (70,578) are the
  closest to sentences, and their labels, which often differ from their sentence's, carry what
  the sentence label alone cannot: which part of a sentence holds the sentiment, and how
  negation and contrast ("but ...") change it.
- **With which labels** (`sst_phrases_match_labels`, default True): the sample is stratified
  so that its label distribution equals that of the SST training sentences (largest-remainder
  quotas, a class short of phrases gives its share to the others). Even at >= 5 words 39% of
  the phrases are neutral; an unstratified sample would move the class prior the SST head
  learns toward neutral (19% of the sentences, 21% of dev) and tilt its argmax there. Matching
  the prior keeps the decision threshold of the sentences-only run, so only the extra text
  differs.

The sample is a function of the file, the knobs and `TrainConfig.seed` only (numpy
`default_rng([seed, _SEED_SALT])`), so a run and its `--resume` see the same phrases. Dev and
test data never include phrases: only `train["sst"]` is changed.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from bert_jax.cs224n import load_split_with_report
from bert_jax.task_data import TaskData, task_data
from bert_jax.token_cache import count_truncated, tokenize_split

log = logging.getLogger("train.sst_phrases")

NUM_LABELS = 5
FILL = -1               # sst_phrases_count: as many as make SST as large as the largest task
_SEED_SALT = 0x5E5      # keeps the phrase sample apart from the other uses of the seed


def fill_count(train: dict[str, TaskData]) -> int:
    """Phrases that make SST as large as the largest training task (0 when SST is largest)."""
    return max(0, max(len(d) for d in train.values()) - len(train["sst"]))


def label_quotas(count: int, weights: np.ndarray, available: np.ndarray) -> np.ndarray:
    """[NUM_LABELS] int: how many phrases of each label to draw.

    `count` phrases split in proportion to `weights` ([NUM_LABELS], e.g. the sentences' label
    counts) by largest remainder (ties: lower label first), never more than `available`
    ([NUM_LABELS]) of a label; a label short of phrases gives the rest of its share to the
    others, again in proportion. Labels of weight 0 get none, so the sum can fall short of
    `count` when the weighted labels run out.
    """
    weights = np.asarray(weights, np.float64)
    available = np.asarray(available, np.int64)
    quotas = np.zeros(len(weights), np.int64)
    remaining = int(count)
    while remaining > 0:
        open_ = (weights > 0) & (quotas < available)
        if not open_.any():
            break
        share = np.where(open_, remaining * weights / weights[open_].sum(), 0.0)
        take = np.floor(share).astype(np.int64)
        leftover = remaining - int(take.sum())
        order = sorted(np.flatnonzero(open_), key=lambda c: (-(share[c] - take[c]), c))
        for c in order[:leftover]:
            take[c] += 1
        take = np.minimum(take, available - quotas)
        quotas += take
        remaining -= int(take.sum())
    return quotas


def select_phrases(words: np.ndarray, labels: np.ndarray, count: int, min_words: int,
                   seed: int, label_weights: np.ndarray | None = None) -> np.ndarray:
    """Sorted row indices of the phrases to train on: a seeded sample without replacement.

    `words` [n]: each phrase's word count; `labels` [n]: its label 0..4. Only phrases of at
    least `min_words` words are candidates; `count` of them are drawn (all of them when fewer).
    `label_weights` [NUM_LABELS] (e.g. the sentences' label counts): draw per label in these
    proportions (see `label_quotas`); None: a uniform sample of the candidates.
    """
    words, labels = np.asarray(words), np.asarray(labels)
    candidates = np.flatnonzero(words >= min_words)
    rng = np.random.default_rng([seed, _SEED_SALT])
    if label_weights is None:
        n = min(count, len(candidates))
        return np.sort(rng.choice(candidates, n, replace=False))
    by_label = [candidates[labels[candidates] == c] for c in range(NUM_LABELS)]
    quotas = label_quotas(count, label_weights, np.array([len(b) for b in by_label]))
    picked = [rng.choice(b, q, replace=False) for b, q in zip(by_label, quotas)]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def load_phrases(path: str | Path, tokenizer, *, count: int, min_words: int, seed: int,
                 max_length: int, label_weights: np.ndarray | None = None,
                 skip_bad_rows: bool = True) -> TaskData:
    """The sampled phrases of `path` as SST `TaskData` (ids1: [CLS] phrase [SEP], labels 0..4).

    The file is parsed and validated like `ids-sst-train.csv` (`bert_jax.data`'s loader for
    task "sst", split "train"); only the sampled rows are tokenized (cached on disk like any
    split). Arguments as in `select_phrases`.
    """
    ds, _ = load_split_with_report(path, "sst", labeled=True, skip_bad_rows=skip_bad_rows)
    table = ds.with_format("arrow")[:]
    words = np.fromiter((len(s.split()) for s in table.column("sentence1").to_pylist()),
                        np.int64, len(ds))
    labels = table.column("label").to_numpy()
    rows = select_phrases(words, labels, count, min_words, seed, label_weights)
    if len(rows) < count:
        log.warning("%s: %d phrases asked for, only %d of at least %d words%s", path, count,
                    len(rows), min_words, " in the sentences' labels" if label_weights is not None
                    else "")
    tok = tokenize_split(ds.select(rows), tokenizer, max_length)
    data = task_data(tok, "sst")
    data.truncated = count_truncated(tok, max_length)
    data.source = str(path)
    return data


def merge(sentences: TaskData, phrases: TaskData) -> TaskData:
    """One SST training set: the sentences (first, in file order), then the phrases."""
    return TaskData(
        task="sst", ids1=list(sentences.ids1) + list(phrases.ids1), ids2=None,
        labels=np.concatenate([sentences.labels, phrases.labels]).astype(np.int32),
        example_ids=list(sentences.example_ids) + list(phrases.example_ids),
        truncated=sentences.truncated + phrases.truncated,
        source=f"{sentences.source} + {phrases.source}")


def add_phrases(train: dict[str, TaskData], cfg, tokenizer
                ) -> dict[str, TaskData]:
    """`train` with the configured phrases merged into `train["sst"]` (a new dict; the input is
    not changed). `cfg`: a `TrainConfig`; `cfg.sst_phrases == ""` returns `train` itself."""
    if not cfg.sst_phrases:
        return train
    sentences = train["sst"]
    count = fill_count(train) if cfg.sst_phrases_count == FILL else cfg.sst_phrases_count
    weights = None
    if cfg.sst_phrases_match_labels:
        weights = np.bincount(sentences.labels, minlength=NUM_LABELS)[:NUM_LABELS]
    if count == 0:
        log.warning("sst_phrases: no phrases added (SST already has %d examples, the largest "
                    "task %d); pass --sst-phrases-count N", len(sentences),
                    max(len(d) for d in train.values()))
        return train
    phrases = load_phrases(cfg.sst_phrases, tokenizer, count=count,
                           min_words=cfg.sst_phrases_min_words, seed=cfg.seed,
                           max_length=cfg.max_length, label_weights=weights,
                           skip_bad_rows=cfg.skip_bad_rows)
    log.info("sst_phrases: %d phrases of >= %d words from %s join %d sentences (labels 0..4: "
             "%s)", len(phrases), cfg.sst_phrases_min_words, cfg.sst_phrases, len(sentences),
             np.bincount(phrases.labels, minlength=NUM_LABELS).tolist())
    return {**train, "sst": merge(sentences, phrases)}
