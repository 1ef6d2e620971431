"""`TrainConfig`: every knob of a training run, and the report's seven experiments as presets."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from bert_jax.heads import HeadConfig

TASKS = ("sst", "para", "sts")
MODES = ("multitask", "sequential")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A training run. Defaults are the report's best system ("concat" preset, 10 epochs)."""
    # Model
    init: str = "all-MiniLM-L6-v2"       # embedded default, or a converted / HuggingFace folder
    pooling: str = "mean"                # "cls" | "mean"
    para_head: str = "concat"            # "diff" | "concat"
    sts_head: str = "cosine"             # "linear" | "cosine"
    dropout: float = 0.1                 # heads' dropout (the encoder keeps its own config)
    dtype: str = "auto"                  # compute dtype: "auto" (bfloat16 on GPU/TPU, float32
                                         # on CPU) | "float32" | "bfloat16"
    attention_impl: str = "xla"          # "xla" | "cudnn"
    # What to train
    tasks: tuple[str, ...] = TASKS
    mode: str = "multitask"              # "multitask": summed loss per step; "sequential"
    epochs: int = 10
    batch_size: int = 8                  # per task, global (split over devices)
    eval_batch_size: int = 64
    max_length: int = 128
    pack: bool = True                    # pack a step's sentences into rows (no pad between)
    pack_length: int = 64                # packed row length (steps with longer sentences: max_length)
    num_buckets: int = 4                 # static shapes the step compiles for (per row length)
    group_by_length: bool = True         # unpacked: batch similar lengths together
    epoch_steps: str = "max"             # multitask epoch: "max" | "min" of the tasks' batches
    # Extra data, off by default (the report trained on SST sentences only): train/sst_phrases.py
    sst_phrases: str = ""                # labelled SST train-tree phrases file ("" = none)
    sst_phrases_count: int = -1          # phrases added to SST; -1 = as many as make SST as
                                         # large as the largest task (same epoch length)
    sst_phrases_min_words: int = 5       # only phrases of at least this many words
    sst_phrases_match_labels: bool = True  # sample phrases in the sentences' label proportions
    # Optimiser (AdamW with PyTorch's defaults for betas and epsilon)
    lr: float = 1e-5
    head_lr: float = 0.0                 # learning rate of the task heads; 0 = same as lr
    layer_lr_decay: float = 1.0          # encoder layer i's rate x decay ** (top - i); 1 = off
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    warmup_steps: int = 0
    linear_decay: bool = False
    grad_clip: float = 0.0               # global-norm clipping; 0 = off
    # Run
    seed: int = 11711
    max_steps: int = 0                   # stop after this many steps in all (0 = no limit)
    limit_train: int = 0                 # use the first N training examples of each task
    limit_eval: int = 0                  # evaluate on the first N dev examples of each task
    log_every: int = 50
    nonfinite: str = "stop"              # on a non-finite loss: "stop" | "skip" the step
    skip_bad_rows: bool = True           # skip (and list) malformed rows; --no-skip-bad-rows: fail

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.mode!r}")
        bad = [t for t in self.tasks if t not in TASKS]
        if bad or not self.tasks:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, not {self.tasks}")
        if self.nonfinite not in ("stop", "skip"):
            raise ValueError(f"nonfinite must be 'stop' or 'skip', not {self.nonfinite!r}")
        if self.epoch_steps not in ("max", "min"):
            raise ValueError(f"epoch_steps must be 'max' or 'min', not {self.epoch_steps!r}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"dtype must be 'auto', 'float32' or 'bfloat16', not {self.dtype!r}")
        if self.pack and self.attention_impl == "cudnn":
            raise ValueError("attention_impl 'cudnn' takes no packed rows: pass --no-pack with it")
        if self.pack_length < 1:
            raise ValueError(f"pack_length must be positive, not {self.pack_length}")
        if not 0.0 < self.layer_lr_decay <= 1.0:
            raise ValueError(f"layer_lr_decay must be in (0, 1], not {self.layer_lr_decay}")
        if self.sst_phrases_count < -1:
            raise ValueError("sst_phrases_count must be -1 (fill SST to the largest task) or a "
                             f"count >= 0, not {self.sst_phrases_count}")
        if self.sst_phrases_min_words < 1:
            raise ValueError("sst_phrases_min_words must be at least 1, not "
                             f"{self.sst_phrases_min_words}")
        if self.sst_phrases and "sst" not in self.tasks:
            raise ValueError("sst_phrases adds SST training data: the tasks must include sst")
        if self.batch_size < 1 or self.epochs < 1:
            raise ValueError("batch_size and epochs must be at least 1")
        self.head_config()  # validates pooling and heads

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
                          sts_head=self.sts_head, dropout=self.dropout)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["tasks"] = list(self.tasks)
        return d

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {unknown}")
        values = dict(values)
        if "tasks" in values:
            values["tasks"] = tuple(values["tasks"])
        return cls(**values)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


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
