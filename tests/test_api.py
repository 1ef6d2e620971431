"""`MultitaskModel`: scores as train.evaluate's, order, 0/1/many inputs, embeddings, errors,
zero-shot STS, runs trained in bfloat16 / with cuDNN attention predicting in float32 on the
CPU, and `predict` for any task (a user's string classes, cross-encoded pairs as
`BertTokenizerFast(a, b)` encodes them)."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require
from scipy.special import expit, softmax
from user_tasks import MOOD, PAIRS, RELATED, SPAM, TEXTS, user_task_model

from bert_jax import metrics
from bert_jax.api import MultitaskModel
from bert_jax.batch_types import PaddedInputs, Sentences
from bert_jax.config import BertConfig
from bert_jax.errors import ConfigError
from bert_jax.heads import HeadConfig, MultitaskBert
from bert_jax.model import BertModel
from bert_jax.tokenizer import pad_ids
from bert_jax.cs224n import TASKS, default_file, load_split

ROOT = Path(__file__).resolve().parents[1]
N_DEV = 24


@pytest.fixture(scope="module")
def model(tiny_run) -> MultitaskModel:
    return MultitaskModel.load(tiny_run)


@pytest.fixture(scope="module")
def varied(varied_run) -> MultitaskModel:
    """The API on the run whose predictions vary from row to row (see conftest.varied_run)."""
    return MultitaskModel.load(varied_run)


def dev_rows(data_dir: Path, task: str, n: int):
    ds = load_split(data_dir / default_file(task, "dev"), task,
                    skip_bad_rows=True).select(range(n))
    cols = [ds["sentence1"]] + ([ds["sentence2"]] if task != "sst" else [])
    return ds["id"], cols, np.asarray(ds["label"])


def api_predictions(model: MultitaskModel, task: str, cols) -> np.ndarray:
    if task == "sst":
        return model.sentiment(cols[0])[0]
    if task == "para":
        return (model.paraphrase(*cols) > 0.5).astype(np.int64)
    return model.similarity(*cols)


def read_prediction_file(path: Path) -> tuple[list[str], np.ndarray]:
    with path.open() as f:
        rows = list(csv.reader(f))[1:]
    return [r[0].strip() for r in rows], np.asarray([float(r[1]) for r in rows])


@pytest.mark.slow
def test_scores_and_predictions_equal_train_evaluate(varied_run, varied, data_dir, tmp_path):
    from train.evaluate import evaluate_run
    scores = evaluate_run(varied_run, tmp_path, str(data_dir), limit=N_DEV, progress=False)
    preds, gold = {}, {}  # both use the run's training max_length
    for task in TASKS:
        ids, cols, gold[task] = dev_rows(data_dir, task, N_DEV)
        preds[task] = api_predictions(varied, task, cols)
        file_ids, file_preds = read_prediction_file(tmp_path / f"{task}-dev-output.csv")
        assert file_ids == list(ids)
        if task == "sts":
            np.testing.assert_allclose(preds[task], file_preds, atol=1e-5)
        else:
            np.testing.assert_array_equal(preds[task], file_preds.astype(np.int64))
    # predictions that vary from row to row, so a row mixed up or out of order shows
    assert len(set(preds["sst"].tolist())) >= 3 and set(preds["para"].tolist()) == {0, 1}
    assert np.std(preds["sts"]) > 0.1
    ours = metrics.dev_scores(preds, gold)
    for key in ("sst_acc", "para_acc", "sts_r", "overall"):
        assert ours[key] == pytest.approx(scores[key], abs=1e-5), key


@pytest.mark.slow
def test_default_max_length_reproduces_the_trainers_dev_scores(model, tiny_run, data_dir):
    rows = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    best = [r for r in rows if r["best"]][-1]
    assert model.max_length == 32  # the run's training max_length
    preds, gold = {}, {}
    for task in TASKS:
        _, cols, gold[task] = dev_rows(data_dir, task, 16)  # the run's limit_eval
        preds[task] = api_predictions(model, task, cols)
    ours = metrics.dev_scores(preds, gold)
    for key in ("sst_acc", "para_acc", "sts_r"):
        assert ours[key] == pytest.approx(best[key], abs=1e-5), key


SENTENCES = ["A gorgeous, witty, seductive movie.", "bad",
             "The plot is nothing but boilerplate clichés from start to finish, " * 4,
             "It 's a lovely film with lovely performances .", "meh", "  MIXED case  "]


def test_order_is_preserved_and_inputs_are_normalised(model):
    labels, probs = model.sentiment(SENTENCES)
    assert labels.dtype == np.int64 and labels.shape == (6,)
    assert probs.dtype == np.float32 and probs.shape == (6, 5)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(labels, probs.argmax(-1))
    rev_labels, rev_probs = model.sentiment(SENTENCES[::-1])
    np.testing.assert_allclose(rev_probs[::-1], probs, atol=1e-5)
    for i, s in enumerate(SENTENCES):  # one at a time == batched
        np.testing.assert_allclose(model.sentiment([s])[1][0], probs[i], atol=1e-5)
    # lowercased and stripped as the data loader does
    np.testing.assert_allclose(model.sentiment(["mixed case"])[1][0], probs[5], atol=1e-6)
    np.testing.assert_allclose(model.sentiment("meh")[1][0], probs[4], atol=1e-6)  # a lone str


def test_zero_one_and_many_inputs(model):
    labels, probs = model.sentiment([])
    assert labels.shape == (0,) and probs.shape == (0, 5)
    assert model.paraphrase([], []).shape == (0,)
    assert model.similarity([], []).shape == (0,)
    assert model.embed([]).shape == (0, model.config.hidden_size)
    many = [f"sentence number {i} " + "word " * (i % 40) for i in range(1000)]
    labels, probs = model.sentiment(many)
    assert labels.shape == (1000,) and probs.shape == (1000, 5)
    for i in (0, 517, 999):
        np.testing.assert_allclose(model.sentiment([many[i]])[1][0], probs[i], atol=1e-5)
    p = model.paraphrase(many[:300], many[300:600])
    assert p.shape == (300,) and p.dtype == np.float32 and np.all((p >= 0) & (p <= 1))
    np.testing.assert_allclose(model.paraphrase([many[7]], [many[307]]), p[7:8], atol=1e-5)


def test_embed_and_cosine_similarity_agree(model):
    a, b = SENTENCES[:3], SENTENCES[3:]
    ea, eb = model.embed(a), model.embed(b)
    assert ea.shape == (3, model.config.hidden_size) and ea.dtype == np.float32
    cos = (ea * eb).sum(-1) / np.linalg.norm(ea, axis=-1) / np.linalg.norm(eb, axis=-1)
    assert model.heads.sts_head == "cosine"
    np.testing.assert_allclose(model.similarity(a, b), 5 * cos, atol=1e-4)


def reference_embeddings(model: MultitaskModel, texts, dtype=np.float32, pooling="mean"):
    """Sentence embeddings computed apart from `MultitaskModel.embed`: one padded batch through
    `BertModel` in `dtype`, pooled in numpy (masked mean) or BERT's pooler output."""
    ids, mask = pad_ids(model.tokenizer.encode_ids([t.lower().strip() for t in texts],
                                                   model.max_length),
                        model.max_length)
    out = BertModel(model.config, dtype=dtype).apply({"params": model.params["bert"]}, ids, mask)
    if pooling == "cls":
        return np.asarray(out.pooler_output, np.float64)
    hidden, weight = np.asarray(out.last_hidden_state, np.float64), mask[..., None]
    return (hidden * weight).sum(1) / weight.sum(1)


def test_embed_is_the_encoders_mean_pooling(model):
    """`embed` runs the encoder and the pooling only (no task head), batched by length and put
    back in input order: more sentences than a batch, of varied lengths."""
    texts = [f"sentence {i} " + "word " * (i * 7 % 23) for i in range(70)]
    assert model.heads.pooling == "mean" and len(texts) > model.batch_size
    np.testing.assert_allclose(model.embed(texts), reference_embeddings(model, texts),
                               atol=2e-6, rtol=1e-5)


def test_embed_with_cls_pooling_is_the_pooler_output(tiny_model_dir):
    cls = MultitaskModel.from_pretrained(tiny_model_dir, heads=HeadConfig(pooling="cls"),
                                         max_length=32)
    np.testing.assert_allclose(cls.embed(SENTENCES),
                               reference_embeddings(cls, SENTENCES, pooling="cls"),
                               atol=2e-6, rtol=1e-5)


@pytest.fixture(scope="module")
def gpu_run(tiny_run, tmp_path_factory) -> Path:
    """`tiny_run` as a run trained on a GPU with `--dtype bfloat16 --attention-impl cudnn
    --no-pack` reads: those settings in train_config.json, and (as this project wrote run folders
    before they became run-time choices) in config.json too."""
    out = tmp_path_factory.mktemp("gpu_run") / "run"
    shutil.copytree(tiny_run, out)
    for name, changes in (("train_config.json", {"pack": False}), ("config.json", {
            "param_dtype": "float32"})):
        values = json.loads((out / name).read_text())
        values.update(dtype="bfloat16", attention_impl="cudnn", **changes)
        (out / name).write_text(json.dumps(values, indent=2))
    return out


def test_a_runs_config_json_holds_the_models_shape_only(tiny_run):
    values = json.loads((tiny_run / "config.json").read_text())
    assert set(values) == {"model_type", *BertConfig.__dataclass_fields__}
    assert json.loads((tiny_run / "train_config.json").read_text())["dtype"] == "auto"


def test_a_run_trained_in_bfloat16_predicts_in_float32(gpu_run, model):
    """The run's training dtype is not the model's: it loads computing in float32 (equal to an
    independent float32 pass, unlike a bfloat16 one) unless asked for bfloat16."""
    loaded = MultitaskModel.load(gpu_run)
    assert loaded.config == model.config
    got = loaded.embed(SENTENCES)
    full = reference_embeddings(loaded, SENTENCES)
    half = reference_embeddings(loaded, SENTENCES, dtype=jnp.bfloat16)
    np.testing.assert_allclose(got, full, atol=2e-6, rtol=1e-5)
    assert np.abs(half - full).max() > 1e-3  # a bfloat16 pass would have shown
    np.testing.assert_array_equal(loaded.sentiment(SENTENCES)[1], model.sentiment(SENTENCES)[1])
    asked = MultitaskModel.load(gpu_run, dtype="bfloat16").embed(SENTENCES)
    assert np.abs(asked - full).max() > 1e-3  # bfloat16 when asked for


def test_a_run_trained_with_cudnn_attention_predicts_on_the_cpu(gpu_run, model):
    assert jax.default_backend() == "cpu"
    loaded = MultitaskModel.load(gpu_run)
    a, b = SENTENCES[:3], SENTENCES[3:]
    np.testing.assert_array_equal(loaded.paraphrase(a, b), model.paraphrase(a, b))
    np.testing.assert_array_equal(loaded.similarity(a, b), model.similarity(a, b))
    with pytest.raises(ValueError, match="needs an NVIDIA GPU"):  # only when asked for
        MultitaskModel.load(gpu_run, dtype="bfloat16", attention="cudnn").embed(["a"])
    with pytest.raises(ConfigError, match="attention implementation 'flash'"):
        MultitaskModel.load(gpu_run, attention="flash")


def test_clear_errors(model):
    with pytest.raises(ValueError, match="3 first sentences but 2 second"):
        model.paraphrase(["a", "b", "c"], ["a", "b"])
    with pytest.raises(ValueError, match="same length"):
        model.similarity(["a"], [])
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        model.sentiment(["ok", 3])
    with pytest.raises(Exception, match="not a training run folder"):
        MultitaskModel.load(Path(__file__).parent)


@pytest.mark.slow
def test_from_pretrained_similarity_works_zero_shot():
    model = MultitaskModel.from_pretrained("all-MiniLM-L6-v2")
    assert not model.heads_trained and model.heads.sts_head == "cosine"
    s = model.similarity(["A man is playing a guitar.", "A man is playing a guitar."],
                         ["A man plays the guitar.", "The stock market fell sharply today."])
    assert s[0] > s[1] + 1.0, s
    assert s[0] > 3.5
    assert model.embed(["hello"]).shape == (1, 384)


@pytest.mark.slow
def test_importing_bert_jax_stays_light():
    code = ("import sys, bert_jax; assert 'bert_jax.api' not in sys.modules; "
            "assert 'datasets' not in sys.modules; print(bert_jax.MultitaskModel.__name__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "MultitaskModel"


# ------------------------------------------------------------------ any task: predict(task, ...)

@pytest.fixture(scope="module")
def user(tiny_model_dir) -> MultitaskModel:
    """The built-ins (paraphrase cross-encoded) and three tasks of a user's own; fresh heads."""
    return user_task_model(tiny_model_dir)


def reference_outputs(model: MultitaskModel, task: str, texts, pairs=None, types=True):
    """A task's head outputs apart from `MultitaskModel`: `transformers.BertTokenizerFast` ids
    (a cross-encoded pair: `tok(a, b)`'s ids and token types; `types=False` drops those) in one
    batch padded to the longest, through `MultitaskBert` directly."""
    transformers = require("transformers")
    # from the folder: `BertTokenizerFast(vocab_file=...)` gives wrong ids (test_tokenizer)
    tok = transformers.BertTokenizerFast.from_pretrained(model.tokenizer.vocab_file.parent)
    enc = tok(list(texts), None if pairs is None else list(pairs), padding="longest",
              truncation=True, max_length=model.max_length, return_tensors="np")
    if pairs is not None:
        assert enc["token_type_ids"].any()  # the second sentence's tokens are of type 1
    sentences = Sentences(enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32),
                          enc["token_type_ids"].astype(np.int32) if types else None)
    out = MultitaskBert(model.config, model.heads).apply(
        {"params": model.params}, PaddedInputs({task: (sentences,)}))
    return np.asarray(out[task], np.float64)


def test_predict_gives_a_users_class_values_and_probabilities(user):
    assert [t.name for t in user.tasks] == ["sst", "para", "sts", "mood", "spam", "related"]
    assert user.task("mood") == MOOD
    values, probs = user.predict("mood", TEXTS)  # three string classes: a softmax
    assert values.shape == (len(TEXTS),) and values.dtype.kind == "U"
    assert probs.shape == (len(TEXTS), 3) and probs.dtype == np.float32
    logits = reference_outputs(user, "mood", TEXTS)
    np.testing.assert_allclose(probs, softmax(logits, axis=-1), atol=1e-5)
    assert values.tolist() == [MOOD.classes[k] for k in logits.argmax(-1)]
    assert len(set(values.tolist())) >= 2  # classes that vary: a row out of order shows
    values, probs = user.predict("spam", TEXTS)  # two string classes: [1 - p, p]
    p = expit(reference_outputs(user, "spam", TEXTS))
    assert probs.shape == (len(TEXTS), 2)
    np.testing.assert_allclose(probs, np.stack([1 - p, p], -1), atol=1e-5)
    assert values.tolist() == [SPAM.classes[int(x > 0.5)] for x in p]
    assert set(values.tolist()) == {"ham", "spam"}
    labels, probs = user.predict("sst", TEXTS)  # a built-in's classes: 0..4, as sentiment
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, user.sentiment(TEXTS)[0])
    np.testing.assert_array_equal(probs, user.sentiment(TEXTS)[1])


def test_a_cross_encoded_task_reads_the_pair_as_bert_tokenizer_fast_joins_it(user):
    """The joint `[CLS] a [SEP] b [SEP]` with token types 0/1 (the longest pair truncated
    longest-first to max_length 32), batched in fours: outputs equal to one padded batch of
    `BertTokenizerFast(a, b)` through MultitaskBert."""
    a, b = PAIRS
    assert RELATED.encoding == "cross" and user.task("para").encoding == "cross"
    scores = user.predict("related", a, b)
    assert scores.shape == (len(a),) and scores.dtype == np.float32
    want = reference_outputs(user, "related", a, b)
    np.testing.assert_allclose(scores, want, atol=1e-5, rtol=1e-5)
    assert np.abs(reference_outputs(user, "related", a, b, types=False) - want).max() > 1e-3
    assert np.std(scores) > 0.1
    np.testing.assert_allclose(user.paraphrase(a, b), expit(reference_outputs(user, "para", a, b)),
                               atol=1e-5)
    np.testing.assert_allclose(user.predict("related", a[:1], b[:1]), scores[:1], atol=1e-5)


def test_predict_errors_and_empty_inputs(user, model):
    with pytest.raises(ConfigError, match=r"unknown task 'nli'.*sst, para, sts, mood, spam, "
                                          r"related"):
        user.predict("nli", TEXTS)
    with pytest.raises(ConfigError, match=r"unknown task 'mood'.*has the tasks sst, para, sts$"):
        model.predict("mood", TEXTS)
    with pytest.raises(ValueError, match="mood takes single sentences"):
        user.predict("mood", TEXTS, TEXTS)
    with pytest.raises(ValueError, match="related needs two lists"):
        user.predict("related", TEXTS)
    with pytest.raises(ValueError, match="related: 2 first sentences but 1 second"):
        user.predict("related", ["a", "b"], ["c"])
    values, probs = user.predict("mood", [])
    assert values.shape == (0,) and probs.shape == (0, 3)
    assert user.predict("spam", [])[1].shape == (0, 2)
    assert user.predict("related", [], []).shape == (0,)
