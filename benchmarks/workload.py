"""What the benchmark times: the JAX model, the training data, the planned epoch and its steps.

A step is timed as a *sample*: JAX's `Batch` (as training builds it), PyTorch's encoder calls
(numpy; `torch_calls`), the labels and the work sizes. Nothing here needs PyTorch.
"""
from __future__ import annotations

import jax
import numpy as np

from bert_jax.batching import choose_buckets, padding_waste
from bert_jax.cs224n import default_file, find_data_dir, load_split
from bert_jax.data import load_task
from bert_jax.batch_types import Batch, PackedInputs, PaddedInputs, Sentences, TaskLabels
from bert_jax.config import PRESETS, BertConfig
from bert_jax.embedded import DEFAULT_MODEL, resolve_model_dir
from bert_jax.heads import HeadConfig, init_multitask_params
from bert_jax.pretrained import load_pretrained
from bert_jax.tokenizer import Tokenizer, pad_ids
from train.config import TrainConfig
from train.input_pipeline import (epoch_plan, make_step_batch, plan_layout,
                                  step_sentence_groups, steps_per_epoch)

MODELS = ("default", "bert-base", "tiny")


def load_jax_model(model: str, seed: int,
                   init: str = DEFAULT_MODEL) -> tuple[BertConfig, dict, HeadConfig]:
    """(BertConfig, MultitaskBert params as host numpy, HeadConfig) for `model` (see MODELS):
    the weights of `init` for "default" (the embedded all-MiniLM-L6-v2, or a folder holding
    them, such as the device pack's float16 copy), or that preset's shape with random weights."""
    heads = TrainConfig().head_config()
    if model == "default":
        config, encoder = load_pretrained(init)
    else:
        config = PRESETS["bert-base" if model == "bert-base" else "tiny"]
        encoder = None
    params = init_multitask_params(config, heads, jax.random.PRNGKey(seed), encoder)
    return config, jax.tree.map(np.asarray, params), heads


class BenchData:
    """Tokenizer (of `init`), training sets, buckets, the planned epoch's statistics and STS dev
    sentences."""

    def __init__(self, data_dir: str | None = None, limit_train: int = 0,
                 init: str = DEFAULT_MODEL):
        self.tokenizer = Tokenizer.from_pretrained(init)
        self.model_dir = resolve_model_dir(init)
        self.cfg = TrainConfig()
        folder = find_data_dir(data_dir)
        self.data_dir = folder
        limit = limit_train or None
        self.train = {t: load_task(folder, t, "train", self.tokenizer,
                                   max_length=self.cfg.max_length, limit=limit,
                                   skip_bad_rows=True)
                      for t in ("sst", "para", "sts")}
        lengths = np.concatenate([d.lengths for d in self.train.values()])
        self.buckets = choose_buckets(lengths, self.cfg.max_length,
                                      num_buckets=self.cfg.num_buckets)
        self.example_padding_waste = padding_waste(lengths, self.buckets)
        self.sts_dev = load_task(folder, "sts", "dev", self.tokenizer,
                                 max_length=self.cfg.max_length, skip_bad_rows=True)
        self.sts_dev_path = folder / default_file("sts", "dev")
        self._plans: dict[tuple, dict] = {}

    def plan(self, batch_size: int, layout_kind: str, torch_padding: str, sample_steps: int,
             max_steps: int = 0) -> dict:
        """One epoch of the real input pipeline at `batch_size`: the JAX steps' shapes and
        padding, PyTorch's padding, and `sample_steps` real steps spread over the epoch, each as
        JAX and PyTorch get it."""
        key = (batch_size, layout_kind, torch_padding, sample_steps, max_steps)
        if key in self._plans:
            return self._plans[key]
        cfg = self.cfg.replace(batch_size=batch_size, pack=layout_kind == "packed")
        n = steps_per_epoch(self.train, cfg)
        if max_steps:
            n = min(n, max_steps)
        layout = plan_layout(self.train, cfg, n)
        steps = epoch_plan(self.train, cfg, 0)[:n]
        picked = set(np.linspace(0, n - 1, min(sample_steps, n)).round().astype(int).tolist())
        shapes: dict[tuple, int] = {}
        real = padded = padded_torch = 0
        samples = []
        for i, step in enumerate(steps):
            arrays = make_step_batch(self.train, step, layout, self.tokenizer.pad_id).arrays
            shape = (jax.tree.structure(arrays),  # static packed sizes included
                     tuple(np.shape(v) for v in jax.tree.leaves(arrays)))
            shapes[shape] = shapes.get(shape, 0) + 1
            calls = torch_calls(self.train, step, arrays, torch_padding, self.tokenizer.pad_id)
            real += sum(int(m.sum()) for _, m in calls)
            padded += jax_positions(arrays)
            padded_torch += sum(m.size for _, m in calls)
            if i in picked:
                samples.append(make_sample(i, arrays, calls))
        plan = {"steps": n, "layout": layout.describe(), "samples": samples,
                "distinct_shapes": len(shapes), "padding_waste": 1.0 - real / padded,
                "padding_waste_torch": 1.0 - real / padded_torch}
        self._plans[key] = plan
        return plan

    def dev_sentences(self, limit: int = 0) -> tuple[list[str], list[np.ndarray]]:
        """STS dev sentences in file order (all sentence1, then all sentence2), with the project's
        token ids; as `load_split` reads them (lowercased, stripped)."""
        ds = load_split(self.sts_dev_path, "sts", skip_bad_rows=True)
        texts = list(ds["sentence1"]) + list(ds["sentence2"])
        ids = list(self.sts_dev.ids1) + list(self.sts_dev.ids2)
        if limit:
            texts, ids = texts[:limit], ids[:limit]
        return texts, ids


def make_sample(index: int, arrays: Batch, calls) -> dict:
    """A timed step: JAX's `Batch`, PyTorch's encoder calls, the labels and the work sizes."""
    return {"index": index, "jax": arrays, "torch": calls,
            "labels": dict(arrays.labels.by_task),
            "jax_shapes": jax_shapes(arrays), "torch_shapes": [m.shape for _, m in calls],
            "real_tokens": sum(int(m.sum()) for _, m in calls)}


def jax_positions(arrays: Batch) -> int:
    """Token positions, padding included, the JAX step computes on."""
    return sum(rows * length for rows, length in jax_shapes(arrays))


def jax_shapes(arrays: Batch) -> list[tuple[int, int]]:
    """[(rows, length)] of the JAX step's encoder input: the packed rows, or the padded
    sentences (one encoder pass over all of them)."""
    if isinstance(arrays.inputs, PackedInputs):
        return [arrays.inputs.input_ids.shape]
    sides = [s for _, _, s in arrays.inputs.sides()]
    return [(sum(s.input_ids.shape[0] for s in sides), sides[0].input_ids.shape[1])]


def torch_calls(train, step, arrays: Batch, torch_padding: str, pad_id: int):
    """A step's PyTorch encoder inputs [(ids, mask)], numpy int32: "per-call" pads SST and each
    side of the pairs to its own longest sentence (`tokenizer(batch, padding=True)`); "same"
    takes JAX's padded arrays as one call."""
    if torch_padding == "same":
        if isinstance(arrays.inputs, PackedInputs):
            raise ValueError("--torch-padding same needs --layout padded")
        sides = [s for _, _, s in arrays.inputs.sides()]
        return [(np.concatenate([s.input_ids for s in sides]),
                 np.concatenate([s.attention_mask for s in sides]))]
    return [pad_ids(rows, max(len(r) for r in rows), pad_id)
            for rows in step_sentence_groups(train, step)]


def synthetic_batch(batch_size: int, length: int, vocab_size: int, seed: int = 0) -> dict:
    """A sample of full-length sentences of random real-vocabulary ids (for --seq-len): JAX and
    PyTorch get the same [5B, T] arrays, no padding."""
    rng = np.random.default_rng(seed)
    sentences = {}
    for task in TrainConfig().task_definitions():
        sentences[task.name] = []
        for _ in task.sides:
            ids = rng.integers(1000, min(vocab_size, 30000),
                               size=(batch_size, length)).astype(np.int32)
            ids[:, 0], ids[:, -1] = 101, 102
            sentences[task.name].append(Sentences(ids, np.ones((batch_size, length), np.int32)))
    labels = TaskLabels({"sst": rng.integers(0, 5, batch_size).astype(np.int32),
                         "para": rng.integers(0, 2, batch_size).astype(np.int32),
                         "sts": rng.uniform(0, 5, batch_size).astype(np.float32)})
    arrays = Batch(PaddedInputs({t: tuple(s) for t, s in sentences.items()}), labels)
    return make_sample(0, arrays, torch_calls(None, None, arrays, "same", 0))
