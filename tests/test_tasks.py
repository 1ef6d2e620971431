"""bert_jax/tasks.py, a task as data, through the core: each bad definition's error, what a
definition implies (head, sides, outputs, loss, metric), a user task's files read by its
definition, its loss (train/step.py) and scores (bert_jax/metrics.py) against numpy and scipy,
its own batch size in the input pipeline's steps, and a cross-encoded pair packed as the padded
model sees it."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from bert_jax.batch_types import PackedInputs, PaddedInputs, TaskLabels
from bert_jax.config import PRESETS as MODEL_PRESETS
from bert_jax.cs224n import DataError, load_split
from bert_jax.heads import HeadConfig, MultitaskBert, init_multitask_params
from bert_jax.metrics import dev_scores
from bert_jax.task_data import TaskData
from bert_jax.tasks import PARA, SST, STS, Task, TaskError, builtin_tasks
from train.config import TrainConfig
from train.input_pipeline import StepLayout, epoch_plan, make_step_batch
from train.step import task_losses, weighted_sum

NLI = Task("nli", "pair-classification", text=("premise", "hypothesis"), label="gold",
           classes=("neutral", "entailment", "contradiction"))
REVIEW = Task("review", "regression", text=("text",), label="stars", range=(1.0, 5.0))

# ------------------------------------------------------------------------- the definition


@pytest.mark.parametrize("changes, key", [
    (dict(kind="nli"), "kind"),
    (dict(kind="classification", text=("a",), encoding="cross"), "encoding"),
    (dict(kind="classification", text=("a",), head="concat"), "head"),
    (dict(kind="classification", text=("a",), head="cross"), "head"),
    (dict(head="cosine"), "head"),  # a regression head on a classification pair
    (dict(head="cross"), "head"),  # the cross head needs encoding "cross"
    (dict(encoding="cross", head="concat"), "head"),
    (dict(classes=("yes",)), "classes"),
    (dict(classes=("a", "b", "a")), "classes"),
    (dict(classes=(1, "1")), "classes"),  # the same label as a file writes it
    (dict(kind="pair-regression", classes=()), "range"),
    (dict(kind="pair-regression", classes=(), range=(5.0, 5.0)), "range"),
    (dict(kind="pair-regression", classes=(), range=(5.0, 1.0)), "range"),
    (dict(batch_size=-1), "batch_size"),
    (dict(loss_weight=0.0), "loss_weight"),
    (dict(loss_weight=-0.5), "loss_weight"),
    (dict(text=("a",)), "text"),
])
def test_each_bad_definition_names_the_task_and_the_key(changes, key):
    values = dict(name="mine", kind="pair-classification", text=("a", "b"), label="y",
                  classes=(0, 1))
    with pytest.raises(TaskError, match=rf"^task 'mine': {key}: .+\. .+"):
        Task(**{**values, **changes})
    Task(**values)  # the definition it changes is fine


@pytest.mark.parametrize("kind, encoding, classes, head, sides, outputs, loss, metric", [
    ("classification", "bi", ("a", "b", "c"), "linear", ("1",), 3, "ce", "accuracy"),
    ("classification", "bi", (0, 1), "linear", ("1",), 1, "bce", "accuracy"),
    ("pair-classification", "bi", (0, 1, 2), "concat", ("1", "2"), 3, "ce", "accuracy"),
    ("pair-classification", "cross", ("no", "yes"), "cross", ("1",), 1, "bce", "accuracy"),
    ("regression", "bi", (), "linear", ("1",), 1, "mse", "pearson"),
    ("pair-regression", "bi", (), "cosine", ("1", "2"), 1, "mse", "pearson"),
    ("pair-regression", "cross", (), "cross", ("1",), 1, "mse", "pearson"),
])
def test_a_definition_implies_its_head_sides_outputs_loss_and_metric(
        kind, encoding, classes, head, sides, outputs, loss, metric):
    task = Task("mine", kind, text=("a", "b") if kind.startswith("pair") else ("a",), label="y",
                classes=classes, range=None if classes else (0, 1), encoding=encoding)
    assert (task.head, task.sides, task.num_outputs, task.loss, task.metric) == (
        head, sides, outputs, loss, metric)
    assert task.score_name == ("mine_acc" if classes else "mine_r")
    assert task.range == (None if classes else (0.0, 1.0))


@pytest.mark.parametrize("task", [NLI, REVIEW, SST, PARA, STS,
                                  NLI.replace(encoding="cross", head="cross", batch_size=4,
                                              loss_weight=0.5, id="", delimiter=";",
                                              files=(("train", "a.csv"), ("dev", "b.csv")))])
def test_to_dict_and_from_dict_round_trip_through_json(task):
    back = Task.from_dict(json.loads(json.dumps(task.to_dict())))
    assert back == task and hash(back) == hash(task)
    assert back.file("train") == task.file("train")


def test_builtin_tasks_with_cross_heads_cross_encode_paraphrase_and_sts():
    sst, para, sts = builtin_tasks("cross", "cross")
    assert sst == SST
    for task, kind in ((para, "pair-classification"), (sts, "pair-regression")):
        assert (task.kind, task.encoding, task.head, task.sides) == (kind, "cross", "cross",
                                                                     ("1",))
    # otherwise the built-ins as they are: files, columns, labels, batch size, loss weight
    assert (para, sts) == (PARA.replace(encoding="cross", head="cross"),
                           STS.replace(encoding="cross", head="cross"))
    assert builtin_tasks() == (SST, PARA, STS)
    assert [(t.encoding, t.head) for t in builtin_tasks("diff", "linear")[1:]] == [
        ("bi", "diff"), ("bi", "linear")]
    with pytest.raises(TaskError, match="para_head"):
        builtin_tasks("cosine", "cosine")


# ------------------------------------------------------------------------- a task's files


def _write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def test_a_comma_separated_file_with_string_classes(tmp_path):
    path = _write(tmp_path / "nli.csv", 'id,premise,hypothesis,gold\n'
                  'a1,"A man, a plan.",A Plan,entailment\n'
                  'a2,Dogs bark,Cats sleep,contradiction\na3,One,Two,neutral\n')
    ds = load_split(path, NLI)
    assert ds["id"] == ["a1", "a2", "a3"]
    assert ds["sentence1"] == ["a man, a plan.", "dogs bark", "one"]
    assert ds["sentence2"] == ["a plan", "cats sleep", "two"]
    assert ds["label"] == [1, 2, 0]  # indices in the order of `classes`


def test_a_tab_separated_file_with_numeric_classes(tmp_path):
    task = Task("stars", "classification", text=("review",), label="stars", classes=(1, 3, 5))
    path = _write(tmp_path / "stars.tsv", "id\treview\tstars\nr1\tgood, fine\t5\n"
                  "r2\tbad\t1.0\nr3\tso so\t3\n")
    ds = load_split(path, task)
    assert ds["sentence1"] == ["good, fine", "bad", "so so"]
    assert ds["label"] == [2, 0, 1]


def test_a_json_lines_file_with_string_classes_and_scores(tmp_path):
    rows = [{"id": 7, "premise": "A b", "hypothesis": "C", "gold": "neutral", "extra": [1]},
            {"id": "x", "premise": "D", "hypothesis": "E f", "gold": "contradiction"}]
    path = _write(tmp_path / "nli.jsonl", "\n".join(map(json.dumps, rows)) + "\n\n")
    ds = load_split(path, NLI)
    assert (ds["id"], ds["sentence1"], ds["label"]) == (["7", "x"], ["a b", "d"], [0, 2])
    path = _write(tmp_path / "review.jsonl", '{"id": "r1", "text": "Fine", "stars": 4.5}\n'
                  '{"id": "r2", "text": "Poor", "stars": 1}\n')
    ds = load_split(path, REVIEW)
    assert ds["label"] == [4.5, 1.0] and ds.features["label"].dtype == "float32"


def test_a_regression_file_and_line_numbers_as_ids(tmp_path):
    task = REVIEW.replace(id="")
    path = _write(tmp_path / "review.csv", "text,stars\nnice,4.25\n\nawful,1\n")
    ds = load_split(path, task)
    assert ds["id"] == ["2", "4"] and ds["line"] == [2, 4]  # the header is line 1
    np.testing.assert_array_equal(np.asarray(ds["label"], np.float32), [4.25, 1.0])


@pytest.mark.parametrize("name, text, task, line, problem", [
    ("nli.csv", "id,premise,hypothesis,gold\na,b,c,neutral\nd,e,f,maybe\n", NLI, 3,
     "gold 'maybe' is not one of the task's classes"),
    ("nli.jsonl", '{"id": "a", "premise": "b", "hypothesis": "c", "gold": 1}\n', NLI, 1,
     "gold '1' is not one of the task's classes"),
    ("review.tsv", "id\ttext\tstars\na\tb\t3\nc\td\t5.5\n", REVIEW, 3,
     "stars '5.5' is outside 1..5"),
    ("review.csv", "id,text,stars\na,b,3\nc,d,4\ne,f,many\n", REVIEW, 4,
     "stars 'many' is not a number"),
    ("review.jsonl", '{"id": "a", "text": "b", "stars": "four"}\n', REVIEW, 1,
     "stars 'four' is not a number"),
])
def test_a_bad_label_names_the_file_line_and_task(tmp_path, name, text, task, line, problem):
    path = _write(tmp_path / name, text)
    with pytest.raises(DataError) as info:
        load_split(path, task)
    assert str(info.value).startswith(f"{path}, line {line}: task {task.name!r}: {problem}")


def test_a_users_bad_label_stops_even_where_bad_rows_are_skipped(tmp_path):
    """A label outside a user task's classes or range is as likely a mistake of the definition
    as of the row: it stops the load with skip_bad_rows too, naming the fix; a row broken
    otherwise (an empty sentence) is still skipped."""
    path = _write(tmp_path / "nli.csv", "id,premise,hypothesis,gold\na,b,c,neutral\n"
                  "d,,f,neutral\ng,h,i,maybe\n")
    with pytest.raises(DataError) as info:
        load_split(path, NLI, skip_bad_rows=True)
    assert str(info.value).startswith(f"{path}, line 4: task 'nli': gold 'maybe'")
    assert "classes or range of task 'nli'" in str(info.value)
    path = _write(tmp_path / "ok.csv", "id,premise,hypothesis,gold\na,b,c,neutral\n"
                  "d,,f,neutral\n")
    assert load_split(path, NLI, skip_bad_rows=True)["id"] == ["a"]
    bad_sst = _write(tmp_path / "sst.tsv", "id\tsentence\tsentiment\na\tfine\t3\nb\tno\t9\n")
    assert load_split(bad_sst, SST, skip_bad_rows=True)["id"] == ["a"]  # built-ins: skipped


def test_a_missing_column_is_one_line_naming_the_file_and_columns(tmp_path):
    path = _write(tmp_path / "nli.csv", "id,premise,hypo,gold\na,b,c,neutral\n")
    with pytest.raises(DataError) as info:
        load_split(path, NLI)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}, line 1: missing column hypothesis")
    assert "expects id, premise, hypothesis, gold" in message and "'hypo'" in message
    assert "task 'nli'" in message


# ----------------------------------------------------------------- loss, scores, batches

THREE = Task("three", "classification", text=("a",), label="y", classes=("x", "y", "z"),
             loss_weight=0.25)
TWO = Task("two", "pair-classification", text=("a", "b"), label="y", classes=("no", "yes"),
           loss_weight=2.0)
SCORE = Task("score", "pair-regression", text=("a", "b"), label="y", range=(-1.0, 1.0))


def test_task_losses_of_user_tasks_against_numpy():
    rng = np.random.default_rng(3)
    logits, logit = rng.normal(size=(5, 3)), rng.normal(size=5)
    score = rng.uniform(-1, 1, 5)
    gold = {"three": rng.integers(0, 3, 5).astype(np.int32),
            "two": np.array([0, 1, 1, 0, 1], np.int32),
            "score": rng.uniform(-1, 1, 5).astype(np.float32)}
    outputs = {"three": jnp.asarray(logits, jnp.float32), "two": jnp.asarray(logit, jnp.float32),
               "score": jnp.asarray(score, jnp.float32)}
    got = task_losses(outputs, TaskLabels(gold), (THREE, TWO, SCORE))
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    p = 1 / (1 + np.exp(-logit))
    want = {"three": -log_p[np.arange(5), gold["three"]].mean(),
            "two": -(gold["two"] * np.log(p) + (1 - gold["two"]) * np.log(1 - p)).mean(),
            "score": ((score - gold["score"]) ** 2).mean()}
    assert {k: float(v) for k, v in got.items()} == pytest.approx(want, rel=1e-5)
    total = weighted_sum(got, (THREE, TWO, SCORE))
    assert float(total) == pytest.approx(0.25 * want["three"] + 2 * want["two"] + want["score"],
                                         rel=1e-5)
    # tasks absent from the outputs have no loss; the weights of tasks present only count
    part = task_losses({"two": outputs["two"]}, TaskLabels(gold), (THREE, TWO, SCORE))
    assert list(part) == ["two"]
    assert float(weighted_sum(part, (THREE, TWO, SCORE))) == pytest.approx(2 * want["two"],
                                                                           rel=1e-5)


def test_dev_scores_of_user_tasks_and_the_overall_score():
    rng = np.random.default_rng(4)
    gold = {"three": rng.integers(0, 3, 40), "score": rng.uniform(-1, 1, 40)}
    pred = {"three": np.where(rng.uniform(size=40) < 0.6, gold["three"], (gold["three"] + 1) % 3),
            "score": gold["score"] + rng.normal(0, 0.5, 40)}
    scores = dev_scores(pred, gold, (THREE, SCORE))
    acc = float((pred["three"] == gold["three"]).mean())
    r = scipy.stats.pearsonr(pred["score"], gold["score"])[0]
    assert list(scores) == ["three_acc", "score_r", "overall"]
    assert scores["three_acc"] == acc and scores["score_r"] == pytest.approx(r, abs=1e-12)
    assert scores["overall"] == pytest.approx((acc + (r + 1) / 2) / 2, abs=1e-12)
    assert 0.3 < acc < 0.9 and 0.2 < r < 0.95  # neither score is trivial
    # beside the built-ins: every task counts in the overall score
    sst = {"sst": rng.integers(0, 5, 40)}
    both = dev_scores({**pred, **sst}, {**gold, "sst": sst["sst"]}, (SST, THREE, SCORE))
    assert both["overall"] == pytest.approx((1.0 + acc + (r + 1) / 2) / 3, abs=1e-12)
    assert "overall" not in dev_scores(pred, gold, (SST, THREE, SCORE))  # sst missing


def _task_data(task: Task, n: int, rng, cross_first=False) -> TaskData:
    """n examples of random token ids (lengths 3..9) and labels of `task`."""
    ids = lambda: [np.concatenate([[101], rng.integers(1000, 2000, rng.integers(1, 8)), [102]])
                   .astype(np.int32) for _ in range(n)]
    labels = (rng.integers(0, len(task.classes), n).astype(np.int32) if task.classes
              else rng.uniform(*task.range, n).astype(np.float32))
    return TaskData(task=task.name, spec=task, ids1=ids(),
                    ids2=ids() if len(task.sides) == 2 else None, labels=labels,
                    example_ids=[f"{task.name}{i}" for i in range(n)])


@pytest.mark.parametrize("pack", [True, False])
def test_a_tasks_own_batch_size_gives_its_steps_that_many_examples(pack):
    mine = TWO.replace(name="mine", batch_size=4)
    cfg = TrainConfig(user_tasks=(mine,), tasks=("sst", "para", "sts", "mine"), pack=pack,
                      batch_size=8)
    rng = np.random.default_rng(0)
    train = {t.name: _task_data(t, 40, rng) for t in cfg.task_definitions()}
    plan = epoch_plan(train, cfg, 0)
    assert len(plan) == 10  # mine has 40 / 4 batches, the built-ins 40 / 8 (then a new pass)
    layout = (StepLayout(row_buckets=((32, (16,)),)) if pack else StepLayout(buckets=(16,)))
    for step in plan[:3]:
        assert {t: len(i) for t, i in step.items()} == {"sst": 8, "para": 8, "sts": 8, "mine": 4}
        arrays = make_step_batch(train, step, layout).arrays
        assert {t: arrays.labels[t].shape for t in step} == {
            "sst": (8,), "para": (8,), "sts": (8,), "mine": (4,)}
        np.testing.assert_array_equal(arrays.labels["mine"], train["mine"].labels[step["mine"]])
        if pack:
            assert arrays.inputs.sizes == (("sst", 8, 1), ("para", 8, 2), ("sts", 8, 2),
                                           ("mine", 4, 2))
        else:
            assert [s.input_ids.shape for s in arrays.inputs["mine"]] == [(4, 16)] * 2


def test_a_cross_encoded_task_packed_equals_padded(tokenizer):
    """A cross-encoded pair task beside SST and a bi-encoded pair, tokenized as
    `Tokenizer(a, b)` encodes pairs: the packed step's outputs equal the padded step's."""
    cross = NLI.replace(encoding="cross", head="cross")
    pairs = [("A man plays a guitar.", "Someone makes music."),
             ("The cat sleeps.", "A dog runs in the park, barking."),
             ("Two kids.", "Nobody is there at all, not one."),
             ("It rains.", "The weather is wet today.")]
    enc = tokenizer([a for a, _ in pairs], [b for _, b in pairs], padding="longest")
    rows = [(ids[mask == 1], types[mask == 1]) for ids, mask, types in
            zip(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])]
    data = TaskData(task="nli", spec=cross, ids1=[ids for ids, _ in rows], ids2=None,
                    labels=np.array([1, 0, 2, 1], np.int32), example_ids=list("abcd"),
                    first=np.array([int((t == 0).sum()) for _, t in rows], np.int32))
    for i, (ids, types) in enumerate(rows):
        np.testing.assert_array_equal(data.type_ids(i), types)
    assert all(t.any() for _, t in rows)  # every pair has tokens of type 1
    rng = np.random.default_rng(1)
    train = {"sst": _task_data(SST, 4, rng), "para": _task_data(PARA, 4, rng), "nli": data}
    step = {t: np.arange(4) for t in train}
    packed = make_step_batch(train, step, StepLayout(row_buckets=((64, (1,)),))).arrays.inputs
    padded = make_step_batch(train, step, StepLayout(buckets=(64,))).arrays.inputs
    assert isinstance(packed, PackedInputs) and isinstance(padded, PaddedInputs)
    assert len(packed.input_ids) < 16 and packed.token_type_ids.any()
    assert packed.sizes == (("sst", 4, 1), ("para", 4, 2), ("nli", 4, 1))
    heads = HeadConfig(extra_tasks=(cross,))
    config = MODEL_PRESETS["tiny"]
    params = init_multitask_params(config, heads, jax.random.PRNGKey(2))
    model = MultitaskBert(config, heads)
    out_packed = model.apply({"params": params}, packed, deterministic=True)
    out_padded = model.apply({"params": params}, padded, deterministic=True)
    assert sorted(out_packed) == ["nli", "para", "sst"] and out_packed["nli"].shape == (4, 3)
    for task in out_padded:
        np.testing.assert_allclose(np.asarray(out_packed[task]), np.asarray(out_padded[task]),
                                   atol=1e-5, err_msg=task)
    # the token types matter: without them the cross task's outputs change
    untyped = model.apply({"params": params}, packed.replace(token_type_ids=None),
                          deterministic=True)
    assert np.abs(np.asarray(untyped["nli"]) - np.asarray(out_padded["nli"])).max() > 1e-4
