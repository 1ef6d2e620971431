"""The PyTorch side of the benchmark: `transformers.BertModel` + this project's heads, with the JAX
weights copied in; its train step (eager or `torch.compile`d), its encoder, its profile.

torch and transformers are optional dependencies of bert_jax (the `torch` extra): this is the
one module of `benchmarks` that imports them, and `cli` loads it only when PyTorch timings
are asked for (not with `--no-torch`).
"""
from __future__ import annotations

import copy
import os
import statistics
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
import transformers

from bert_jax.config import BertConfig
from bert_jax.embedded import embedded_model_dir
from bert_jax.heads import NUM_SENTIMENT_CLASSES, HeadConfig
from bert_jax.weight_names import rename_table


class TorchMultitaskBert(torch.nn.Module):
    """The PyTorch counterpart of `MultitaskBert` (same heads, pooling and dropout)."""

    def __init__(self, hf_config: transformers.BertConfig, dropout: float):
        super().__init__()
        d = hf_config.hidden_size
        self.bert = transformers.BertModel(hf_config, add_pooling_layer=False)
        self.dropout = torch.nn.Dropout(dropout)
        self.sst_classifier = torch.nn.Linear(d, NUM_SENTIMENT_CLASSES)
        self.para_hidden = torch.nn.Linear(2 * d, d)
        self.para_classifier = torch.nn.Linear(d, 1)

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
        sts = 5.0 * F.cosine_similarity(s1, s2, dim=-1, eps=1e-8)
        return sst_logits.float(), para.float(), sts.float()


def torch_state_from_jax(params, config: BertConfig) -> dict[str, np.ndarray]:
    """HuggingFace `BertModel` (no pooler) state dict holding the same weights as `params`."""
    state = {}
    for key, (path, transpose) in rename_table("huggingface", config, pooler=False).items():
        value = params["bert"]
        for part in path:
            value = value[part]
        state[key] = np.ascontiguousarray(value.T if transpose else value)
    return state


def build_torch_model(config: BertConfig, params, heads: HeadConfig,
                      device: str) -> TorchMultitaskBert:
    """The PyTorch counterpart of `MultitaskBert`, with the weights of `params`."""
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
    model = TorchMultitaskBert(hf_config, heads.dropout)
    state = {f"bert.{k}": torch.from_numpy(np.array(v)) for k, v in
             torch_state_from_jax(params, config).items()}
    for name in ("sst_classifier", "para_hidden", "para_classifier"):
        state[f"{name}.weight"] = torch.from_numpy(np.array(params[name]["kernel"].T))
        state[f"{name}.bias"] = torch.from_numpy(np.array(params[name]["bias"]))
    model.load_state_dict(state, strict=True)
    return model.to(device)


def torch_losses(outputs, labels):
    sst, para, sts = outputs
    return (F.cross_entropy(sst, labels["sst"]) +
            F.binary_cross_entropy_with_logits(para, labels["para"]) +
            F.mse_loss(sts, labels["sts"]))


def torch_batch(sample, device: str):
    """A sample's PyTorch inputs as tensors: ([(ids, mask)] encoder calls, labels, B)."""
    to = lambda x, dt: torch.from_numpy(np.ascontiguousarray(x)).to(device, dt)
    labels = sample["labels"]
    calls = [(to(i, torch.int64), to(m, torch.int64)) for i, m in sample["torch"]]
    return calls, {"sst": to(labels["sst"], torch.int64),
                   "para": to(labels["para"], torch.float32),
                   "sts": to(labels["sts"], torch.float32)}, len(labels["sst"])


def autocast(device: str, dtype: str):
    """Mixed precision at `dtype` (parameters stay float32); a no-op for float32."""
    return torch.autocast(device_type=device, dtype=getattr(torch, dtype),
                          enabled=dtype != "float32")


class TorchTrainRunner:
    """The same step in PyTorch: eager, or with the forward and losses `torch.compile`d
    (`compile_options`: torch.compile's keyword arguments; default static shapes)."""

    def __init__(self, model, lr: float, device: str, dtype: str, compiled: bool,
                 compile_options: dict | None = None):
        self.name = "torch_compile" if compiled else "torch_eager"
        self.device = device
        self.model = model
        self.model.train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.0)
        amp_dtype, amp = getattr(torch, dtype), dtype != "float32"

        def loss_fn(calls, labels, batch_size):
            with torch.autocast(device_type=device, dtype=amp_dtype, enabled=amp):
                return torch_losses(self.model(calls, batch_size), labels)

        options = {"dynamic": False} if compile_options is None else compile_options
        self.loss_fn = torch.compile(loss_fn, **options) if compiled else loss_fn
        self.compile_seconds = 0.0

    def prepare(self, sample):
        return torch_batch(sample, self.device)

    def sync(self):
        if self.device == "cuda":
            torch.cuda.synchronize()

    def run(self, batch):
        calls, labels, batch_size = batch
        loss = self.loss_fn(calls, labels, batch_size)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sync()
        return loss

    def profile(self, batch, steps: int = 3) -> dict:
        """Wall time of the step's phases (forward+losses, backward, AdamW), and the top ops by
        self CPU time from torch.profiler."""
        calls, labels, b = batch
        phases = {"forward": [], "backward": [], "optimizer": []}
        for _ in range(steps):
            t0 = time.perf_counter()
            loss = self.loss_fn(calls, labels, b)
            self.sync()
            t1 = time.perf_counter()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.sync()
            t2 = time.perf_counter()
            self.opt.step()
            self.sync()
            t3 = time.perf_counter()
            for k, v in zip(phases, (t1 - t0, t2 - t1, t3 - t2)):
                phases[k].append(v)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                self.run(batch)
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        top = [{"op": e.key, "self_seconds": e.self_cpu_time_total / 1e6 / steps,
                "calls": e.count // steps} for e in events[:12]]
        return {"by_phase": {k: float(statistics.median(v)) for k, v in phases.items()},
                "top_ops": top}


class TorchReference:
    """PyTorch on this machine (CUDA when there is one) at `dtype`, with `threads` intra-op
    threads (0: one per CPU, as XLA's thread pool): what `timing` calls for the reference side.
    `compile_options`: torch.compile's keyword arguments for the compiled step (default
    `dynamic=False`: one program per shape)."""

    def __init__(self, threads: int, dtype: str, compile_options: dict | None = None):
        torch.set_num_threads(threads or os.cpu_count() or 1)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # as XLA's default float32 precision
            torch.backends.cudnn.allow_tf32 = True
        self.dtype = dtype
        self.compile_options = compile_options

    def environment(self) -> dict:
        return {"torch_device": self.device, "torch_threads": torch.get_num_threads(),
                "versions": {"torch": torch.__version__,
                             "transformers": transformers.__version__}}

    def build(self, config: BertConfig, params, heads: HeadConfig) -> TorchMultitaskBert:
        return build_torch_model(config, params, heads, self.device)

    def train_runners(self, model: TorchMultitaskBert, lr: float,
                      compiled_too: bool) -> list[TorchTrainRunner]:
        """The eager step on `model`, and (`compiled_too`) the torch.compile'd one on a copy."""
        runners = [TorchTrainRunner(model, lr, self.device, self.dtype, compiled=False)]
        if compiled_too:
            torch._dynamo.reset()
            runners.append(TorchTrainRunner(copy.deepcopy(model), lr, self.device, self.dtype,
                                            compiled=True, compile_options=self.compile_options))
        return runners

    def loss(self, model: TorchMultitaskBert, sample) -> float:
        """The summed loss of `sample` with dropout off (the same-work check)."""
        calls, labels, b = torch_batch(sample, self.device)
        model.eval()
        with torch.no_grad(), autocast(self.device, self.dtype):
            loss = float(torch_losses(model(calls, b), labels))
        model.train()
        return loss

    def encoders(self, config: BertConfig, params, heads: HeadConfig, texts: list[str],
                 sorted_batches, batch_size: int, max_length: int,
                 model_dir=None) -> tuple[dict[str, Callable], list[tuple[int, int]]]:
        """PyTorch's encoders of `texts` under `torch.inference_mode`, each returning the
        [len(texts), hidden] pooled embeddings: "torch" as users write it (the HF tokenizer's
        `padding=True` per batch, in file order) and "torch_sorted" on the project's sorted,
        bucketed batches (`sorted_batches`: [(ids, mask, real rows, row indices)], JAX's
        arrays); with the file-order batches' [(rows, length)]. The HuggingFace tokenizer is
        read from `model_dir` (default: the embedded default's folder)."""
        device, n, hidden = self.device, len(texts), config.hidden_size
        tok = transformers.AutoTokenizer.from_pretrained(str(model_dir or embedded_model_dir()))
        file_order = []
        for start in range(0, n, batch_size):
            enc = tok(texts[start:start + batch_size], padding=True, truncation=True,
                      max_length=max_length, return_tensors="pt")
            file_order.append((enc["input_ids"].to(device), enc["attention_mask"].to(device),
                               start))
        on_device = [(torch.from_numpy(i.astype(np.int64)).to(device),
                      torch.from_numpy(m.astype(np.int64)).to(device), real, idx)
                     for i, m, real, idx in sorted_batches]
        model = self.build(config, params, heads).eval()

        def run_file_order():
            out = np.zeros((n, hidden), np.float32)
            with torch.inference_mode(), autocast(device, self.dtype):
                for i, m, start in file_order:
                    out[start:start + len(i)] = model.embed(i, m).float().cpu().numpy()
            return out

        def run_sorted():
            out = np.zeros((n, hidden), np.float32)
            with torch.inference_mode(), autocast(device, self.dtype):
                for i, m, real, idx in on_device:
                    out[idx] = model.embed(i, m).float().cpu().numpy()[:real]
            return out

        shapes = [(int(i.shape[0]), int(i.shape[1])) for i, _, _ in file_order]
        return {"torch": run_file_order, "torch_sorted": run_sorted}, shapes
