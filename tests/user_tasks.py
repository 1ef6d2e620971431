"""A model with tasks of a user's own beside the built-ins, built without training (fresh heads on
the tiny encoder), for the tests of `MultitaskModel.predict`, `bert_jax.predict` and
`bert_jax.export`: a classification with three string classes (rows numbered, no id column), one
with two string classes, a cross-encoded pair regression, and the paraphrase task
cross-encoded (`--para-head cross`)."""
from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from bert_jax.api import MultitaskModel
from bert_jax.export import export_model
from bert_jax.exported import ModelFiles
from bert_jax.heads import HeadConfig, init_multitask_params
from bert_jax.pretrained import load_pretrained
from bert_jax.tasks import Task
from bert_jax.tokenizer import Tokenizer

MOOD = Task("mood", "classification", text=("review",), label="mood",
            classes=("sad", "meh", "happy"), id="")
SPAM = Task("spam", "classification", text=("message",), label="is_spam", classes=("ham", "spam"))
RELATED = Task("related", "pair-regression", text=("left", "right"), label="score",
               range=(1.0, 5.0), encoding="cross", head="cross")
HEADS = HeadConfig(para_head="cross", extra_tasks=(MOOD, SPAM, RELATED))

TEXTS = ["a gorgeous , witty , seductive movie .", "bad", "it 's a lovely film .", "meh",
         "the plot is nothing but boilerplate cliches from start to finish " * 4,
         "an utterly dull and tedious mess", "one of the year 's best", "so so"]
PAIRS = (TEXTS[:4] + ["a man plays a guitar", "cats"],
         TEXTS[4:] + ["a man is playing the guitar", "dogs and more dogs"])


def user_task_params(model_dir: Path, heads: HeadConfig = HEADS, seed: int = 0):
    """(BertConfig, params) of the tiny encoder with fresh heads for `heads`; the output
    layers' kernels scaled up 50x so that the predicted classes vary from text to text."""
    config, encoder = load_pretrained(model_dir)
    params = dict(init_multitask_params(config, heads, jax.random.PRNGKey(seed), encoder))
    for name, layer in list(params.items()):
        if name.endswith(("_classifier", "_regressor")):
            params[name] = {"kernel": np.asarray(layer["kernel"]) * 50.0,
                            "bias": np.asarray(layer["bias"])}
    return config, params


def user_task_model(model_dir: Path, max_length: int = 32) -> MultitaskModel:
    """`user_task_params` as a `MultitaskModel` (batches of 4), the biases of mood and spam
    centring their logits on `TEXTS` (per class: the median), so that several classes are
    predicted."""
    config, params = user_task_params(model_dir)
    model = MultitaskModel(config, HEADS, params, Tokenizer(model_dir / "vocab.txt"),
                           max_length=max_length, batch_size=4, source="user tasks")
    for task in (MOOD, SPAM):
        layer = params[f"{task.name}_classifier"]
        centre = np.median(model.raw_outputs(task.name, TEXTS), axis=0)
        params[f"{task.name}_classifier"] = {"kernel": layer["kernel"],
                                             "bias": layer["bias"] - centre}
    model.params = jax.device_put(params)
    return model


def export_user_model(model: MultitaskModel, out: Path, fmt: str = "hf") -> str:
    """`bert_jax.export` of `model` (as from a run: its heads beside the encoder) to `out`;
    returns the export's line."""
    params = jax.device_get(model.params)
    files = ModelFiles(model.config, params["bert"], model.tokenizer.vocab_file, model.heads,
                       {k: v for k, v in params.items() if k != "bert"}, model.max_length,
                       info={"source": model.source, "source_kind": "run"})
    return export_model(files, out, fmt)
