"""bert_jax/task_file.py: TOML task files read into `Task`s (each kind, paths relative to the
file), and every mistake one TaskFileError line naming the file, the task, the key and the fix."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from bert_jax.errors import BertJaxError
from bert_jax.task_file import TaskFileError, describe_tasks, file_digests, read_tasks_file
from bert_jax.tasks import BUILTINS, Task


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def toml(tables: dict[str, dict]) -> str:
    """TOML text of {task: {key: value}}; values written as JSON, which TOML reads alike."""
    return "".join(f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
                   + "\n" for name, keys in tables.items())


@pytest.fixture
def data(tmp_path) -> Path:
    """A folder of small data files: reviews (.csv with id), sick (.tsv, pair_ID), ratings
    (.jsonl, no id), sim (.csv separated by ;)."""
    write(tmp_path / "reviews/train.csv", 'id,review,stars\n1,"good, really",5\n2,bad,1\n')
    write(tmp_path / "reviews/dev.csv", "id,review,stars\n3,fine,3\n")
    write(tmp_path / "reviews/test.csv", "id,review\n4,meh\n")
    sick = "pair_ID\tsentence_A\tsentence_B\tentailment_label\n1\ta dog\ta cat\tNEUTRAL\n"
    write(tmp_path / "sick/train.tsv", sick)
    write(tmp_path / "sick/dev.tsv", sick)
    write(tmp_path / "sick/test.tsv", "pair_ID\tsentence_A\tsentence_B\n2\tx\ty\n")
    write(tmp_path / "ratings/train.jsonl", '\n{"review": "ok", "score": 3.5}\n')
    write(tmp_path / "ratings/dev.jsonl", '{"review": "great", "score": 5}\n')
    write(tmp_path / "sim/train.csv", "id;s1;s2;sim\n1;a;b;0.5\n")
    write(tmp_path / "sim/dev.csv", "id;s1;s2;sim\n2;c;d;4\n")
    return tmp_path


def sick(**changes) -> dict:
    keys = {"kind": "pair-classification", "train": "sick/train.tsv", "dev": "sick/dev.tsv",
            "test": "sick/test.tsv", "text": ["sentence_A", "sentence_B"],
            "label": "entailment_label", "classes": ["NEUTRAL", "ENTAILMENT", "CONTRADICTION"],
            "encoding": "bi", "head": "concat", "id": "pair_ID"}
    keys.update(changes)
    return {k: v for k, v in keys.items() if v is not None}


REVIEWS = {"kind": "classification", "train": "reviews/train.csv", "dev": "reviews/dev.csv",
           "test": "reviews/test.csv", "text": "review", "label": "stars",
           "classes": [1, 2, 3, 4, 5], "batch_size": 8, "loss_weight": 2}
RATINGS = {"kind": "regression", "train": "ratings/train.jsonl", "dev": "ratings/dev.jsonl",
           "text": ["review"], "label": "score", "range": [1, 5]}
SIM = {"kind": "pair-regression", "train": "sim/train.csv", "dev": "sim/dev.csv",
       "text": ["s1", "s2"], "label": "sim", "range": [0.0, 5.0], "head": "linear",
       "delimiter": ";"}


def test_a_task_of_each_kind(data):
    cross = sick(encoding="cross", head=None)
    path = write(data / "tasks.toml", toml({"reviews": REVIEWS, "sick": sick(), "ratings": RATINGS,
                                            "sim": SIM, "sick_cross": cross}))
    tasks = read_tasks_file(path)
    def files(*names):
        return tuple((s, str(data / n)) for s, n in zip(("train", "dev", "test"), names))
    sick_files = files("sick/train.tsv", "sick/dev.tsv", "sick/test.tsv")
    labels = ("NEUTRAL", "ENTAILMENT", "CONTRADICTION")
    assert tasks == (
        Task("reviews", "classification", text=("review",), label="stars",
             classes=(1, 2, 3, 4, 5), head="linear", id="id", batch_size=8, loss_weight=2.0,
             files=files("reviews/train.csv", "reviews/dev.csv", "reviews/test.csv")),
        Task("sick", "pair-classification", text=("sentence_A", "sentence_B"),
             label="entailment_label", classes=labels, head="concat", id="pair_ID",
             files=sick_files),
        Task("ratings", "regression", text=("review",), label="score", range=(1.0, 5.0),
             id="", files=files("ratings/train.jsonl", "ratings/dev.jsonl")),
        Task("sim", "pair-regression", text=("s1", "s2"), label="sim", range=(0.0, 5.0),
             head="linear", delimiter=";", files=files("sim/train.csv", "sim/dev.csv")),
        Task("sick_cross", "pair-classification", text=("sentence_A", "sentence_B"),
             label="entailment_label", classes=labels, encoding="cross", head="cross",
             id="pair_ID", files=sick_files))
    assert tasks[3].id == "id" and tasks[2].id == ""  # the default: "id" where the files have it
    assert type(tasks[0].loss_weight) is float and type(tasks[0].batch_size) is int
    assert tasks[1].loss == "ce" and tasks[2].score_name == "ratings_r"
    assert all(Path(f).is_absolute() and Path(f).is_file() for t in tasks for _, f in t.files)


def test_paths_are_relative_to_the_file_not_the_working_directory(data, monkeypatch):
    write(data / "conf/tasks.toml", toml({"sick": sick(train="../sick/train.tsv", test=None,
                                                       dev=str(data / "sick/dev.tsv"))}))
    monkeypatch.chdir(data / "sick")
    (task,) = read_tasks_file(Path("../conf/tasks.toml"))
    assert task.files == (("train", str(data / "sick/train.tsv")),
                          ("dev", str(data / "sick/dev.tsv")))


def test_rows_are_left_to_the_loader(data):
    """Only the header is read: a bad byte or label further down is the data loader's to name."""
    (data / "reviews/train.csv").write_bytes(b"id,review,stars\n1,caf\xe9,5\n2,\"x\ny\",9\n")
    (task,) = read_tasks_file(write(data / "tasks.toml", toml({"reviews": REVIEWS})))
    assert task.id == "id" and task.file("train") == str(data / "reviews/train.csv")


def error(path: Path) -> str:
    with pytest.raises(TaskFileError) as caught:
        read_tasks_file(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(path)), message
    assert isinstance(caught.value, BertJaxError) and isinstance(caught.value, ValueError)
    return message


def assert_names(message: str, *words: str) -> None:
    missing = [w for w in words if w not in message]
    assert not missing, f"{missing} not in: {message}"


@pytest.mark.parametrize("text, words", [
    ("[sick]\nkind = pair-classification\n", ("line 2, column 8", "TOML syntax error", "Fix")),
    ("[sick\nkind = 1\n", ("line 1, column 6", "Fix")),
    ('[sick]\nlabel = "unterminated\n', ("line 2", "Fix")),
    ("", ("no task table", "Define each task as a table")),
    ('kind = "classification"\n[sick]\n', ("'kind'", "not a task table", "Put every key")),
])
def test_syntax_and_shape_mistakes(tmp_path, text, words):
    assert_names(error(write(tmp_path / "tasks.toml", text)), *words)


def test_not_a_toml_file(tmp_path):
    path = tmp_path / "tasks.toml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    assert_names(error(path), "not a TOML file", "Give a TOML task file")
    assert_names(error(tmp_path / "none.toml"), "no such task file", "--tasks-file")


MISTAKES = [  # (the sick table's changes, the key named, words of the problem and fix)
    ({"kind": "pair-clasification"}, "kind", "Did you mean 'pair-classification'", "Use one of"),
    ({"kind": 3}, "kind", "not a string", "Give kind as a string"),
    ({"lable": "x"}, "lable", "unknown key", "Did you mean 'label'"),
    ({"kind": None}, "kind", "missing", "Add kind"),
    ({"train": None}, "train", "missing", "Add train"),
    ({"dev": None}, "dev", "missing", "Add dev"),
    ({"text": None}, "text", "missing", "Add text"),
    ({"label": None}, "label", "missing", "Add label"),
    ({"classes": None}, "classes", "missing", "lists its label values"),
    ({"kind": "pair-regression", "classes": None}, "range", "missing", "range = [0.0, 5.0]"),
    ({"classes": "NEUTRAL"}, "classes", "not a list", "Give classes as a list"),
    ({"classes": [True, False]}, "classes", "not a label value", "quote words"),
    ({"classes": ["NEUTRAL"]}, "classes", "1 class(es)", "at least two"),
    ({"kind": "pair-regression", "classes": None, "range": [1.0]}, "range", "two numbers",
     "Give range"),
    ({"kind": "pair-regression", "classes": None, "range": ["a", "b"]}, "range", "two numbers",
     "Give range"),
    ({"kind": "pair-regression", "range": [0, 5]}, "classes", "has range, not classes",
     "Remove classes"),
    ({"range": [0, 5]}, "range", "has classes, not range", "Remove range"),
    ({"batch_size": 1.5}, "batch_size", "not a whole number", "Give batch_size"),
    ({"batch_size": True}, "batch_size", "not a whole number", "Give batch_size"),
    ({"batch_size": -1}, "batch_size", "negative", "Give 0"),
    ({"loss_weight": "1"}, "loss_weight", "not a number", "Give loss_weight"),
    ({"loss_weight": 0}, "loss_weight", "not above 0", "positive weight"),
    ({"text": 3}, "text", "not a string or a list", "Give text as"),
    ({"text": ["sentence_A"]}, "text", "1 column(s)", "Give two columns"),
    ({"text": ["sentence_A", 2]}, "text", "not a column name", "Give the column's name"),
    ({"label": ["x"]}, "label", "not a string", "Give label as a string"),
    ({"delimiter": "ab"}, "delimiter", "not one character", "Give one character"),
    ({"encoding": "joint"}, "encoding", "unknown encoding", "Use 'bi' or 'cross'"),
    ({"head": "cosine"}, "head", "unknown head", "takes head 'concat' or 'diff'"),
    ({"train": "sick/nope.tsv"}, "train", "no file", "Fix the path"),
    ({"dev": "sick"}, "dev", "suffix-less", "Give a .csv, .tsv or .jsonl"),
    ({"test": "sick/test.txt"}, "test", "a .txt file", "Give a .csv, .tsv or .jsonl"),
    ({"text": ["sentence_A", "sentence_C"]}, "train", "no column 'sentence_C'", "Fix text"),
    ({"label": "gold"}, "train", "no column 'gold'", "Fix label"),
    ({"id": "pair_id"}, "train", "no column 'pair_id'", "Fix id"),
    ({"delimiter": ","}, "train", "no column 'sentence_A'", "header (or delimiter)"),
]


@pytest.mark.parametrize("changes, key, problem, fix", MISTAKES,
                         ids=[f"{m[1]}-{i}" for i, m in enumerate(MISTAKES)])
def test_each_mistake_is_one_line_naming_file_task_key_and_fix(data, changes, key, problem, fix):
    write(data / "sick/test.txt", "pair_ID\tsentence_A\tsentence_B\n")
    message = error(write(data / "tasks.toml", toml({"sick": sick(**changes)})))
    assert_names(message, "task 'sick'", f": {key}: ", problem, fix)


def test_a_missing_column_names_the_file_and_its_columns(data):
    message = error(write(data / "tasks.toml", toml({"r": dict(RATINGS, label="stars")})))
    assert_names(message, "task 'r': train: ", str(data / "ratings/train.jsonl"),
                 "no column 'stars'", "its columns: 'review', 'score'", "Fix label")
    # the test file needs no label, but its text and id columns
    write(data / "sick/test.tsv", "pair_ID\tsentence_A\tsentence_2\n")
    message = error(write(data / "tasks.toml", toml({"sick": sick()})))
    assert_names(message, "task 'sick': test: ", str(data / "sick/test.tsv"),
                 "no column 'sentence_B'", "'pair_ID', 'sentence_A', 'sentence_2'", "Fix text")
    write(data / "sick/test.tsv", "sentence_A\tsentence_B\n")
    assert_names(error(data / "tasks.toml"), "test: ", "no column 'pair_ID'", "Fix id")


@pytest.mark.parametrize("file, content, words", [
    ("reviews/dev.csv", b"", ("line 1: no header line", "Begin the file")),
    ("reviews/dev.csv", b"id,review,\xe9toiles\n", ("line 1: not UTF-8 text (byte 10 of the line)",
                                                    "Save the file as UTF-8")),
    ("reviews/dev.csv", b"\n", ("line 1: no header line", "Begin the file")),
    ("ratings/dev.jsonl", b"\n \n", ("no JSON object", "one object per line")),
    ("ratings/dev.jsonl", b"[1, 2]\n", ("line 1: not a JSON object", "one object per line")),
    ("ratings/dev.jsonl", b'\n{"review": \n', ("line 2: not JSON", "one JSON object per line")),
])
def test_an_unreadable_header(data, file, content, words):
    (data / file).write_bytes(content)
    table = {"r": RATINGS if file.endswith(".jsonl") else REVIEWS}
    message = error(write(data / "tasks.toml", toml(table)))
    assert_names(message, "task 'r': dev: ", str(data / file), *words)


@pytest.mark.parametrize("name, words", [
    ("sst", ("'sst' is a built-in task", "Rename the table", "[my_sst]")),
    ("sts", ("'sts' is a built-in task", "Rename")),
    ('"my task"', ("'my task' is not a simple name", "Rename the table")),
    ("1st", ("'1st' is not a simple name", "Rename")),
    ("sick.v2", ("unknown key ([sick.v2] makes a table inside [sick])", "The keys are")),
])
def test_task_names(data, name, words):
    text = toml({"x": sick()}).replace("[x]", f"[{name}]", 1)
    message = error(write(data / "tasks.toml", text))
    assert_names(message, f"task '{name.strip(chr(34)).split('.')[0]}': ", *words)


@pytest.mark.parametrize("changes, key, words", [
    ({"head": "cross"}, "head", ("unknown head 'cross'", "'cross' needs encoding",
                                 "a pair of sentences")),
    ({"encoding": "cross"}, "encoding", ("this task has one", "Use a pair kind")),
    ({"text": ["review", "review"]}, "text", ("2 column(s)", "Give one column")),
])
def test_cross_on_a_single_sentence(data, changes, key, words):
    message = error(write(data / "tasks.toml", toml({"reviews": dict(REVIEWS, **changes)})))
    assert_names(message, "task 'reviews': ", f"{key}: ", *words)


def test_describe_and_digest(data):
    (task,) = read_tasks_file(write(data / "tasks.toml", toml({"sick": sick(batch_size=4)})))
    text = describe_tasks((task, BUILTINS["sts"]))
    for words in ("sick: pair-classification, bi-encoded, head concat, 3 classes NEUTRAL, "
                  "ENTAILMENT, CONTRADICTION, batch size 4", "label entailment_label; id pair_ID",
                  f"test: {data / 'sick/test.tsv'}", "sts: pair-regression", "score in [0, 5]"):
        assert words in text, text
    digests = file_digests(task)
    assert list(digests) == ["train", "dev", "test"]
    assert digests["test"] == hashlib.sha256((data / "sick/test.tsv").read_bytes()).hexdigest()
    write(data / "cs224n/sts-dev.csv", "x")
    assert file_digests(BUILTINS["sts"].replace(files=(("dev", "sts-dev.csv"),)),
                        data / "cs224n") == {"dev": hashlib.sha256(b"x").hexdigest()}
