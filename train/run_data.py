"""A run's data: the tokenized train and dev splits of each task, from the data folder or
files named one by one, and the checks made on them before training."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from bert_jax.cs224n import default_file, find_data_dir
from bert_jax.data import load_task
from bert_jax.task_data import TaskData
from bert_jax.tokenizer import Tokenizer
from train.config import TASKS, TrainConfig
from train.errors import TrainingError
from train.sst_phrases import add_phrases


@dataclasses.dataclass
class RunData:
    """Tokenized splits: `train[task]` for the tasks trained, `dev[task]` for all three."""
    tokenizer: Tokenizer
    train: dict[str, TaskData]
    dev: dict[str, TaskData]


def data_files(data_dir: str | None, overrides: dict[tuple[str, str], str] | None = None
               ) -> dict[tuple[str, str], Path]:
    """{(task, split): path} for train and dev of every task: `data_dir` defaults, then overrides."""
    overrides = overrides or {}
    files = {}
    base = None
    for task in TASKS:
        for split in ("train", "dev"):
            if (task, split) in overrides and overrides[task, split]:
                files[task, split] = Path(overrides[task, split])
            else:
                base = base or find_data_dir(data_dir)
                files[task, split] = base / default_file(task, split)
    return files


def load_run_data(cfg: TrainConfig, files: dict[tuple[str, str], Path]) -> RunData:
    tokenizer = Tokenizer.from_pretrained(cfg.init)
    load = lambda task, split, limit: load_task(
        files[task, split], task, split, tokenizer, max_length=cfg.max_length,
        limit=limit or None, skip_bad_rows=cfg.skip_bad_rows)
    train = {t: load(t, "train", cfg.limit_train) for t in cfg.tasks}
    train = add_phrases(train, cfg, tokenizer)
    dev = {t: load(t, "dev", cfg.limit_eval) for t in TASKS}
    return RunData(tokenizer, train, dev)


def check_labels_vary(train: dict[str, TaskData]) -> None:
    """Refuse training data whose labels are all the same: a head learns nothing from it."""
    for task, data in train.items():
        if data.labels is not None and len(np.unique(data.labels)) < 2:
            raise TrainingError(
                f"{data.source or task}: every {task} training label is {data.labels[0]}: the "
                "head cannot learn from a single class. Check the file (or --limit-train, which "
                "keeps the first N rows)")
