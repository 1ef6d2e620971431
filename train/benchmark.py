"""Throughput benchmark: this project's JAX train step and encoder against PyTorch `transformers`.

`python -m train.benchmark [flags]` times, in one process on one machine, the same work twice:

* **Train step**: the multitask step of this project (`train.step.make_train_step` around
  `MultitaskBert`, a one-device mesh: forward over every sentence of the step, SST cross-entropy +
  paraphrase BCE-with-logits + STS MSE summed, backward, AdamW) against the same step written with
  `transformers.BertModel` + the same heads (SST linear 5, paraphrase [|u-v|, u*v] -> dense -> ReLU
  -> dense, STS 5 * cosine, masked mean pooling, dropout 0.1) and `torch.optim.AdamW(lr=1e-5)`,
  eager and (`--torch-compile`) `torch.compile`d. Both get identical weights (the JAX parameters
  copied into PyTorch) and the same examples. A step holds B examples per task: B SST
  sentences, 2B paraphrase and 2B STS sentences. By default the examples are real: one epoch of
  the real input pipeline (`train.input_pipeline`, laid out as training lays it out) is planned
  and `--sample-steps` steps spread over it are timed; the step time is their mean. JAX gets the
  step as training builds it (`--layout packed`: sentences packed into rows; `--layout padded`:
  all padded to the step's bucket). PyTorch gets what its users write (`--torch-padding
  per-call`: five encoder calls, SST and each side of the pairs, each padded to its longest
  sentence as `tokenizer(batch, padding=True)` does), or JAX's own padded tensors in one call
  (`--torch-padding same`, with `--layout padded`: identical work, a pure framework comparison).
  `--seq-len T` times one batch of full-length T-token sentences instead (no padding anywhere).
* **Encoding** (forward + mean pooling, no gradients) of the 2 x 863 STS dev sentences: this
  project the way it evaluates (length-sorted batches padded to the bucket lengths, jit-compiled
  once per bucket) against PyTorch with what users get from `tokenizer(batch, padding=True)` per
  batch of the same size in file order, under `torch.inference_mode`. PyTorch on the project's
  sorted, bucketed batches is timed too, to split the gain into padding and framework.

Times are medians over `--repeats` after `--warmup` passes; the frameworks alternate within each
repeat, so background load hits both alike. Compilation is reported apart. Ratios:
`*_ratio_vs_torch_*` for step times is JAX time / PyTorch time (below 1: JAX faster), for
throughputs JAX throughput / PyTorch throughput (above 1: JAX faster); `speedup` holds
PyTorch time / JAX time for every comparison (above 1: JAX faster).

Model FLOPs are analytic: training 6 x non-embedding parameters x padded tokens + 12 x layers x
sequences x T^2 x hidden (attention scores and values); inference a third of that. Model FLOP
utilisation needs the device's peak (`PEAK_FLOPS`, GPUs and TPUs); it is "n/a" on CPU.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

log = logging.getLogger("train.benchmark")

TASK_KEYS = (("sst", "1"), ("para", "1"), ("para", "2"), ("sts", "1"), ("sts", "2"))
MODELS = ("default", "bert-base", "tiny")

# Dense peak FLOP/s per chip, by compute dtype ("float32" on NVIDIA GPUs = TF32 tensor cores,
# which XLA uses for float32 matmuls by default; PyTorch is set to match on GPU). Matched against
# `device.device_kind` by substring, first match wins (so "H100 PCIe" comes before "H100").
PEAK_FLOPS: list[tuple[str, dict[str, float]]] = [
    ("H100 PCIe", {"bfloat16": 756e12, "float16": 756e12, "float32": 378e12}),
    ("H100", {"bfloat16": 989e12, "float16": 989e12, "float32": 494e12}),
    ("H200", {"bfloat16": 989e12, "float16": 989e12, "float32": 494e12}),
    ("GH200", {"bfloat16": 989e12, "float16": 989e12, "float32": 494e12}),
    ("B200", {"bfloat16": 2250e12, "float16": 2250e12, "float32": 1100e12}),
    ("A100", {"bfloat16": 312e12, "float16": 312e12, "float32": 156e12}),
    ("L40S", {"bfloat16": 362e12, "float16": 362e12, "float32": 183e12}),
    ("L4", {"bfloat16": 121e12, "float16": 121e12, "float32": 60e12}),
    ("A10", {"bfloat16": 125e12, "float16": 125e12, "float32": 62.5e12}),
    ("V100", {"float16": 125e12, "float32": 15.7e12}),
    ("T4", {"float16": 65e12, "float32": 8.1e12}),
    ("TPU v4", {"bfloat16": 275e12, "float32": 275e12}),
    ("TPU v5 lite", {"bfloat16": 197e12, "float32": 197e12}),
    ("TPU v5e", {"bfloat16": 197e12, "float32": 197e12}),
    ("TPU v5", {"bfloat16": 459e12, "float32": 459e12}),
    ("TPU v6", {"bfloat16": 918e12, "float32": 918e12}),
]

DEFINITIONS = {
    "train_step_seconds_*": "seconds per train step (forward, 3 losses, backward, AdamW): the "
                            "mean over the sampled real steps of each one's median (or the one "
                            "--seq-len batch)",
    "train_step_ratio_vs_torch_*": "JAX step time / PyTorch step time: below 1 means JAX is faster",
    "encode_ratio_vs_torch*": "JAX sequences/s / PyTorch sequences/s: above 1 means JAX is faster",
    "speedup": "PyTorch time / JAX time for each comparison: above 1 means JAX is faster",
    "*_seq_per_s_*": "sentences per second (a train step holds 5 x batch_size sentences)",
    "*_tokens_per_s_*": "token positions per second, padding included (the work each framework "
                        "did on its own layout)",
    "*_real_tokens_per_s_*": "non-padding tokens per second",
    "*_mfu_*": "model FLOPs (analytic) / time / device peak; null (n/a) without a known peak",
    "compile_seconds_jax": "first call minus a steady call, summed over the step's shapes",
    "num_compiles": "train step programs JAX compiled (one per distinct step shape timed)",
    "pipeline_padding_waste": "padding / all positions over the planned epoch's steps in the JAX "
                              "layout (packed rows, or every sentence padded to the step's bucket)",
    "pipeline_padding_waste_torch": "the same for PyTorch's inputs (--torch-padding)",
    "example_padding_waste": "padding if each sentence were padded only to its own length bucket "
                             "(bert_jax.data.padding_waste of the training lengths)",
}


# ------------------------------------------------------------------------------------ helpers

def median(values) -> float:
    return float(statistics.median(values))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def peak_flops(device_kind: str, dtype: str) -> float | None:
    for name, peaks in PEAK_FLOPS:
        if name.lower() in device_kind.lower():
            return peaks.get(dtype)
    return None


def fmt(value, spec: str = ".3g", unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:{spec}}{unit}"


def count_params(tree) -> int:
    import jax
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def non_embedding_params(params) -> int:
    """Parameters of the encoder layers and the heads (not embeddings, not the unused pooler)."""
    bert = params["bert"]
    heads = {k: v for k, v in params.items() if k != "bert"}
    return count_params(bert["encoder"]) + count_params(heads)


def layout_flops(n_params: int, config, shapes, train: bool) -> float:
    """`model_flops` summed over a step's encoder inputs, `shapes` = [(rows, length), ...]."""
    return sum(model_flops(n_params, config, rows, length, train) for rows, length in shapes)


def model_flops(n_params: int, config, sequences: int, length: int, train: bool) -> float:
    """Analytic model FLOPs of one pass over `sequences` sentences padded to `length`."""
    forward = (2.0 * n_params * sequences * length
               + 4.0 * config.num_hidden_layers * sequences * length ** 2 * config.hidden_size)
    return 3.0 * forward if train else forward


# ------------------------------------------------------------------------------------- models

def load_jax_model(args, bert_config_cls=None):
    """(BertConfig, MultitaskBert params as host numpy, HeadConfig) for --model."""
    import jax
    from bert_jax.config import PRESETS
    from bert_jax.heads import init_multitask_params
    from train.config import TrainConfig

    heads = TrainConfig().head_config()
    if args.model == "default":
        from bert_jax.pretrained import load_pretrained
        config, encoder = load_pretrained("all-MiniLM-L6-v2")
    else:
        config = PRESETS["bert-base" if args.model == "bert-base" else "tiny"]
        encoder = None
    config = config.replace(dtype=args.dtype, attention_impl=args.attention_impl)
    params = init_multitask_params(config, heads, jax.random.PRNGKey(args.seed), encoder)
    return config, jax.tree.map(np.asarray, params), heads


def torch_state_from_jax(params, config) -> dict[str, np.ndarray]:
    """HuggingFace `BertModel` (no pooler) state dict holding the same weights as `params`."""
    from bert_jax.convert import rename_table
    state = {}
    for key, (path, transpose) in rename_table("huggingface", config, pooler=False).items():
        value = params["bert"]
        for part in path:
            value = value[part]
        state[key] = np.ascontiguousarray(value.T if transpose else value)
    return state


def build_torch_model(config, params, heads, device: str):
    """The PyTorch counterpart of `MultitaskBert`, with the weights of `params`."""
    import torch
    import transformers
    from bert_jax.heads import NUM_SENTIMENT_CLASSES

    hf_config = transformers.BertConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size, hidden_act=config.hidden_act,
        hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        max_position_embeddings=config.max_position_embeddings,
        type_vocab_size=config.type_vocab_size, layer_norm_eps=config.layer_norm_eps,
        pad_token_id=config.pad_token_id, attn_implementation="sdpa")
    D = config.hidden_size

    class TorchMultitaskBert(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = transformers.BertModel(hf_config, add_pooling_layer=False)
            self.dropout = torch.nn.Dropout(heads.dropout)
            self.sst_classifier = torch.nn.Linear(D, NUM_SENTIMENT_CLASSES)
            self.para_hidden = torch.nn.Linear(2 * D, D)
            self.para_classifier = torch.nn.Linear(D, 1)

        def embed(self, input_ids, attention_mask):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).float()
            return (hidden.float() * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

        def forward(self, calls, batch_size: int):
            """`calls`: [(ids, mask), ...] encoder inputs holding, in order, the SST sentences
            and the first and second sentences of the paraphrase and STS pairs."""
            pooled = torch.cat([self.embed(ids, mask) for ids, mask in calls])
            sst, p1, p2, s1, s2 = pooled.split(batch_size)
            sst_logits = self.sst_classifier(self.dropout(sst))
            x = torch.cat([(p1 - p2).abs(), p1 * p2], dim=-1)
            para = self.para_classifier(torch.relu(self.para_hidden(self.dropout(x))))[:, 0]
            sts = 5.0 * torch.nn.functional.cosine_similarity(s1, s2, dim=-1, eps=1e-8)
            return sst_logits.float(), para.float(), sts.float()

    model = TorchMultitaskBert()
    state = {f"bert.{k}": torch.from_numpy(np.array(v)) for k, v in
             torch_state_from_jax(params, config).items()}
    t = lambda x: torch.from_numpy(np.array(x))
    state.update({
        "sst_classifier.weight": t(params["sst_classifier"]["kernel"].T),
        "sst_classifier.bias": t(params["sst_classifier"]["bias"]),
        "para_hidden.weight": t(params["para_hidden"]["kernel"].T),
        "para_hidden.bias": t(params["para_hidden"]["bias"]),
        "para_classifier.weight": t(params["para_classifier"]["kernel"].T),
        "para_classifier.bias": t(params["para_classifier"]["bias"]),
    })
    model.load_state_dict(state, strict=True)
    return model.to(device)


def torch_losses(outputs, labels):
    import torch.nn.functional as F
    sst, para, sts = outputs
    return (F.cross_entropy(sst, labels["sst"]) +
            F.binary_cross_entropy_with_logits(para, labels["para"]) +
            F.mse_loss(sts, labels["sts"]))


# -------------------------------------------------------------------------------------- data

class BenchData:
    """Tokenizer, training sets, buckets, the planned epoch's statistics and STS dev sentences."""

    def __init__(self, args):
        from bert_jax import data as data_lib
        from bert_jax.tokenizer import Tokenizer
        from train.config import TrainConfig

        self.tokenizer = Tokenizer.from_pretrained("all-MiniLM-L6-v2")
        self.cfg = TrainConfig()
        folder = data_lib.find_data_dir(args.data_dir)
        self.data_dir = folder
        limit = args.limit_train or None
        self.train = {t: data_lib.load_task(folder, t, "train", self.tokenizer,
                                            max_length=self.cfg.max_length, limit=limit,
                                            skip_bad_rows=True)
                      for t in ("sst", "para", "sts")}
        lengths = np.concatenate([d.lengths for d in self.train.values()])
        self.buckets = data_lib.choose_buckets(lengths, self.cfg.max_length,
                                               num_buckets=self.cfg.num_buckets)
        self.example_padding_waste = data_lib.padding_waste(lengths, self.buckets)
        self.sts_dev = data_lib.load_task(folder, "sts", "dev", self.tokenizer,
                                          max_length=self.cfg.max_length, skip_bad_rows=True)
        self.sts_dev_path = folder / data_lib.default_file("sts", "dev")
        self._plans: dict[int, dict] = {}

    def plan(self, batch_size: int, layout_kind: str, torch_padding: str, sample_steps: int,
             max_steps: int = 0) -> dict:
        """One epoch of the real input pipeline at `batch_size`: the JAX steps' shapes and
        padding, PyTorch's padding, and `sample_steps` real steps spread over the epoch, each as
        JAX and PyTorch get it."""
        key = (batch_size, layout_kind, torch_padding, sample_steps, max_steps)
        if key in self._plans:
            return self._plans[key]
        from train.input_pipeline import epoch_plan, make_step_batch, plan_layout, steps_per_epoch
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
            shape = tuple(sorted((k, v.shape) for k, v in arrays.items()))
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
        from bert_jax.data import load_split
        ds = load_split(self.sts_dev_path, "sts", skip_bad_rows=True)
        texts = list(ds["sentence1"]) + list(ds["sentence2"])
        ids = list(self.sts_dev.ids1) + list(self.sts_dev.ids2)
        if limit:
            texts, ids = texts[:limit], ids[:limit]
        return texts, ids


def make_sample(index: int, arrays, calls) -> dict:
    """A timed step: JAX's arrays, PyTorch's encoder calls, the labels and the work sizes."""
    return {"index": index, "jax": arrays, "torch": calls,
            "labels": {t: arrays[f"{t}_labels"] for t in ("sst", "para", "sts")},
            "jax_shapes": jax_shapes(arrays), "torch_shapes": [m.shape for _, m in calls],
            "real_tokens": sum(int(m.sum()) for _, m in calls)}


def jax_positions(arrays) -> int:
    """Token positions, padding included, the JAX step computes on."""
    return sum(rows * length for rows, length in jax_shapes(arrays))


def jax_shapes(arrays) -> list[tuple[int, int]]:
    """[(rows, length)] of the JAX step's encoder input: the packed rows, or the padded
    sentences (one encoder pass over all of them)."""
    if "packed_input_ids" in arrays:
        return [arrays["packed_input_ids"].shape]
    rows = sum(arrays[f"{t}_input_ids_{k}"].shape[0] for t, k in TASK_KEYS)
    return [(rows, arrays["sst_input_ids_1"].shape[1])]


def torch_calls(train, step, arrays, torch_padding: str, pad_id: int):
    """A step's PyTorch encoder inputs [(ids, mask)], numpy int32: "per-call" pads SST and each
    side of the pairs to its own longest sentence (`tokenizer(batch, padding=True)`); "same"
    takes JAX's padded arrays as one call."""
    from bert_jax.tokenizer import pad_ids
    from train.input_pipeline import step_sentence_groups
    if torch_padding == "same":
        if "packed_input_ids" in arrays:
            raise ValueError("--torch-padding same needs --layout padded")
        return [(np.concatenate([arrays[f"{t}_input_ids_{k}"] for t, k in TASK_KEYS]),
                 np.concatenate([arrays[f"{t}_attention_mask_{k}"] for t, k in TASK_KEYS]))]
    return [pad_ids(rows, max(len(r) for r in rows), pad_id)
            for rows in step_sentence_groups(train, step)]


def synthetic_batch(batch_size: int, length: int, vocab_size: int, seed: int = 0):
    """A sample of full-length sentences of random real-vocabulary ids (for --seq-len): JAX and
    PyTorch get the same [5B, T] arrays, no padding."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for task, k in TASK_KEYS:
        ids = rng.integers(1000, min(vocab_size, 30000), size=(batch_size, length)).astype(np.int32)
        ids[:, 0], ids[:, -1] = 101, 102
        arrays[f"{task}_input_ids_{k}"] = ids
        arrays[f"{task}_attention_mask_{k}"] = np.ones((batch_size, length), np.int32)
    arrays["sst_labels"] = rng.integers(0, 5, batch_size).astype(np.int32)
    arrays["para_labels"] = rng.integers(0, 2, batch_size).astype(np.int32)
    arrays["sts_labels"] = rng.uniform(0, 5, batch_size).astype(np.float32)
    return make_sample(0, arrays, torch_calls(None, None, arrays, "same", 0))


# ------------------------------------------------------------------------------ train step

class JaxTrainRunner:
    """This project's train step on a one-device mesh, fresh state per batch size."""
    name = "jax"

    def __init__(self, config, params, heads, lr: float):
        import jax
        from bert_jax.heads import MultitaskBert
        from train.config import TrainConfig
        from train.step import create_state, make_mesh, make_optimizer, make_train_step
        self.jax = jax
        self.mesh = make_mesh(jax.devices()[:1])
        cfg = TrainConfig(lr=lr)
        self.tx = make_optimizer(cfg, 1_000_000)
        self.model = MultitaskBert(config, heads)
        self.state = create_state(params, self.tx, cfg.seed, self.mesh)
        self.step = make_train_step(self.model, self.tx, self.mesh)
        self.compile_seconds = 0.0

    def prepare(self, sample):
        from train.step import shard_batch
        batch = shard_batch(sample["jax"], self.mesh)
        self.jax.block_until_ready(batch)
        return batch

    def run(self, batch):
        self.state, metrics = self.step(self.state, batch)
        self.jax.block_until_ready((self.state, metrics))
        return metrics

    def num_compiles(self) -> int | None:
        size = getattr(self.step, "_cache_size", None)
        return int(size()) if size else None


class TorchTrainRunner:
    """The same step in PyTorch: eager, or with the forward and losses `torch.compile`d."""

    def __init__(self, model, lr: float, device: str, dtype: str, compiled: bool):
        import torch
        self.torch = torch
        self.name = "torch_compile" if compiled else "torch_eager"
        self.device = device
        self.model = model
        self.model.train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.0)
        self.autocast = dtype != "float32"
        self.amp_dtype = getattr(torch, dtype)

        def loss_fn(calls, labels, batch_size):
            with torch.autocast(device_type=device, dtype=self.amp_dtype, enabled=self.autocast):
                return torch_losses(self.model(calls, batch_size), labels)

        self.loss_fn = torch.compile(loss_fn, dynamic=False) if compiled else loss_fn
        self.compile_seconds = 0.0

    def prepare(self, sample):
        return torch_batch(sample, self.device)

    def sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def run(self, batch):
        calls, labels, batch_size = batch
        loss = self.loss_fn(calls, labels, batch_size)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sync()
        return loss


def torch_batch(sample, device: str):
    """A sample's PyTorch inputs as tensors: ([(ids, mask)] encoder calls, labels, B)."""
    import torch
    to = lambda x, dt: torch.from_numpy(np.ascontiguousarray(x)).to(device, dt)
    labels = sample["labels"]
    calls = [(to(i, torch.int64), to(m, torch.int64)) for i, m in sample["torch"]]
    return calls, {"sst": to(labels["sst"], torch.int64),
                   "para": to(labels["para"], torch.float32),
                   "sts": to(labels["sts"], torch.float32)}, len(labels["sst"])


def check_same_loss(jax_runner: JaxTrainRunner, torch_model, sample, device: str) -> dict:
    """Dropout off, same weights, same examples (each framework on its own layout): both
    frameworks' summed loss (a same-work check)."""
    import jax
    import torch
    from train.step import task_losses
    params = jax_runner.state.params
    arrays = sample["jax"]
    out = jax_runner.model.apply({"params": params}, arrays, deterministic=True)
    loss_jax = float(sum(task_losses(out, arrays).values()))
    calls, labels, b = torch_batch(sample, device)
    torch_model.eval()
    dtype = jax_runner.model.config.dtype
    with torch.no_grad(), torch.autocast(device_type=device, dtype=getattr(torch, dtype),
                                         enabled=dtype != "float32"):
        loss_torch = float(torch_losses(torch_model(calls, b), labels))
    torch_model.train()
    return {"loss_jax": loss_jax, "loss_torch": loss_torch,
            "abs_diff": abs(loss_jax - loss_torch)}


def time_train(runners, batches: dict[int, dict], weights: dict[int, float], repeats: int,
               warmup: int) -> dict[str, dict]:
    """Per runner: each sample's median seconds (`by_length`, keyed like `batches`) and the
    weighted step time. Runners alternate, so background load hits them alike."""
    prepared = {r.name: {T: r.prepare(b) for T, b in batches.items()} for r in runners}
    first: dict[str, dict[int, float]] = {r.name: {} for r in runners}
    failed: dict[str, str] = {}
    active = list(runners)
    for r in list(active):  # first call per shape: compilation for JAX and torch.compile
        try:
            for T in batches:
                start = time.perf_counter()
                r.run(prepared[r.name][T])
                first[r.name][T] = time.perf_counter() - start
        except Exception as err:  # noqa: BLE001 - torch.compile on CPU may fail: report n/a
            failed[r.name] = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200]}" \
                if str(err).strip() else type(err).__name__
            log.warning("%s failed: %s", r.name, failed[r.name])
            active.remove(r)
    for _ in range(max(warmup - 1, 0)):
        for r in active:
            for T in batches:
                r.run(prepared[r.name][T])
    times: dict[str, dict[int, list[float]]] = {r.name: {T: [] for T in batches} for r in active}
    for _ in range(repeats):
        for r in active:
            for T in batches:
                start = time.perf_counter()
                r.run(prepared[r.name][T])
                times[r.name][T].append(time.perf_counter() - start)
    out = {}
    for r in runners:
        if r.name in failed:
            out[r.name] = {"error": failed[r.name]}
            continue
        by_len = {T: median(ts) for T, ts in times[r.name].items()}
        compile_s = sum(max(first[r.name][T] - by_len[T], 0.0) for T in batches)
        out[r.name] = {"by_length": by_len, "first_call": first[r.name],
                       "seconds": sum(weights[T] * by_len[T] for T in batches),
                       "compile_seconds": compile_s,
                       "all_times": {T: ts for T, ts in times[r.name].items()}}
    return out


def bench_train(args, data: BenchData | None, config, params, heads, batch_size: int,
                torch_device: str, device_info: dict) -> dict:
    """Train-step figures at one batch size."""
    import jax
    import torch
    if args.seq_len:
        samples = [synthetic_batch(batch_size, args.seq_len, config.vocab_size, args.seed)]
        plan = None
    else:
        plan = data.plan(batch_size, args.layout, args.torch_padding, args.sample_steps,
                         args.pipeline_steps)
        samples = plan["samples"]
    batches = {s["index"]: s for s in samples}
    weights = {s["index"]: 1.0 / len(samples) for s in samples}
    jax_runner = JaxTrainRunner(config, params, heads, args.lr)
    torch_model = build_torch_model(config, params, heads, torch_device)
    check = check_same_loss(jax_runner, torch_model, samples[0], torch_device)
    runners: list[Any] = [jax_runner]
    if not args.no_torch:
        runners.append(TorchTrainRunner(torch_model, args.lr, torch_device, args.dtype, False))
        if args.torch_compile:
            torch._dynamo.reset()
            compiled_model = copy.deepcopy(torch_model)
            runners.append(TorchTrainRunner(compiled_model, args.lr, torch_device, args.dtype,
                                            True))
    timed = time_train(runners, batches, weights, args.repeats, args.warmup)
    profiles = {}
    if args.profile and batch_size == args.batch_size:
        first = samples[0]
        profiles[first["index"]] = {"jax": profile_jax(jax_runner, jax_runner.prepare(first))}
        eager = [r for r in runners if r.name == "torch_eager"]
        if eager:
            profiles[first["index"]]["torch_eager"] = profile_torch(eager[0],
                                                                    eager[0].prepare(first))

    n_params = non_embedding_params(params)
    seqs = 5 * batch_size
    mean = lambda f: sum(f(s) for s in samples) / len(samples)
    flops = {"jax": mean(lambda s: layout_flops(n_params, config, s["jax_shapes"], True)),
             "torch": mean(lambda s: layout_flops(n_params, config, s["torch_shapes"], True))}
    padded = {"jax": mean(lambda s: sum(r * t for r, t in s["jax_shapes"])),
              "torch": mean(lambda s: sum(r * t for r, t in s["torch_shapes"]))}
    real = mean(lambda s: s["real_tokens"])
    peak = peak_flops(device_info["device_kind"], args.dtype) \
        if device_info["platform"] != "cpu" else None

    res: dict[str, Any] = {"batch_size": batch_size, "sentences_per_step": seqs,
                           "sampled_steps": [s["index"] for s in samples],
                           "sampled_jax_shapes": [s["jax_shapes"] for s in samples],
                           "padded_tokens_per_step_jax": padded["jax"],
                           "padded_tokens_per_step_torch": padded["torch"],
                           "real_tokens_per_step": real,
                           "model_flops_per_step_jax": flops["jax"],
                           "model_flops_per_step_torch": flops["torch"],
                           "same_loss_check": check}
    if profiles:
        res["profile"] = profiles
    if plan is not None:
        res.update({"pipeline_steps": plan["steps"], "pipeline_layout": plan["layout"],
                    "pipeline_distinct_step_shapes": plan["distinct_shapes"],
                    "pipeline_padding_waste": plan["padding_waste"],
                    "pipeline_padding_waste_torch": plan["padding_waste_torch"]})
    for name, t in timed.items():
        if "error" in t:
            res[f"train_step_seconds_{name}"] = None
            res[f"{name}_status"] = f"n/a: {t['error']}"
            continue
        s = t["seconds"]
        work = "jax" if name == "jax" else "torch"
        res[f"train_step_seconds_{name}"] = s
        res[f"train_step_seconds_by_sample_{name}"] = {str(k): v for k, v in t["by_length"].items()}
        res[f"train_seq_per_s_{name}"] = seqs / s
        res[f"train_tokens_per_s_{name}"] = padded[work] / s
        res[f"train_real_tokens_per_s_{name}"] = real / s
        res[f"train_flops_per_s_{name}"] = flops[work] / s
        res[f"train_mfu_{name}"] = flops[work] / s / peak if peak else None
        res[f"compile_seconds_{name}"] = t["compile_seconds"]
        res[f"{name}_status"] = "ok"
    for name, why in (("torch_eager", "off (--no-torch)"),
                      ("torch_compile", "off (--no-torch)" if args.no_torch
                       else "off (--no-torch-compile)")):
        if name not in timed:
            res[f"train_step_seconds_{name}"] = None
            res[f"{name}_status"] = why
    res["compile_seconds_jax"] = timed["jax"].get("compile_seconds")
    res["num_compiles"] = jax_runner.num_compiles()
    for name in ("torch_eager", "torch_compile"):
        tj, tt = res.get("train_step_seconds_jax"), res.get(f"train_step_seconds_{name}")
        res[f"train_step_ratio_vs_{name}"] = tj / tt if tj and tt else None
        res[f"train_speedup_vs_{name}"] = tt / tj if tj and tt else None
    del jax_runner, runners
    jax.clear_caches()
    return res


# -------------------------------------------------------------------------------- profiles

def _phase(op_name: str) -> str:
    if "transpose(jvp(" in op_name:
        return "backward"
    if "jvp(" in op_name:
        return "forward"
    return "optimizer+other"


def _kind(event: str) -> str:
    import re
    base = re.sub(r"[.\d]+$", "", event)
    if base in ("dot", "custom-call") or base.endswith(("ynn_fusion", "xnn_fusion")) \
            or "onednn" in base or "gemm" in base or "cublas" in base:
        return "matmul"
    if base.startswith(("copy", "transpose")) or "transpose" in base:
        return "copy/transpose"
    if base.startswith("all-reduce"):
        return "all-reduce"
    if base in ("broadcast", "wrapped_broadcast"):
        return "broadcast (fill)"
    if base in ("while", "scatter", "wrapped_scatter"):
        return base.replace("wrapped_", "")
    return "elementwise/reduce fusions"


def profile_jax(runner: "JaxTrainRunner", batch, steps: int = 3) -> dict:
    """Op time of the compiled JAX step from a jax.profiler trace, summed over threads and split
    by phase (from each HLO instruction's op_name: forward, backward, optimizer+other) and kind."""
    import collections
    import re
    import tempfile
    import jax
    hlo = runner.step.lower(runner.state, batch).compile().as_text()
    op_names = {m.group(1): m.group(2) for m in re.finditer(
        r'%([\w.\-]+) = [^\n]*?metadata=\{op_name="([^"]*)"', hlo)}
    runner.run(batch)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        with jax.profiler.trace(folder):
            for _ in range(steps):
                runner.run(batch)
        wall = (time.perf_counter() - start) / steps
        path = next(Path(folder).rglob("*.xplane.pb"))
        data = jax.profiler.ProfileData.from_file(str(path))
    by_phase, by_kind, by_op = collections.Counter(), collections.Counter(), collections.Counter()
    by_phase_kind = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            if line.name == "python" or "XLA" not in line.name:
                continue
            for ev in line.events:
                if ev.name.startswith("ThunkExecutor") or "Await" in ev.name \
                        or ev.name not in op_names and not re.search(r"\.\d+$|^[a-z\-_]+$", ev.name):
                    continue
                secs = ev.duration_ns / 1e9 / steps
                phase, kind = _phase(op_names.get(ev.name, "")), _kind(ev.name)
                by_phase[phase] += secs
                by_kind[kind] += secs
                by_phase_kind[f"{phase}/{kind}"] += secs
                by_op[ev.name] += secs
    total = sum(by_phase.values())
    top = [{"op": name, "seconds": sec, "phase": _phase(op_names.get(name, "")),
            "op_name": op_names.get(name, "")[-90:]} for name, sec in by_op.most_common(12)]
    return {"wall_seconds_per_step": wall, "op_seconds_per_step": total,
            "by_phase": dict(by_phase.most_common()), "by_kind": dict(by_kind.most_common()),
            "by_phase_and_kind": dict(by_phase_kind.most_common()),
            "top_ops": top}


def profile_torch(runner: "TorchTrainRunner", batch, steps: int = 3) -> dict:
    """Wall time of the PyTorch step's phases (forward+losses, backward, AdamW), and the top ops
    by self CPU time from torch.profiler."""
    import torch
    calls, labels, b = batch
    phases = {"forward": [], "backward": [], "optimizer": []}
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = runner.loss_fn(calls, labels, b)
        runner.sync()
        t1 = time.perf_counter()
        runner.opt.zero_grad(set_to_none=True)
        loss.backward()
        runner.sync()
        t2 = time.perf_counter()
        runner.opt.step()
        runner.sync()
        t3 = time.perf_counter()
        for k, v in zip(phases, (t1 - t0, t2 - t1, t3 - t2)):
            phases[k].append(v)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            runner.run(batch)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    top = [{"op": e.key, "self_seconds": e.self_cpu_time_total / 1e6 / steps,
            "calls": e.count // steps} for e in events[:12]]
    return {"by_phase": {k: median(v) for k, v in phases.items()}, "top_ops": top}


def print_profiles(profiles: dict) -> None:
    for index, prof in profiles.items():
        j, t = prof.get("jax"), prof.get("torch_eager")
        print(f"\nprofile of sampled step {index}:")
        if j:
            print(f"  JAX: wall {j['wall_seconds_per_step'] * 1e3:.0f} ms/step, op time summed "
                  f"over threads {j['op_seconds_per_step'] * 1e3:.0f} ms")
            print("    by phase: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in j["by_phase"].items()))
            print("    by kind:  " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in j["by_kind"].items()))
            print("    by phase and kind: " + ", ".join(
                f"{k} {v * 1e3:.0f} ms" for k, v in j["by_phase_and_kind"].items() if v > 0.005))
            print("    top ops:  " + "; ".join(f"{o['op']} {o['seconds'] * 1e3:.1f} ms ({o['phase']})"
                                               for o in j["top_ops"][:6]))
        if t:
            print("  PyTorch eager by phase (wall): " + ", ".join(
                f"{k} {v * 1e3:.0f} ms" for k, v in t["by_phase"].items()))
            print("    top ops (self CPU): " + "; ".join(
                f"{o['op']} {o['self_seconds'] * 1e3:.1f} ms x{o['calls']}" for o in t["top_ops"][:8]))


# -------------------------------------------------------------------------------- encoding

def bench_encode(args, data: BenchData, config, params, heads, torch_device: str,
                 device_info: dict) -> dict:
    """Forward + mean pooling of the STS dev sentences: JAX bucketed vs PyTorch padding=True."""
    import jax
    import torch
    import transformers
    from bert_jax.data import bucket_length, choose_buckets
    from bert_jax.heads import MultitaskBert
    from bert_jax.pretrained import embedded_model_dir
    from bert_jax.tokenizer import pad_ids

    texts, ids = data.dev_sentences(args.encode_limit)
    n, bs = len(ids), args.encode_batch_size
    lengths = np.asarray([len(r) for r in ids])

    # JAX, as the project evaluates (train.evaluate): buckets chosen over the sentences' lengths,
    # batches sorted by length and padded to their bucket, the last batch filled up.
    buckets = choose_buckets(lengths, data.cfg.max_length, num_buckets=data.cfg.num_buckets)
    model = MultitaskBert(config, heads)
    dev_params = jax.device_put(params)
    embed = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m,
                                                method=MultitaskBert.embed))
    order = np.argsort(lengths, kind="stable")
    jax_batches = []
    for start in range(0, n, bs):
        idx = order[start:start + bs]
        real = len(idx)
        if real < bs:
            idx = np.concatenate([idx, np.full(bs - real, idx[-1])])
        length = bucket_length(int(lengths[idx].max()), buckets)
        i, m = pad_ids([ids[j] for j in idx], length, data.tokenizer.pad_id)
        jax_batches.append((i, m, real, idx[:real]))

    def run_jax():
        out = np.zeros((n, config.hidden_size), np.float32)
        for i, m, real, idx in jax_batches:
            out[idx] = np.asarray(embed(dev_params, jax.device_put(i), jax.device_put(m)))[:real]
        return out

    # PyTorch as users write it: the HF tokenizer's padding=True per batch, in file order.
    tok = transformers.AutoTokenizer.from_pretrained(str(embedded_model_dir()))
    torch_batches = []
    for start in range(0, n, bs):
        enc = tok(texts[start:start + bs], padding=True, truncation=True,
                  max_length=data.cfg.max_length, return_tensors="pt")
        torch_batches.append((enc["input_ids"].to(torch_device),
                              enc["attention_mask"].to(torch_device), start))
    # ... and on the project's sorted, bucketed batches (the same arrays JAX gets).
    sorted_batches = [(torch.from_numpy(i.astype(np.int64)).to(torch_device),
                       torch.from_numpy(m.astype(np.int64)).to(torch_device), real, idx)
                      for i, m, real, idx in jax_batches]
    tmodel = build_torch_model(config, params, heads, torch_device).eval()
    amp = dict(device_type=torch_device, dtype=getattr(torch, args.dtype),
               enabled=args.dtype != "float32")

    def run_torch():
        out = np.zeros((n, config.hidden_size), np.float32)
        with torch.inference_mode(), torch.autocast(**amp):
            for i, m, start in torch_batches:
                out[start:start + len(i)] = tmodel.embed(i, m).float().cpu().numpy()
        return out

    def run_torch_sorted():
        out = np.zeros((n, config.hidden_size), np.float32)
        with torch.inference_mode(), torch.autocast(**amp):
            for i, m, real, idx in sorted_batches:
                out[idx] = tmodel.embed(i, m).float().cpu().numpy()[:real]
        return out

    runs: dict[str, Callable] = {"jax": run_jax}
    if not args.no_torch:
        runs.update({"torch": run_torch, "torch_sorted": run_torch_sorted})
    first, outputs = {}, {}
    for name, fn in runs.items():
        start = time.perf_counter()
        outputs[name] = fn()
        first[name] = time.perf_counter() - start
    for _ in range(max(args.warmup - 1, 0)):
        for fn in runs.values():
            fn()
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)

    n_params = count_params(params["bert"]["encoder"])
    padded = {"jax": sum(i.shape[0] * i.shape[1] for i, *_ in jax_batches),
              "torch": sum(int(i.numel()) for i, *_ in torch_batches)}
    padded["torch_sorted"] = padded["jax"]
    flops = {"jax": sum(model_flops(n_params, config, i.shape[0], i.shape[1], train=False)
                        for i, *_ in jax_batches),
             "torch": sum(model_flops(n_params, config, i.shape[0], i.shape[1], train=False)
                          for i, *_ in torch_batches)}
    flops["torch_sorted"] = flops["jax"]
    peak = peak_flops(device_info["device_kind"], args.dtype) \
        if device_info["platform"] != "cpu" else None
    real_tokens = int(lengths.sum())
    res: dict[str, Any] = {
        "encode_sentences": n, "encode_batch_size": bs, "encode_real_tokens": real_tokens,
        "encode_buckets": list(buckets),
        "encode_padding_waste_jax": 1 - real_tokens / padded["jax"],
        "num_compiles_encode": int(embed._cache_size()) if hasattr(embed, "_cache_size") else None,
    }
    if "torch" in runs:
        res["encode_padding_waste_torch"] = 1 - real_tokens / padded["torch"]
        cos = np.sum(outputs["jax"] * outputs["torch"], -1) / np.maximum(
            np.linalg.norm(outputs["jax"], axis=-1) * np.linalg.norm(outputs["torch"], axis=-1),
            1e-9)
        res["encode_min_cosine_jax_vs_torch"] = float(cos.min())
    for name in runs:
        s = median(times[name])
        res[f"encode_seconds_{name}"] = s
        res[f"encode_seq_per_s_{name}"] = n / s
        res[f"encode_tokens_per_s_{name}"] = padded[name] / s
        res[f"encode_real_tokens_per_s_{name}"] = real_tokens / s
        res[f"encode_flops_per_s_{name}"] = flops[name] / s
        res[f"encode_mfu_{name}"] = flops[name] / s / peak if peak else None
    res["compile_seconds_jax_encode"] = max(first["jax"] - res["encode_seconds_jax"], 0.0)
    for name in ("torch", "torch_sorted"):
        if name in runs:
            res[f"encode_ratio_vs_{name}"] = res["encode_seq_per_s_jax"] / res[f"encode_seq_per_s_{name}"]
    return res


# ------------------------------------------------------------------------------------ report

def environment(args, torch_device: str) -> dict:
    import flax
    import jax
    import jaxlib
    import optax
    import torch
    import transformers
    dev = jax.devices()[0]
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m train.benchmark " + " ".join(sys.argv[1:] if args._argv is None
                                                           else args._argv),
        "platform": dev.platform, "device": str(dev), "device_kind": dev.device_kind,
        "torch_device": torch_device, "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "versions": {"python": platform.python_version(), "jax": jax.__version__,
                     "jaxlib": jaxlib.__version__,
                     "flax": flax.__version__, "optax": optax.__version__,
                     "torch": torch.__version__, "transformers": transformers.__version__,
                     "numpy": np.__version__},
    }


def print_report(res: dict) -> None:
    p = print
    p(f"\n== train.benchmark  {res['date']}  ({res['device_kind']}, {res['cpu_model']}, "
      f"{res['cpu_count']} CPUs, torch threads {res['torch_threads']})")
    p(f"model {res['model']} (layers {res['num_layers']}, hidden {res['hidden_size']}), dtype "
      f"{res['dtype']}, attention {res['attention_impl']}, batch {res['batch_size']} per task "
      f"({5 * res['batch_size']} sentences/step), lengths "
      f"{'fixed ' + str(res['seq_len']) if res['seq_len'] else 'real'}")
    p(f"load average before/after: {res['load_average_before']} / {res['load_average_after']}")
    if res.get("pipeline_steps"):
        p(f"input pipeline (one epoch, {res['pipeline_steps']} steps): JAX {res['pipeline_layout']},"
          f" {res['pipeline_distinct_step_shapes']} distinct step shapes, padding "
          f"{100 * res['pipeline_padding_waste']:.1f}% of positions; PyTorch "
          f"(--torch-padding {res['torch_padding']}) {100 * res['pipeline_padding_waste_torch']:.1f}%"
          f" (each sentence padded to its own length bucket: "
          f"{100 * res['example_padding_waste']:.1f}%)")
    if res.get("train_step_seconds_jax") is not None:
        p("\ntrain step            step time    seq/s   tokens/s  GFLOP/s    MFU  vs torch eager")
        for name in ("jax", "torch_eager", "torch_compile"):
            s = res.get(f"train_step_seconds_{name}")
            if s is None:
                if f"{name}_status" in res:
                    p(f"  {name:<18} {res[f'{name}_status']}")
                continue
            rel = res["train_step_seconds_torch_eager"] / s \
                if res.get("train_step_seconds_torch_eager") else None
            p(f"  {name:<18} {s * 1e3:8.1f} ms {res[f'train_seq_per_s_{name}']:8.1f} "
              f"{res[f'train_tokens_per_s_{name}']:10.0f} {res[f'train_flops_per_s_{name}'] / 1e9:8.1f} "
              f"{fmt(res[f'train_mfu_{name}'], '.1%'):>6} {fmt(rel, '.2f', 'x faster')}")
        p(f"  timed: {len(res['sampled_steps'])} real steps of the epoch "
          f"{res['sampled_steps'][:8]}{' ...' if len(res['sampled_steps']) > 8 else ''}; "
          f"positions per step JAX {res['padded_tokens_per_step_jax']:.0f}, PyTorch "
          f"{res['padded_tokens_per_step_torch']:.0f}, real tokens {res['real_tokens_per_step']:.0f}")
        p(f"  JAX step time / torch eager = {fmt(res['train_step_ratio_vs_torch_eager'], '.3f')}"
          f"; / torch.compile = {fmt(res.get('train_step_ratio_vs_torch_compile'), '.3f')}")
        p(f"  compile: JAX {fmt(res['compile_seconds_jax'], '.1f', ' s')} for "
          f"{res['num_compiles']} step shapes; torch.compile "
          f"{fmt(res.get('compile_seconds_torch_compile'), '.1f', ' s')}")
        c = res["same_loss_check"]
        p(f"  same-work check (dropout off, same weights and batch): loss JAX {c['loss_jax']:.5f},"
          f" PyTorch {c['loss_torch']:.5f}")
    if res.get("encode_seq_per_s_jax"):
        p(f"\nencode {res['encode_sentences']} STS dev sentences, batch "
          f"{res['encode_batch_size']}    seconds    seq/s   tokens/s  padding  GFLOP/s   MFU")
        for name, label in (("jax", "jax (sorted, buckets)"),
                            ("torch", "torch (file order, padding=True)"),
                            ("torch_sorted", "torch (jax's sorted batches)")):
            if f"encode_seconds_{name}" not in res:
                continue
            waste = res.get(f"encode_padding_waste_{'jax' if name != 'torch' else 'torch'}")
            p(f"  {label:<33} {res[f'encode_seconds_{name}']:7.3f} "
              f"{res[f'encode_seq_per_s_{name}']:8.1f} {res[f'encode_tokens_per_s_{name}']:10.0f}"
              f"  {fmt(waste, '.1%'):>6} {res[f'encode_flops_per_s_{name}'] / 1e9:8.1f} "
              f"{fmt(res[f'encode_mfu_{name}'], '.1%'):>6}")
        p(f"  JAX buckets {res['encode_buckets']}; JAX throughput / torch = "
          f"{fmt(res.get('encode_ratio_vs_torch'), '.2f')}; / torch on "
          f"the same sorted batches = {fmt(res.get('encode_ratio_vs_torch_sorted'), '.2f')}; "
          f"JAX compile {res['compile_seconds_jax_encode']:.1f} s for "
          f"{res['num_compiles_encode']} shapes")
    if res.get("sweep"):
        p("\nbatch-size sweep (train step, sentences/s):")
        p("  batch   jax    torch_eager  torch_compile  jax/torch_eager time")
        for row in res["sweep"]:
            p(f"  {row['batch_size']:5d} {fmt(row.get('train_seq_per_s_jax'), '8.1f')} "
              f"{fmt(row.get('train_seq_per_s_torch_eager'), '12.1f')} "
              f"{fmt(row.get('train_seq_per_s_torch_compile'), '14.1f')} "
              f"{fmt(row.get('train_step_ratio_vs_torch_eager'), '12.3f')}")


def plot_sweep(sweep: list[dict], path: str, res: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    sizes = [r["batch_size"] for r in sweep]
    for name, label, style in (("jax", "JAX (this project)", "o-"),
                               ("torch_eager", "PyTorch eager", "s--"),
                               ("torch_compile", "PyTorch torch.compile", "^:")):
        ys = [r.get(f"train_seq_per_s_{name}") for r in sweep]
        pts = [(x, y) for x, y in zip(sizes, ys) if y]
        if pts:
            ax.plot(*zip(*pts), style, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("batch size per task (a step holds 5 x batch sentences)")
    ax.set_ylabel("train step: sentences / s")
    lengths = f"seq len {res['seq_len']}" if res["seq_len"] else (
        f"real lengths; JAX {res.get('layout', 'packed')}, PyTorch "
        f"{'padding=True per call' if res.get('torch_padding') == 'per-call' else 'same tensors'}")
    ax.set_title(f"{res['model']} {res['dtype']}, {lengths}\n{res['device_kind']} "
                 f"({res['cpu_model']}, {res['cpu_count']} CPUs), {res['date'][:10]}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _json_ready(x):
    if isinstance(x, dict):
        return {str(k): _json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_ready(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    return x


# -------------------------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.benchmark", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", choices=MODELS, default="default",
                   help="default: the embedded all-MiniLM-L6-v2 weights; bert-base / tiny: that "
                        "shape with random weights")
    p.add_argument("--batch-size", type=int, default=8, help="examples per task per step")
    p.add_argument("--seq-len", type=int, default=0,
                   help="fixed sequence length (full-length sentences) instead of real lengths")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="compute dtype (parameters stay float32; PyTorch uses autocast)")
    p.add_argument("--attention-impl", choices=("xla", "cudnn"), default="xla",
                   help="JAX attention implementation (cudnn: NVIDIA GPUs with bfloat16)")
    p.add_argument("--layout", choices=("packed", "padded"), default="packed",
                   help="JAX train-step layout, as training's --pack / --no-pack")
    p.add_argument("--torch-padding", choices=("per-call", "same"), default="per-call",
                   help="PyTorch inputs: per-call = SST and each side of the pairs padded to its "
                        "longest sentence (tokenizer padding=True, as PyTorch users train); same "
                        "= JAX's padded tensors (needs --layout padded)")
    p.add_argument("--sample-steps", type=int, default=16,
                   help="real steps, spread over the planned epoch, timed per repeat")
    p.add_argument("--repeats", type=int, default=10, help="timed passes (median reported)")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed passes first (the first one compiles)")
    p.add_argument("--sizes", default="",
                   help="comma-separated batch sizes for a train-step sweep, e.g. 4,8,16,32")
    p.add_argument("--torch-compile", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the step with torch.compile (n/a with the reason if it fails)")
    p.add_argument("--no-torch", action="store_true", help="time JAX only")
    p.add_argument("--skip-train", action="store_true", help="skip the train-step benchmark")
    p.add_argument("--skip-encode", action="store_true", help="skip the encoding benchmark")
    p.add_argument("--encode-batch-size", type=int, default=64)
    p.add_argument("--encode-limit", type=int, default=0,
                   help="encode only the first N STS dev sentences (0: all 2 x 863)")
    p.add_argument("--limit-train", type=int, default=0,
                   help="use the first N training examples per task for buckets and the pipeline")
    p.add_argument("--pipeline-steps", type=int, default=0,
                   help="steps of the planned epoch to analyse (0: the whole epoch)")
    p.add_argument("--threads", type=int, default=0,
                   help="PyTorch intra-op threads (0: one per CPU, as XLA's thread pool)")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--profile", action="store_true",
                   help="also profile one step (the most used length) of JAX (jax.profiler, op "
                        "time by forward/backward/optimizer) and PyTorch eager (torch.profiler)")
    p.add_argument("--json", default=None, help="write every figure to this JSON file")
    p.add_argument("--plot", default=None,
                   help="PNG of train sentences/s against batch size (needs --sizes)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args._argv = argv
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    for flag in ("batch_size", "repeats", "warmup", "encode_batch_size", "sample_steps"):
        if getattr(args, flag) < 1:
            raise SystemExit(f"--{flag.replace('_', '-')} must be at least 1")
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()}) if args.sizes else []
    if args.plot and not sizes:
        raise SystemExit("--plot needs a batch-size sweep: pass --sizes, e.g. --sizes 4,8,16,32")
    load_before = load_average()

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # torch.compile's parallel compile workers would linger beside the timed loops.
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    import jax
    import torch
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    torch_device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch_device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as XLA's default float32 dot precision
        torch.backends.cudnn.allow_tf32 = True
    platform_name = jax.devices()[0].platform
    if args.attention_impl == "cudnn" and platform_name != "gpu":
        raise SystemExit(f"--attention-impl cudnn needs an NVIDIA GPU (JAX runs on {platform_name})")
    if args.attention_impl == "cudnn" and args.layout == "packed" and not args.seq_len:
        raise SystemExit("--attention-impl cudnn takes no packed rows: add --layout padded")
    if args.attention_impl == "cudnn" and args.dtype == "float32":
        raise SystemExit("--attention-impl cudnn needs --dtype bfloat16")

    env = environment(args, torch_device)
    config, params, heads = load_jax_model(args)
    if args.seq_len and args.seq_len > config.max_position_embeddings:
        raise SystemExit(f"--seq-len {args.seq_len} exceeds the model's "
                         f"{config.max_position_embeddings} positions")
    data = BenchData(args)
    res: dict[str, Any] = {
        **env, "model": args.model, "num_layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size, "params_total": count_params(params),
        "params_non_embedding": non_embedding_params(params), "dtype": args.dtype,
        "attention_impl": args.attention_impl, "batch_size": args.batch_size,
        "seq_len": args.seq_len or None, "repeats": args.repeats, "warmup": args.warmup,
        "layout": args.layout, "torch_padding": args.torch_padding,
        "sample_steps": args.sample_steps, "example_padding_waste": data.example_padding_waste,
        "load_average_before": load_before, "definitions": DEFINITIONS,
    }
    if args.torch_padding == "same" and args.layout == "packed":
        raise SystemExit("--torch-padding same gives PyTorch JAX's padded tensors: it needs "
                         "--layout padded")
    plan = data.plan(args.batch_size, args.layout, args.torch_padding, args.sample_steps,
                     args.pipeline_steps)
    res.update({"pipeline_steps": plan["steps"], "pipeline_layout": plan["layout"],
                "pipeline_distinct_step_shapes": plan["distinct_shapes"],
                "pipeline_padding_waste": plan["padding_waste"],
                "pipeline_padding_waste_torch": plan["padding_waste_torch"]})

    by_size: dict[int, dict] = {}
    if not args.skip_train:
        for b in sorted(set(sizes) | {args.batch_size}):
            log.info("train step, batch size %d", b)
            by_size[b] = bench_train(args, data, config, params, heads, b, torch_device,
                                     {"platform": platform_name, "device_kind": env["device_kind"]})
        main_res = by_size[args.batch_size]
        res.update({k: v for k, v in main_res.items() if k not in ("batch_size",)})
    if not args.skip_encode:
        res.update(bench_encode(args, data, config, params, heads, torch_device,
                                {"platform": platform_name, "device_kind": env["device_kind"]}))
    res["speedup"] = {
        "train_vs_torch_eager": res.get("train_speedup_vs_torch_eager"),
        "train_vs_torch_compile": res.get("train_speedup_vs_torch_compile"),
        "encode_vs_torch": res.get("encode_ratio_vs_torch"),
        "encode_vs_torch_same_batches": res.get("encode_ratio_vs_torch_sorted"),
    }
    if sizes and by_size:
        keep = ("batch_size", "train_step_seconds_jax", "train_step_seconds_torch_eager",
                "train_step_seconds_torch_compile", "train_seq_per_s_jax",
                "train_seq_per_s_torch_eager", "train_seq_per_s_torch_compile",
                "train_step_ratio_vs_torch_eager", "train_step_ratio_vs_torch_compile",
                "pipeline_padding_waste", "pipeline_padding_waste_torch", "num_compiles",
                "compile_seconds_jax")
        res["sweep"] = [{k: by_size[b].get(k) for k in keep} for b in sizes]
    res["load_average_after"] = load_average()
    # The 1-minute load before the run (after it, the benchmark's own threads dominate it).
    busy = (res["load_average_before"] or [0])[0]
    cpus = os.cpu_count() or 1
    res["machine_busy"] = bool(platform_name == "cpu" and busy > 0.5 * cpus + 1)
    print_report(res)
    if res.get("profile"):
        print_profiles(res["profile"])
    if res["machine_busy"]:
        print(f"\nnote: load average {busy} on {cpus} CPUs: other work shared the machine; "
              "rerun when it is quiet for stable numbers")
    if args.plot and res.get("sweep"):
        plot_sweep(res["sweep"], args.plot, res)
        print(f"plot: {args.plot}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(_json_ready(res), indent=2) + "\n")
        print(f"json: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
