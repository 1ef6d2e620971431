"""`TrainConfig`: every setting of a training run, and the report's seven experiments as presets.

Each field carries its own help text and, for numbers, the argparse type that checks its range
(`setting(...)`): the command line (`train.multitask --help`) is generated from these fields, so
a setting is described in one place, and `train_config.json` records every one of them.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
from pathlib import Path
from typing import Any, Callable

from bert_jax.cli import (nonnegative_float, nonnegative_int, positive_float, positive_int,
                          seed_int)
from bert_jax.errors import ConfigError
from bert_jax.heads import HeadConfig
from bert_jax.tasks import BUILTIN_NAMES as TASKS, Task, TaskError, sha256_file
from bert_jax.model import ATTENTION_IMPLEMENTATIONS

MODES = ("multitask", "sequential")
# Settings a --resume may change: they change neither the data order nor the parameters' path.
RESUMABLE_CHANGES = frozenset({"epochs", "max_steps", "log_every", "limit_eval",
                               "eval_batch_size", "save_every", "keep_last", "resume", "data_dir",
                               "tensorboard", "tasks_file"})


def below_one(text: str) -> float:
    """argparse type: a number in [0, 1) (a probability of dropping, a moment's decay)."""
    value = nonnegative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"{text} is not allowed: pass a number from 0 up to "
                                         "(not including) 1")
    return value


def setting(default: Any, help: str, type: Callable | None = None) -> Any:
    """A `TrainConfig` field: its default, one sentence of help, and the argparse type that
    checks a value given on the command line (None: the field's own type)."""
    return dataclasses.field(default=default, metadata={"help": help, "type": type})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A training run. Defaults are the report's best system ("concat" preset, 10 epochs)."""
    # Model
    init: str = setting("all-MiniLM-L6-v2", "pretrained encoder: 'all-MiniLM-L6-v2' (the "
                        "embedded default), a folder written by `python -m bert_jax.convert`, "
                        "or a HuggingFace BERT folder")
    pooling: str = setting("mean", "sentence embedding: 'cls' (BERT's pooler output) or 'mean' "
                           "(masked mean of the last hidden states)")
    para_head: str = setting("concat", "paraphrase head: 'diff' (u-v -> linear), 'concat' "
                             "([|u-v|, u*v] -> dense -> ReLU -> dense) or 'cross' (the pair "
                             "encoded together, [CLS] a [SEP] b [SEP] -> linear)")
    sts_head: str = setting("cosine", "STS head: 'linear' (on u-v), 'cosine' (5 x cos(u, v)) "
                            "or 'cross' (the pair encoded together -> linear)")
    dropout: float = setting(0.1, "dropout of the task heads (the encoder keeps its own), "
                             "from 0 up to (not including) 1", below_one)
    dtype: str = setting("auto", "compute dtype: 'auto' (bfloat16 on GPU/TPU, float32 on CPU), "
                         "'float32' or 'bfloat16'; parameters stay float32")
    attention_impl: str = setting("xla", "attention kernel: 'xla' (everywhere) or 'cudnn' "
                                  "(NVIDIA GPUs, bfloat16, with --no-pack)")
    # What to train
    tasks: tuple[str, ...] = setting(TASKS, "comma-separated tasks to train: sst, para, sts and "
                                     "those of --tasks-file (without --tasks, every task of "
                                     "--tasks-file joins the preset's); dev scores always cover "
                                     "every task")
    tasks_file: str = setting("", "TOML file of your own task definitions, trained beside the "
                              "preset's (README: Your own tasks); '': none")
    user_tasks: tuple[Task, ...] = dataclasses.field(default=(), metadata={
        "help": "the definitions read from --tasks-file (recorded in train_config.json, so "
                "--resume and every tool find them without the file)", "cli": False})
    mode: str = setting("multitask", "'multitask' (a batch of every task per step, summed loss) "
                        "or 'sequential' (one task's batches at a time)")
    epochs: int = setting(10, "passes over the training data", positive_int)
    batch_size: int = setting(8, "examples per task per step, global (split over the devices)",
                              positive_int)
    eval_batch_size: int = setting(64, "dev examples per forward pass during evaluation",
                                   positive_int)
    max_length: int = setting(128, "tokens per sentence; longer sentences are truncated and "
                              "counted", positive_int)
    pack: bool = setting(True, "pack a step's sentences into rows without padding between them "
                         "(attention stays within a sentence); --no-pack pads them instead")
    pack_length: int = setting(64, "length of packed rows; steps holding a longer sentence use "
                               "--max-length", positive_int)
    num_buckets: int = setting(4, "static shapes per row length (packed) or padded lengths "
                               "(each compiles once)", positive_int)
    group_by_length: bool = setting(True, "with --no-pack: batch examples of similar length "
                                    "together")
    epoch_steps: str = setting("max", "multitask epoch length: the 'max' or the 'min' of the "
                               "tasks' batch counts (smaller tasks restart a seeded pass)")
    # Extra data, off by default (the report trained on SST sentences only): train/sst_phrases.py
    sst_phrases: str = setting("", "extra SST training data: a file of labelled phrases in the "
                               "format of ids-sst-train.csv (e.g. ../shared/data/sst-train-"
                               "phrases.csv); '' (the report's data): none; dev and test never "
                               "include phrases")
    sst_phrases_count: int = setting(-1, "phrases (a seeded sample) that join the SST "
                                     "sentences; -1: as many as make SST as large as the "
                                     "largest training task, so the epoch length stays that of "
                                     "the sentences-only run")
    sst_phrases_min_words: int = setting(5, "sample only phrases of at least this many words "
                                         "(shorter ones are mostly neutral fragments)",
                                         positive_int)
    sst_phrases_match_labels: bool = setting(True, "sample phrases in the label proportions of "
                                             "the SST training sentences; "
                                             "--no-sst-phrases-match-labels: a uniform sample")
    # Loss (the report: the plain sum of the three)
    loss_weights: str = setting("", "per-task weights in the summed loss, e.g. 'sst=2,para=0.5' "
                                "(a task not named: its definition's weight, 1 for the "
                                "built-ins); '': none")
    sst_ordinal: float = setting(0.0, "weight of an ordinal penalty on SST's five ordered "
                                 "classes, added to its cross-entropy: the squared earth "
                                 "mover's distance between the predicted distribution and the "
                                 "gold class (0: off)", nonnegative_float)
    # Optimiser (AdamW with PyTorch's defaults for betas and epsilon)
    lr: float = setting(1e-5, "peak learning rate of AdamW for the encoder", positive_float)
    head_lr: float = setting(0.0, "learning rate of the task heads (0: the same as --lr); fresh "
                             "heads learn slowly at the encoder's 1e-5", nonnegative_float)
    layer_lr_decay: float = setting(1.0, "layer-wise learning-rate decay: the top encoder layer "
                                    "and the pooler train at --lr, each layer below at DECAY "
                                    "times the one above, the embeddings at DECAY ** layers "
                                    "(1: off)", positive_float)
    weight_decay: float = setting(0.0, "AdamW's decoupled weight decay", nonnegative_float)
    b1: float = setting(0.9, "AdamW's first-moment decay (beta1), from 0 up to (not "
                        "including) 1", below_one)
    b2: float = setting(0.999, "AdamW's second-moment decay (beta2), from 0 up to (not "
                        "including) 1", below_one)
    eps: float = setting(1e-8, "AdamW's epsilon, added to the root of the second moment; above "
                         "0 (at 0 a parameter whose gradients are all 0 divides 0 by 0)",
                         positive_float)
    warmup_steps: int = setting(0, "linear warm-up of the learning rate from 0 over this many "
                                "steps", nonnegative_int)
    linear_decay: bool = setting(False, "decay the learning rate linearly to 0 at the last step")
    grad_clip: float = setting(0.0, "clip the global gradient norm to this value (0: off)",
                               nonnegative_float)
    # Run
    seed: int = setting(11711, "seed of the heads' initialisation, dropout and data order",
                        seed_int)
    max_steps: int = setting(0, "stop after this many steps in all (0: no limit); dev scores are "
                             "still computed", nonnegative_int)
    limit_train: int = setting(0, "use only the first N training examples of each task (0: all)",
                               nonnegative_int)
    limit_eval: int = setting(0, "evaluate on the first N dev examples of each task (0: all)",
                              nonnegative_int)
    log_every: int = setting(50, "log the mean losses every N steps (the only device-to-host "
                             "copy in the loop)", positive_int)
    save_every: int = setting(500, "also checkpoint every N steps (0: only at epoch ends)",
                              nonnegative_int)
    keep_last: int = setting(2, "whole training states kept in OUT/last (the newest N, about "
                             "211 MB each for the default model): --resume needs one; a second "
                             "is the fallback when the newest is damaged", positive_int)
    tensorboard: bool = setting(True, "also write the logged losses, gradient norm, learning "
                                "rates and dev scores as TensorBoard event files in "
                                "OUT/tensorboard (tensorboardX); --no-tensorboard: none")
    nonfinite: str = setting("stop", "on a non-finite loss: 'stop' the run, or 'skip' the step "
                             "and go on")
    skip_bad_rows: bool = setting(True, "skip (and list) malformed data rows; "
                                  "--no-skip-bad-rows: stop at the first one")
    # Where the data is ("" = the default): recorded so that a run says what it read
    data_dir: str = setting("", "folder with the CS224N files (default data/, else "
                            "../shared/data)")
    sst_train: str = setting("", "SST training file (overrides --data-dir)")
    sst_dev: str = setting("", "SST dev file (overrides --data-dir)")
    para_train: str = setting("", "Quora paraphrase training file (overrides --data-dir)")
    para_dev: str = setting("", "Quora paraphrase dev file (overrides --data-dir)")
    sts_train: str = setting("", "STS training file (overrides --data-dir)")
    sts_dev: str = setting("", "STS dev file (overrides --data-dir)")
    resume: bool = setting(False, "continue the run in --out from its newest intact checkpoint "
                           "with the same settings; only these may change: " + ", ".join(
                               "--" + name.replace("_", "-")
                               for name in sorted(RESUMABLE_CHANGES - {"resume"}))
                           + " (--epochs and --max-steps not under --linear-decay)")

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, not {self.mode!r}")
        object.__setattr__(self, "user_tasks", tuple(
            Task.from_dict(t) if isinstance(t, dict) else t for t in self.user_tasks))
        names = self.task_names()
        bad = [t for t in self.tasks if t not in names]
        if bad or not self.tasks:
            raise ConfigError(f"tasks must be a non-empty subset of {', '.join(names)}, not "
                              f"{','.join(self.tasks) or 'none'}" + (
                                  " (a task of your own needs --tasks-file)" if bad else ""))
        if self.nonfinite not in ("stop", "skip"):
            raise ConfigError(f"nonfinite must be 'stop' or 'skip', not {self.nonfinite!r}")
        if self.epoch_steps not in ("max", "min"):
            raise ConfigError(f"epoch_steps must be 'max' or 'min', not {self.epoch_steps!r}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"dtype must be 'auto', 'float32' or 'bfloat16', not {self.dtype!r}")
        if self.attention_impl not in ATTENTION_IMPLEMENTATIONS:
            raise ConfigError(f"attention_impl must be one of {ATTENTION_IMPLEMENTATIONS}, not "
                              f"{self.attention_impl!r}")
        if self.pack and self.attention_impl == "cudnn":
            raise ConfigError("attention_impl 'cudnn' takes no packed rows: pass --no-pack with it")
        if self.pack_length < 1:
            raise ConfigError(f"pack_length must be positive, not {self.pack_length}")
        if not 0.0 < self.layer_lr_decay <= 1.0:
            raise ConfigError(f"layer_lr_decay must be in (0, 1], not {self.layer_lr_decay}")
        if self.sst_phrases_count < -1:
            raise ConfigError("sst_phrases_count must be -1 (fill SST to the largest task) or a "
                             f"count >= 0, not {self.sst_phrases_count}")
        if self.sst_phrases_min_words < 1:
            raise ConfigError("sst_phrases_min_words must be at least 1, not "
                             f"{self.sst_phrases_min_words}")
        if self.sst_phrases and "sst" not in self.tasks:
            raise ConfigError("sst_phrases adds SST training data: the tasks must include sst")
        for f in dataclasses.fields(self):  # the ranges the command line checks hold here too
            check = f.metadata.get("type")
            if check is not None:
                try:
                    check(str(getattr(self, f.name)))
                except Exception as err:  # argparse.ArgumentTypeError
                    raise ConfigError(f"{f.name}: {err}") from None
        try:
            self.head_config()  # validates pooling, heads and the tasks' names
            self.loss_tasks()
        except (TaskError, ValueError) as err:
            raise ConfigError(str(err)) from None

    def compute_dtype(self, platform: str) -> str:
        """The dtype to compute in on `platform` ("cpu", "gpu", "tpu"): "auto" is bfloat16 on
        accelerators (their matrix units run it several times faster than float32) and float32
        on CPU (no such gain there: measured within noise on the development machine)."""
        if self.dtype != "auto":
            return self.dtype
        return "float32" if platform == "cpu" else "bfloat16"

    @property
    def sorts_by_length(self) -> bool:
        """Batches group similar lengths: only padded steps gain from it (packing needs none)."""
        return self.group_by_length and not self.pack

    def head_config(self) -> HeadConfig:
        return HeadConfig(pooling=self.pooling, para_head=self.para_head,
                          sts_head=self.sts_head, dropout=self.dropout,
                          extra_tasks=self.user_tasks)

    def task_definitions(self) -> tuple[Task, ...]:
        """Every task's definition: the built-ins (with this run's heads), then the user's."""
        return self.head_config().tasks

    def weights(self) -> dict[str, float]:
        """{task: weight} from `loss_weights` ('sst=2,para=0.5'); ConfigError naming the part."""
        out = {}
        for part in filter(None, (p.strip() for p in self.loss_weights.split(","))):
            name, _, value = part.partition("=")
            try:
                weight = float(value)
            except ValueError:
                weight = float("nan")
            if name.strip() not in self.task_names() or not weight > 0 or weight == float("inf"):
                raise ConfigError(f"loss_weights: {part!r} is not TASK=WEIGHT with a task of "
                                  f"{', '.join(self.task_names())} and a positive weight, e.g. "
                                  "'sst=2,para=0.5'")
            out[name.strip()] = weight
        return out

    def loss_tasks(self) -> tuple[Task, ...]:
        """The definitions the train step's losses follow: `task_definitions()` with this run's
        `loss_weights` and, for SST, `sst_ordinal` (training settings, not the model's)."""
        weights = self.weights()
        return tuple(t.replace(loss_weight=weights.get(t.name, t.loss_weight),
                               ordinal=self.sst_ordinal if t.name == "sst" else t.ordinal)
                     for t in self.task_definitions())

    def task_names(self) -> tuple[str, ...]:
        return TASKS + tuple(t.name for t in self.user_tasks)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def data_overrides(self) -> dict[tuple[str, str], str]:
        """{(task, split): file} for the file fields that are set."""
        return {(t, s): getattr(self, f"{t}_{s}") for t in TASKS for s in ("train", "dev")
                if getattr(self, f"{t}_{s}")}

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["tasks"] = list(self.tasks)
        d["user_tasks"] = [{**t.to_dict(), "sha256": _digests(t)} for t in self.user_tasks]
        return d

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown TrainConfig fields: {unknown}")
        values = dict(values)
        if "tasks" in values:
            values["tasks"] = tuple(values["tasks"])
        if "user_tasks" in values:
            values["user_tasks"] = tuple(
                Task.from_dict({k: v for k, v in t.items() if k != "sha256"})
                for t in values["user_tasks"])
        return cls(**values)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


@functools.lru_cache(maxsize=64)
def _digest(path: str, mtime_ns: int, size: int) -> str:
    return sha256_file(path)


def _digests(task: Task) -> dict[str, str | None]:
    """{split: sha256 of the file} of a user task (None: the file is gone)."""
    out = {}
    for split, path in task.files:
        try:
            st = Path(path).stat()
            out[split] = _digest(path, st.st_mtime_ns, st.st_size)
        except OSError:
            out[split] = None
    return out


# The report's seven cumulative experiments. Each adds one change to the one before.
_BASELINE = TrainConfig(tasks=("sst",), mode="sequential", pooling="cls", para_head="diff",
                        sts_head="linear", epochs=5)
PRESETS: dict[str, TrainConfig] = {}
PRESETS["baseline"] = _BASELINE
PRESETS["multi-dataset"] = PRESETS["baseline"].replace(tasks=TASKS)
PRESETS["cosine"] = PRESETS["multi-dataset"].replace(sts_head="cosine")
PRESETS["mean-pooling"] = PRESETS["cosine"].replace(pooling="mean")
PRESETS["multitask"] = PRESETS["mean-pooling"].replace(mode="multitask")
PRESETS["concat"] = PRESETS["multitask"].replace(para_head="concat")
PRESETS["more-epochs"] = PRESETS["concat"].replace(epochs=10)

PRESET_NOTES = {
    "baseline": "SST only, [CLS] pooler, diff/linear heads (untrained heads score para and STS)",
    "multi-dataset": "+ train on SST, Quora and STS, one task's batches at a time",
    "cosine": "+ STS head = 5 x cosine(u, v), MSE",
    "mean-pooling": "+ sentence embedding = masked mean of the last hidden states",
    "multitask": "+ one step draws a batch of every task and sums the three losses",
    "concat": "+ paraphrase head [|u-v|, u*v] -> dense -> ReLU -> dense",
    "more-epochs": "+ 10 epochs instead of 5",
}
