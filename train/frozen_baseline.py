"""The honest floor: the pretrained encoder with no fine-tuning.

`python -m train.frozen_baseline [--init NAME] [--out FILE]` embeds every sentence once with the
frozen encoder (mean pooling), then scores dev: STS by 5 x cosine(u, v) zero-shot; SST by a
multinomial logistic regression on u, and paraphrase by a logistic regression on [|u-v|, u*v],
both fitted on the training embeddings (full batch, optax L-BFGS).

Ends by printing the dev scores (3 decimals) and the file written (`--out`: the scores as JSON,
unrounded, with the wall time).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bert_jax import metrics
from bert_jax.api import MultitaskModel
from bert_jax.cli import add_data_dir, nonnegative_int, output_file, positive_int, prog
from bert_jax.cs224n import find_data_dir
from bert_jax.data import load_task
from bert_jax.errors import BertJaxError
from bert_jax.heads import cosine_similarity
from bert_jax.inference import predict_task
from bert_jax.task_data import TaskData
from bert_jax.tasks import SST, builtin_tasks, overall
from train.evaluate import closing_block


def embed_sentences(model: MultitaskModel, ids: list[np.ndarray]) -> np.ndarray:
    """Frozen embeddings [n, hidden] of tokenized sentences (n unpadded id arrays), batched
    and bucketed as a single-sentence task's predictions are."""
    data = TaskData(task=SST.name, spec=SST, ids1=ids, ids2=None, labels=None,
                    example_ids=[str(i) for i in range(len(ids))])

    def embed(params, inputs):  # (params, PaddedInputs of SST alone) -> {"sst": [B, hidden]}
        (sentences,) = inputs[SST.name]
        return {SST.name: model._embed(params, sentences.input_ids, sentences.attention_mask)}
    return np.asarray(predict_task(embed, model.params, data, SST, model.batch_size,
                                   model.buckets, pad_id=model.tokenizer.pad_id), np.float32)


def fit_logistic(x: np.ndarray, y: np.ndarray, classes: int, l2: float = 1e-4,
                 steps: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Softmax regression weights [d, classes] and bias [classes] by L-BFGS on standardised x."""
    x, y = jnp.asarray(x), jnp.asarray(y)

    def loss(p):
        logits = x @ p["w"] + p["b"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return ce + l2 * jnp.sum(p["w"] ** 2)

    params = {"w": jnp.zeros((x.shape[1], classes)), "b": jnp.zeros(classes)}
    solver = optax.lbfgs()
    state = solver.init(params)
    value_and_grad = optax.value_and_grad_from_state(loss)

    @jax.jit
    def step(params, state):
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(params, updates), state

    for _ in range(steps):
        params, state = step(params, state)
    return np.asarray(params["w"]), np.asarray(params["b"])


def _pair_features(u, v):
    return np.concatenate([np.abs(u - v), u * v], axis=1)


def _standardise(train, *others):
    mean, std = train.mean(0), train.std(0) + 1e-6
    return [(a - mean) / std for a in (train, *others)]


def run(init: str = "all-MiniLM-L6-v2", data_dir: str | None = None, max_length: int = 128,
        limit_train: int = 0) -> dict:
    model = MultitaskModel.from_pretrained(init, max_length=max_length, batch_size=64)
    base = find_data_dir(data_dir)
    load = lambda task, split, limit=0: load_task(
        base, task, split, model.tokenizer, max_length=max_length, limit=limit or None,
        skip_bad_rows=True)
    scores = {}
    sst_train, sst_dev = load("sst", "train", limit_train), load("sst", "dev")
    x_train, x_dev = _standardise(embed_sentences(model, sst_train.ids1),
                                  embed_sentences(model, sst_dev.ids1))
    w, b = fit_logistic(x_train, sst_train.labels, 5)
    scores["sst_acc"] = metrics.accuracy((x_dev @ w + b).argmax(1), sst_dev.labels)

    para_train, para_dev = load("para", "train", limit_train), load("para", "dev")
    f_train = _pair_features(embed_sentences(model, para_train.ids1),
                             embed_sentences(model, para_train.ids2))
    f_dev = _pair_features(embed_sentences(model, para_dev.ids1),
                           embed_sentences(model, para_dev.ids2))
    f_train, f_dev = _standardise(f_train, f_dev)
    w, b = fit_logistic(f_train, para_train.labels, 2)
    scores["para_acc"] = metrics.accuracy((f_dev @ w + b).argmax(1), para_dev.labels)

    sts_dev = load("sts", "dev")
    cos = cosine_similarity(jnp.asarray(embed_sentences(model, sts_dev.ids1)),
                            jnp.asarray(embed_sentences(model, sts_dev.ids2)))
    scores["sts_r"] = metrics.pearson(5.0 * np.asarray(cos), sts_dev.labels)
    scores["overall"] = overall(builtin_tasks(), scores)
    return {k: float(v) for k, v in scores.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog("train.frozen_baseline"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", default="all-MiniLM-L6-v2", metavar="MODEL",
                        help="the frozen encoder: 'all-MiniLM-L6-v2' (the embedded default) or "
                             "a folder written by bert_jax.convert (default all-MiniLM-L6-v2)")
    add_data_dir(parser)
    parser.add_argument("--max-length", type=positive_int, default=128,
                        help="tokens per sentence; longer ones are truncated (default 128)")
    parser.add_argument("--limit-train", type=nonnegative_int, default=0,
                        help="fit the heads on the first N training rows per task (default 0: "
                             "all rows)")
    parser.add_argument("--out", default=None, type=output_file, metavar="FILE",
                        help="also write the scores as JSON to this file (default none)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    start = time.time()
    try:
        scores = run(args.init, args.data_dir, args.max_length, args.limit_train)
    except BertJaxError as err:  # DataError, MissingFileError, ConfigError
        print(f"error: {err}", file=sys.stderr)
        return 2
    scores["wall_seconds"] = round(time.time() - start, 1)
    written = []
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(scores, indent=2) + "\n")
        written.append(out)
    print(closing_block(written, {k: v for k, v in scores.items() if k != "wall_seconds"},
                        f"dev scores of the frozen {args.init} ({scores['wall_seconds']:g} s)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
