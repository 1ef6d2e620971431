"""`MultitaskModel`: the trained model as a plain Python object.

    from bert_jax import MultitaskModel
    model = MultitaskModel.load("checkpoints/concat")           # a training run folder
    labels, probs = model.sentiment(["a gorgeous film", "a mess"])   # int64 [2], float32 [2, 5]
    p = model.paraphrase(["how do i learn python?"], ["what is the best way to learn python?"])
    s = model.similarity(["a man plays guitar"], ["a man is playing a guitar"])  # 0..5 scale
    e = model.embed(["any sentence"])                           # float32 [1, hidden]
    values, probs = model.predict("sick", a, b)   # any task of the model (`model.tasks`)

Texts are lowercased and stripped (as the data loader does), each sentence is tokenized on its
own (a cross-encoded pair's two together, `[CLS] a [SEP] b [SEP]` with token types 0/1) and
truncated to `max_length` tokens, then run in fixed-size batches padded to a few fixed
lengths (`buckets`), so a handful of shapes compile once per model and are reused for any number
of inputs. Outputs come back in input order.

The model computes in float32 with XLA's attention unless told otherwise
(`MultitaskModel.load(run, dtype="bfloat16", attention="cudnn")`), whatever the run was trained
with: the compute dtype and attention kernel of training are settings of the training run, not
part of the model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bert_jax.batching import bucket_length
from bert_jax.checkpoints import load_run, read_json
from bert_jax.config import BertConfig
from bert_jax.errors import ConfigError
from bert_jax.exported import is_export, load_export
from bert_jax.heads import HeadConfig, MultitaskBert, init_multitask_params
from bert_jax.inference import class_probabilities, predict_task, to_predictions
from bert_jax.model import check_runtime
from bert_jax.pretrained import load_pretrained
from bert_jax.task_data import TaskData
from bert_jax.tasks import Task, TaskError
from bert_jax.tokenizer import Tokenizer, pad_ids

# Padded lengths a call may compile for (those <= max_length, and max_length itself).
DEFAULT_BUCKETS = (16, 32, 64, 128, 256, 512)


def _as_texts(texts, name: str) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, np.ndarray):
        texts = texts.tolist()
    try:
        texts = list(texts)
    except TypeError:
        raise TypeError(f"{name} must be a string or a sequence of strings, "
                        f"not {type(texts).__name__}") from None
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{name}[{i}] is {type(t).__name__}, not str")
    return texts


class MultitaskModel:
    """A `MultitaskBert` with its parameters and tokenizer, for prediction.

    Build it with `MultitaskModel.load(run_dir)` or `MultitaskModel.from_pretrained(name)`.
    `heads_trained` is False for a pretrained encoder with fresh (random) heads: then only
    `embed` and a cosine `similarity` head are meaningful. `dtype` is the compute dtype
    ("float32", "bfloat16" or "float16"; parameters stay as given) and `attention` the attention
    kernel ("xla", or "cudnn" on an NVIDIA GPU with a half-precision dtype).
    """

    def __init__(self, bert_config: BertConfig, heads: HeadConfig, params: Any,
                 tokenizer: Tokenizer, *, max_length: int = 128, batch_size: int = 32,
                 buckets: Sequence[int] | None = None, heads_trained: bool = True,
                 source: str = "", dtype: str = "float32", attention: str = "xla"):
        for name, value, least in (("max_length", max_length, 2), ("batch_size", batch_size, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
                raise ConfigError(f"{name} must be a whole number of at least {least}, "
                                  f"not {value!r}")
        max_length = min(max_length, bert_config.max_position_embeddings)
        self.config, self.heads, self.tokenizer = bert_config, heads, tokenizer
        self.max_length, self.batch_size = int(max_length), int(batch_size)
        buckets = DEFAULT_BUCKETS if buckets is None else buckets
        self.buckets = tuple(sorted({int(b) for b in buckets if b < max_length} | {max_length}))
        self.heads_trained, self.source = heads_trained, source
        check_runtime(dtype, attention)
        self.module = MultitaskBert(bert_config, heads, dtype=jnp.dtype(dtype),
                                    attention_impl=attention)
        self.params = jax.device_put(params)
        module = self.module
        self._predict = jax.jit(
            lambda p, inputs: module.apply({"params": p}, inputs, deterministic=True))
        # Embeddings: the encoder and the pooling, no head ([B, T] ids and mask -> [B, D]).
        self._embed = jax.jit(lambda p, ids, mask: module.apply(
            {"params": p}, ids, mask, method=MultitaskBert.embed))

    # ------------------------------------------------------------------------------ building

    @classmethod
    def load(cls, run_dir: str | Path, which: str = "best", **kwargs) -> "MultitaskModel":
        """From a run folder of `python -m train.multitask` (`which`: "best" or "last"), or from
        a `python -m bert_jax.export` folder of one (encoder and task heads; `which` unused).

        `max_length` defaults to the run's training `max_length`; other keyword arguments as
        `MultitaskModel(...)`: `dtype` (default "float32") and `attention` (default "xla") are
        chosen here, never taken from the run (a run trained in bfloat16 with cuDNN attention
        on a GPU loads and predicts in float32 on the CPU). Raises
        `bert_jax.checkpoints.CheckpointError` for a folder that is not a run,
        `bert_jax.errors.ExportError` for an export without task heads, and
        `bert_jax.errors.ConfigError` for a `which` other than "best" or "last".
        """
        if which not in ("best", "last"):
            raise ConfigError(f"which={which!r}: pass 'best' (the best dev checkpoint) or "
                              "'last' (the newest)")
        if is_export(run_dir):
            files = load_export(run_dir)
            if files.max_length:
                kwargs.setdefault("max_length", files.max_length)
            return cls(files.bert_config, files.heads, files.params, Tokenizer(files.vocab_file),
                       source=str(run_dir), **kwargs)
        run = load_run(run_dir, which)
        # load_run checked it: a whole number of at least 2
        kwargs.setdefault("max_length", read_json(run.run_dir / "train_config.json").get(
            "max_length", 128))
        return cls(run.bert_config, run.heads, run.params, Tokenizer(run.vocab_file),
                   source=str(run_dir), **kwargs)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path = "all-MiniLM-L6-v2",
                        heads: HeadConfig = HeadConfig(), seed: int = 0,
                        **kwargs) -> "MultitaskModel":
        """A pretrained encoder (the embedded default by name, or a converted / HuggingFace
        folder) with freshly initialised heads (`seed`). Untrained heads give meaningless
        sentiment and paraphrase outputs; `embed` and the parameter-free cosine STS head
        (`heads.sts_head == "cosine"`, the default) work zero-shot."""
        config, encoder = load_pretrained(name_or_path)
        params = init_multitask_params(config, heads, jax.random.PRNGKey(seed), encoder)
        return cls(config, heads, params, Tokenizer.from_pretrained(name_or_path),
                   heads_trained=False, source=str(name_or_path), **kwargs)

    def __repr__(self) -> str:
        return (f"MultitaskModel(source={self.source!r}, hidden={self.config.hidden_size}, "
                f"layers={self.config.num_hidden_layers}, heads={self.heads}, "
                f"max_length={self.max_length}, heads_trained={self.heads_trained})")

    # ----------------------------------------------------------------------------- plumbing

    def _ids(self, texts: list[str]) -> list[np.ndarray]:
        return self.tokenizer.encode_ids([t.lower().strip() for t in texts], self.max_length)

    @property
    def tasks(self) -> tuple[Task, ...]:
        """The model's task definitions: the built-ins (with its heads), then a run's own."""
        return self.heads.tasks

    def task(self, name: str | Task) -> Task:
        """The definition of the model's task `name`; ConfigError naming the model's tasks
        for a name it has no head for."""
        try:
            return self.heads.task(name.name if isinstance(name, Task) else name)
        except TaskError:
            raise ConfigError(f"unknown task {name!r}: this model ({self.source or 'in memory'}) "
                              f"has the tasks {', '.join(self.heads.names)}") from None

    def task_data(self, task: str | Task, texts, texts2=None) -> TaskData:
        """Unlabeled `TaskData` of the model's task `task` for the given sentences (one list
        for a single-sentence task, two of the same length for a pair task; a cross-encoded
        pair becomes one joint sequence with its token types)."""
        spec = self.task(task)
        a = _as_texts(texts, "texts" if texts2 is None else "a")
        if not spec.is_pair:
            if texts2 is not None:
                raise ValueError(f"{spec.name} takes single sentences, not pairs")
            return TaskData(task=spec.name, spec=spec, ids1=self._ids(a), ids2=None,
                            labels=None, example_ids=[str(i) for i in range(len(a))])
        if texts2 is None:
            raise ValueError(f"{spec.name} needs two lists of sentences (a, b)")
        b = _as_texts(texts2, "b")
        if len(a) != len(b):
            raise ValueError(f"{spec.name}: {len(a)} first sentences but {len(b)} second "
                             "sentences; pass two lists of the same length")
        ids = [str(i) for i in range(len(a))]
        if spec.encoding == "cross":
            pairs = self.tokenizer.encode_pair_ids([t.lower().strip() for t in a],
                                                   [t.lower().strip() for t in b],
                                                   self.max_length) if a else []
            return TaskData(task=spec.name, spec=spec, ids1=[p for p, _ in pairs], ids2=None,
                            labels=None, example_ids=ids,
                            first=np.asarray([f for _, f in pairs], np.int32))
        return TaskData(task=spec.name, spec=spec, ids1=self._ids(a), ids2=self._ids(b),
                        labels=None, example_ids=ids)

    def outputs(self, task: str | Task, data: TaskData) -> np.ndarray:
        """Raw head outputs for every example of `data` in order: logits float32 [n, K] (K > 2
        classes), one logit [n] (two classes) or scores [n]; SST logits [n, 5], paraphrase
        logits [n], STS scores [n]."""
        spec = self.task(task)
        if len(data) == 0:
            return np.zeros((0, spec.num_outputs) if spec.num_outputs > 1 else (0,), np.float32)
        return predict_task(self._predict, self.params, data, spec, self.batch_size,
                            self.buckets, pad_id=self.tokenizer.pad_id)

    def raw_outputs(self, task: str | Task, texts, texts2=None) -> np.ndarray:
        """`outputs` for sentences: (texts) for a single-sentence task, (texts, texts2) for a
        pair task."""
        return self.outputs(task, self.task_data(task, texts, texts2))

    # ---------------------------------------------------------------------------------- API

    def predict(self, task: str | Task, texts, texts_pair=None):
        """Predictions of any task of the model (`tasks`): `texts` for a single-sentence task,
        `texts` and `texts_pair` for a pair task.

        Classification: (label values [n], as the task's `classes` (int64 for the built-ins,
        str for string classes), probabilities float32 [n, K] in class order (the softmax of
        K > 2 logits; [1 - p, p] with p = sigmoid(logit) for two classes)). Regression: the
        scores, float32 [n]. A name the model has no task of raises ConfigError naming its
        tasks.
        """
        spec = self.task(task)
        outputs = self.raw_outputs(spec, texts, texts_pair)
        if not spec.is_classification:
            return outputs.astype(np.float32)
        probs = class_probabilities(spec, outputs).astype(np.float32)
        return np.asarray(spec.classes)[to_predictions(spec, outputs)], probs

    def sentiment(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """SST-5 sentiment: (labels int64 [n] in 0..4 (very negative .. very positive),
        probabilities float32 [n, 5])."""
        labels, probs = self.predict("sst", texts)
        return labels.astype(np.int64), probs

    def paraphrase(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """Probability that a[i] and b[i] are paraphrases: float32 [n] (> 0.5: predicted 1)."""
        return self.predict("para", a, b)[1][:, 1]

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """Semantic similarity of a[i] and b[i] as the STS head predicts it (0..5 scale; the
        cosine head gives 5 * cos, so -5..5 in principle): float32 [n]."""
        return self.raw_outputs("sts", a, b).astype(np.float32)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Sentence embeddings with the model's pooling ([CLS] pooler or masked mean):
        float32 [n, hidden]. Shortest first in batches of `batch_size` padded to a bucket (the
        last batch filled up with copies), back in input order."""
        ids = self._ids(_as_texts(texts, "texts"))
        out = np.zeros((len(ids), self.config.hidden_size), np.float32)
        order = np.argsort([len(x) for x in ids], kind="stable")
        for start in range(0, len(ids), self.batch_size):
            idx = order[start:start + self.batch_size]
            real = len(idx)
            idx = np.concatenate([idx, np.full(self.batch_size - real, idx[-1])])
            length = bucket_length(max(len(ids[i]) for i in idx), self.buckets)
            tokens, mask = pad_ids([ids[i] for i in idx], length, self.tokenizer.pad_id)
            out[idx[:real]] = np.asarray(self._embed(self.params, tokens, mask))[:real]
        return out
