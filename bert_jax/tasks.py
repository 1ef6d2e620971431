"""A task as data: `Task`, one frozen definition of everything the code needs to know of a task,
and the report's three as built-in definitions (`SST`, `PARA`, `STS`).

A task reads one sentence or a pair; a pair is encoded `bi` (each side alone, then the two
embeddings combined, as the report does) or `cross` (one sequence `[CLS] a [SEP] b [SEP]`, token
types 0/1, as `BertTokenizerFast(a, b)` encodes it). Its label is one of K `classes` (given as
the label values in class order) or a score in `range`. The head, loss and metric follow:

  kind                 heads (default first)          loss                         metric
  classification       linear                         CE (K > 2) / BCE (K = 2)     accuracy
  pair-classification  concat, diff | cross           CE / BCE                     accuracy
  regression           linear                         MSE                          Pearson r
  pair-regression      cosine, linear (= diff), diff, concat | cross   MSE         Pearson r

(`cross` is the head of a cross-encoded pair and its only one.) A head's outputs: K logits
[B, K] for K > 2 classes, one logit [B] for two, a score [B] for regression. Accuracy enters
the overall score as it is, Pearson r as (r + 1) / 2.

Knows nothing of files' contents, tokenizers, models or JAX.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Iterable, Sequence

KINDS = ("classification", "pair-classification", "regression", "pair-regression")
ENCODINGS = ("bi", "cross")
HEADS = {
    ("classification", "bi"): ("linear",),
    ("pair-classification", "bi"): ("concat", "diff"),
    ("regression", "bi"): ("linear",),
    ("pair-regression", "bi"): ("cosine", "linear", "diff", "concat"),
    ("pair-classification", "cross"): ("cross",),
    ("pair-regression", "cross"): ("cross",),
}
SPLITS = ("train", "dev", "test")
BUILTIN_NAMES = ("sst", "para", "sts")


class TaskError(ValueError):
    """A task definition that cannot work; the message names the task, the key and the fix."""


@dataclasses.dataclass(frozen=True)
class Task:
    """One task's definition.

    name: its name (scores are `<name>_acc` / `<name>_r`, outputs `<name>-dev-output.csv`).
    kind: one of `KINDS`. encoding: "bi" or "cross" (pairs only). head: one of `HEADS` for the
    kind and encoding ("" = the first, the default). classes: the label values in class order
    (classification; numbers or strings, as the file writes them). range: (low, high) of a
    score (regression). files: ((split, path), ...) for "train", "dev" and optionally "test".
    text: the sentence column(s), one or two. label: the label column. id: the id column ("":
    the row's line number). delimiter: of .csv/.tsv files ("" = from the suffix: "," for .csv,
    tab for .tsv); built-ins read the CS224N tab-separated files. batch_size: examples per step
    (0: the run's --batch-size). loss_weight: the task's loss is multiplied by it in the sum.
    ordinal: classification with K > 2 ordered classes: the weight of an ordinal penalty added
    to the cross-entropy, the squared earth mover's distance between the predicted class
    distribution and the gold class (`train.step.squared_emd`); 0: none.
    """
    name: str
    kind: str
    text: tuple[str, ...]
    label: str
    classes: tuple[Any, ...] = ()
    range: tuple[float, float] | None = None
    encoding: str = "bi"
    head: str = ""
    files: tuple[tuple[str, str], ...] = ()
    id: str = "id"
    delimiter: str = ""
    batch_size: int = 0
    loss_weight: float = 1.0
    column_names: tuple[str, ...] = ()  # how prediction files name the output column
    ordinal: float = 0.0

    def __post_init__(self):
        def bad(key: str, problem: str, fix: str):
            raise TaskError(f"task {self.name!r}: {key}: {problem}. {fix}")
        if self.kind not in KINDS:
            bad("kind", f"unknown kind {self.kind!r}", f"Use one of {', '.join(KINDS)}")
        want = 2 if self.is_pair else 1
        if len(self.text) != want:
            bad("text", f"{len(self.text)} column(s) for a {self.kind} task",
                f"Give {'two columns (the two sentences)' if want == 2 else 'one column'}")
        if self.encoding not in ENCODINGS:
            bad("encoding", f"unknown encoding {self.encoding!r}", "Use 'bi' or 'cross'")
        if self.encoding == "cross" and not self.is_pair:
            bad("encoding", "'cross' joins two sentences, and this task has one",
                "Use a pair kind (pair-classification, pair-regression) or encoding 'bi'")
        allowed = HEADS[self.kind, self.encoding]
        if not self.head:
            object.__setattr__(self, "head", allowed[0])
        if self.head not in allowed:
            fix = (f"A {self.encoding}-encoded {self.kind} task takes head "
                   f"{' or '.join(repr(h) for h in allowed)}")
            if self.head == "cross" and self.encoding == "bi":
                fix += (" ('cross' needs encoding = \"cross\"" +
                        (", and a pair of sentences)" if not self.is_pair else ")"))
            bad("head", f"unknown head {self.head!r} here", fix)
        if self.is_classification:
            if len(self.classes) < 2:
                bad("classes", f"{len(self.classes)} class(es)",
                    "List at least two label values, in class order")
            if len({str(c) for c in self.classes}) != len(self.classes):
                bad("classes", "a label value repeats", "List each label value once")
            if self.range is not None:
                bad("range", "a classification task has classes, not a range", "Remove range")
        else:
            if self.classes:
                bad("classes", "a regression task has a range, not classes", "Remove classes")
            if self.range is None or len(self.range) != 2 or not self.range[0] < self.range[1]:
                bad("range", f"{self.range!r} is not [low, high] with low < high",
                    "Give range = [low, high], e.g. [0.0, 5.0]")
            object.__setattr__(self, "range", (float(self.range[0]), float(self.range[1])))
        if self.batch_size < 0:
            bad("batch_size", f"{self.batch_size} is negative", "Give 0 (the run's) or more")
        if not self.loss_weight > 0:
            bad("loss_weight", f"{self.loss_weight} is not above 0", "Give a positive weight")
        if self.ordinal < 0 or (self.ordinal and self.loss != "ce"):
            bad("ordinal", f"{self.ordinal} for a {self.loss} loss",
                "Give 0, or a positive weight for a classification task of 3 or more classes")
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "text", tuple(self.text))
        object.__setattr__(self, "files", tuple((s, str(p)) for s, p in self.files))

    # ------------------------------------------------------------------ what follows from it
    @property
    def is_pair(self) -> bool:
        return self.kind.startswith("pair-")

    @property
    def is_classification(self) -> bool:
        return self.kind.endswith("classification")

    @property
    def sides(self) -> tuple[str, ...]:
        """The encoder sequences per example: ("1",) for one sentence or a cross-encoded pair,
        ("1", "2") for a bi-encoded pair."""
        return ("1", "2") if self.is_pair and self.encoding == "bi" else ("1",)

    @property
    def num_outputs(self) -> int:
        """Head outputs per example: K logits for K > 2 classes, else 1 (a logit, a score)."""
        return len(self.classes) if len(self.classes) > 2 else 1

    @property
    def loss(self) -> str:
        if not self.is_classification:
            return "mse"
        return "bce" if len(self.classes) == 2 else "ce"

    @property
    def metric(self) -> str:
        return "accuracy" if self.is_classification else "pearson"

    @property
    def score_name(self) -> str:
        return f"{self.name}_acc" if self.is_classification else f"{self.name}_r"

    def file(self, split: str) -> str | None:
        return dict(self.files).get(split)

    def replace(self, **changes) -> "Task":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["files"] = dict(self.files)
        d["range"] = list(self.range) if self.range is not None else None
        for key in ("text", "classes", "column_names"):
            d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Task":
        values = dict(values)
        values["files"] = tuple(dict(values.get("files") or {}).items())
        for key in ("text", "classes", "column_names"):
            values[key] = tuple(values.get(key) or ())
        if values.get("range") is not None:
            values["range"] = tuple(values["range"])
        return cls(**values)


def score_contribution(task: Task, score: float) -> float:
    """How a task's dev score enters the overall score: accuracy as it is, r as (r + 1) / 2."""
    return score if task.is_classification else (score + 1) / 2


def overall(tasks: Sequence[Task], scores: dict[str, float]) -> float:
    """The mean of every task's contribution (`score_contribution`): CS224N's overall score
    (sst_acc + para_acc + (sts_r + 1) / 2) / 3 for the three built-ins."""
    return sum(score_contribution(t, scores[t.score_name]) for t in tasks) / len(tasks)


def sha256_file(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- the built-ins

SST = Task("sst", "classification", text=("sentence",), label="sentiment",
           classes=(0, 1, 2, 3, 4),
           files=(("train", "ids-sst-train.csv"), ("dev", "ids-sst-dev.csv"),
                  ("test", "ids-sst-test-student.csv")),
           delimiter="\t", column_names=("Predicted_Sentiment",))
PARA = Task("para", "pair-classification", text=("sentence1", "sentence2"),
            label="is_duplicate", classes=(0, 1), head="concat",
            files=(("train", "quora-train.csv"), ("dev", "quora-dev.csv")),
            delimiter="\t", column_names=("Predicted_Is_Paraphrase",))
STS = Task("sts", "pair-regression", text=("sentence1", "sentence2"), label="similarity",
           range=(0.0, 5.0), head="cosine",
           files=(("train", "sts-train.csv"), ("dev", "sts-dev.csv"),
                  ("test", "sts-test-student.csv")),
           delimiter="\t", column_names=("Predicted_Similarity",))
BUILTINS = {t.name: t for t in (SST, PARA, STS)}

# The built-in heads' names on the command line (--para-head, --sts-head) and in a run's
# settings: "cross" cross-encodes the pair.
PARA_HEADS = ("diff", "concat", "cross")
STS_HEADS = ("linear", "cosine", "cross")


def builtin_tasks(para_head: str = "concat", sts_head: str = "cosine") -> tuple[Task, ...]:
    """SST, paraphrase and STS with the heads chosen for the latter two."""
    for value, allowed, name in ((para_head, PARA_HEADS, "para_head"),
                                 (sts_head, STS_HEADS, "sts_head")):
        if value not in allowed:
            raise TaskError(f"{name} must be one of {allowed}, not {value!r}")
    cross = lambda head: "cross" if head == "cross" else "bi"
    return (SST, PARA.replace(head=para_head, encoding=cross(para_head)),
            STS.replace(head=sts_head, encoding=cross(sts_head)))


def check_names(tasks: Iterable[Task]) -> None:
    """Task names are unique."""
    seen: set[str] = set()
    for t in tasks:
        if t.name in seen:
            raise TaskError(f"task {t.name!r} is defined twice: rename one")
        seen.add(t.name)


def find(tasks: Sequence[Task], name: str) -> Task:
    """The task named `name` among `tasks`; TaskError listing the names otherwise."""
    for t in tasks:
        if t.name == name:
            return t
    raise TaskError(f"unknown task {name!r}: expected one of {', '.join(t.name for t in tasks)}")


def as_task(task: "Task | str", tasks: Sequence[Task] | None = None) -> Task:
    """A `Task` from a definition or a name (looked up in `tasks`, default the built-ins)."""
    if isinstance(task, Task):
        return task
    return find(tuple(tasks) if tasks is not None else tuple(BUILTINS.values()), task)
