"""A run's data: the tokenized train and dev splits of each task, from the data folder, files
named one by one or a user task's own files, and the checks made on them before training."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from bert_jax.cs224n import TASKS, default_file, find_data_dir
from bert_jax.data import load_task
from bert_jax.task_data import TaskData
from bert_jax.tokenizer import Tokenizer
from bert_jax.task_file import read_tasks_file
from bert_jax.tasks import Task
from train.config import TrainConfig
from train.errors import TrainingError
from train.sst_phrases import add_phrases


@dataclasses.dataclass
class RunData:
    """Tokenized splits: `train[task]` for the tasks trained, `dev[task]` for every task defined
    (both in the order of the definitions: the built-ins, then the user's)."""
    tokenizer: Tokenizer
    train: dict[str, TaskData]
    dev: dict[str, TaskData]


def data_files(data_dir: str | None, overrides: dict[tuple[str, str], str] | None = None,
               user_tasks: tuple[Task, ...] = ()) -> dict[tuple[str, str], Path]:
    """{(task, split): path} for train and dev of every task: the built-ins' from `data_dir`
    (then `overrides`), a user task's from its definition (absolute paths)."""
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
    for task in user_tasks:
        for split in ("train", "dev"):
            files[task.name, split] = Path(task.file(split))
    return files


def run_files(cfg: TrainConfig, files: dict[tuple[str, str], Path] | None = None
              ) -> dict[tuple[str, str], Path]:
    """The run's files: `files` if given (a user task's own filled in from its definition),
    else `cfg`'s data fields and definitions."""
    if not files:
        return data_files(cfg.data_dir or None, cfg.data_overrides(), cfg.user_tasks)
    own = {(t.name, s): Path(t.file(s)) for t in cfg.user_tasks for s in ("train", "dev")}
    return {**own, **files}


def with_user_tasks(cfg: TrainConfig, tasks) -> TrainConfig:
    """`cfg` with user task definitions added (`Task`s, or a TOML task file's path), each
    trained (`cfg.tasks` gains its name); None: `cfg` as it is."""
    if tasks is None:
        return cfg
    if isinstance(tasks, (str, Path)):
        cfg, tasks = cfg.replace(tasks_file=str(tasks)), read_tasks_file(tasks)
    tasks = tuple(tasks)
    names = tuple(t.name for t in tasks)
    kept = tuple(t for t in cfg.user_tasks if t.name not in names)
    return cfg.replace(user_tasks=kept + tasks,
                       tasks=cfg.tasks + tuple(n for n in names if n not in cfg.tasks))


def load_run_data(cfg: TrainConfig, files: dict[tuple[str, str], Path]) -> RunData:
    tokenizer = Tokenizer.from_pretrained(cfg.init)
    load = lambda task, split, limit: load_task(
        files[task.name, split], task, split, tokenizer, max_length=cfg.max_length,
        limit=limit or None, skip_bad_rows=cfg.skip_bad_rows)
    tasks = cfg.task_definitions()
    train = {t.name: load(t, "train", cfg.limit_train) for t in tasks if t.name in cfg.tasks}
    train = add_phrases(train, cfg, tokenizer)
    dev = {t.name: load(t, "dev", cfg.limit_eval) for t in tasks}
    return RunData(tokenizer, train, dev)


def check_labels_vary(train: dict[str, TaskData]) -> None:
    """Refuse training data whose labels are all the same: a head learns nothing from it."""
    for task, data in train.items():
        if data.labels is not None and len(np.unique(data.labels)) < 2:
            raise TrainingError(
                f"{data.source or task}: every {task} training label is {data.labels[0]}: the "
                "head cannot learn from a single class. Check the file (or --limit-train, which "
                "keeps the first N rows)")
