"""The timers: this project's train step and encoder, alternating with the PyTorch reference.

`bench_train` and `bench_encode` take `reference`, a `torch_reference.TorchReference`, or None
to time JAX alone (`--no-torch`); this module never imports PyTorch.
"""
from __future__ import annotations

import logging
import statistics
import time
from typing import TYPE_CHECKING, Any, Callable

import jax
import numpy as np

from bert_jax.batching import bucket_length, choose_buckets
from benchmarks.flops import (count_params, device_peak, layout_flops, model_flops,
                                  non_embedding_params)
from benchmarks.profiling import profile_jax
from benchmarks.workload import BenchData, synthetic_batch
from bert_jax.heads import MultitaskBert
from bert_jax.tokenizer import pad_ids
from train.config import TrainConfig
from train.optimizer import make_optimizer
from train.sharding import make_mesh, shard_batch
from train.step import create_state, make_train_step, step_signature, task_losses

if TYPE_CHECKING:  # annotations only: importing it would load PyTorch
    from benchmarks.torch_reference import TorchReference

log = logging.getLogger("benchmarks")


def median(values) -> float:
    return float(statistics.median(values))


class JaxTrainRunner:
    """This project's train step on a one-device mesh, fresh state per batch size."""
    name = "jax"

    def __init__(self, config, params, heads, lr: float, dtype: str = "float32",
                 attention_impl: str = "xla"):
        self.mesh = make_mesh(jax.devices()[:1])
        cfg = TrainConfig(lr=lr)
        self.tx = make_optimizer(cfg, 1_000_000)
        self.model = MultitaskBert(config, heads, dtype=dtype, attention_impl=attention_impl)
        self.state = create_state(params, self.tx, cfg.seed, self.mesh)
        self.step = make_train_step(self.model, self.tx, self.mesh)
        self.compile_seconds = 0.0
        self.signatures: set[tuple] = set()  # the step compiles once per signature run

    def prepare(self, sample):
        batch = shard_batch(sample["jax"], self.mesh)
        jax.block_until_ready(batch)
        return batch

    def run(self, batch):
        self.signatures.add(step_signature(batch))
        self.state, metrics = self.step(self.state, batch)
        jax.block_until_ready((self.state, metrics))
        return metrics

    def num_compiles(self) -> int:
        """Train step programs compiled: one per distinct batch signature run
        (`train.step.step_signature`; the state's is the same throughout)."""
        return len(self.signatures)

    def profile(self, batch, steps: int = 3) -> dict:
        return profile_jax(self, batch, steps)


def same_loss_check(jax_runner: JaxTrainRunner, reference: TorchReference, torch_model,
                    sample) -> dict:
    """Dropout off, same weights, same examples (each framework on its own layout): both
    frameworks' summed loss (a same-work check)."""
    arrays, model = sample["jax"], jax_runner.model

    @jax.jit  # one program, not one per operation (seconds on a GPU or a loaded CPU)
    def loss(params, batch):
        out = model.apply({"params": params}, batch.inputs, deterministic=True)
        return sum(task_losses(out, batch.labels, model.heads.tasks).values())

    loss_jax = float(loss(jax_runner.state.params, arrays))
    loss_torch = reference.loss(torch_model, sample)
    return {"loss_jax": loss_jax, "loss_torch": loss_torch,
            "abs_diff": abs(loss_jax - loss_torch)}


def _error_line(err: Exception) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:200]}" if text else type(err).__name__


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
            failed[r.name] = _error_line(err)
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
                reference: TorchReference | None, device_info: dict) -> dict:
    """Train-step figures at one batch size."""
    if args.seq_len:
        samples = [synthetic_batch(batch_size, args.seq_len, config.vocab_size, args.seed)]
        plan = None
    else:
        plan = data.plan(batch_size, args.layout, args.torch_padding, args.sample_steps,
                         args.pipeline_steps)
        samples = plan["samples"]
    batches = {s["index"]: s for s in samples}
    weights = {s["index"]: 1.0 / len(samples) for s in samples}
    jax_runner = JaxTrainRunner(config, params, heads, args.lr, args.dtype, args.attention_impl)
    runners: list[Any] = [jax_runner]
    check = None
    if reference is not None:
        torch_model = reference.build(config, params, heads)
        check = same_loss_check(jax_runner, reference, torch_model, samples[0])
        runners += reference.train_runners(torch_model, args.lr, args.torch_compile)
    timed = time_train(runners, batches, weights, args.repeats, args.warmup)
    profiles = {}
    if args.profile and batch_size == args.batch_size:
        first = samples[0]
        profiles[first["index"]] = {"jax": jax_runner.profile(jax_runner.prepare(first))}
        for runner in runners:
            if runner.name == "torch_eager":
                profiles[first["index"]]["torch_eager"] = runner.profile(runner.prepare(first))

    n_params = non_embedding_params(params)
    seqs = 5 * batch_size
    mean = lambda f: sum(f(s) for s in samples) / len(samples)
    flops = {"jax": mean(lambda s: layout_flops(n_params, config, s["jax_shapes"], True)),
             "torch": mean(lambda s: layout_flops(n_params, config, s["torch_shapes"], True))}
    padded = {"jax": mean(lambda s: sum(r * t for r, t in s["jax_shapes"])),
              "torch": mean(lambda s: sum(r * t for r, t in s["torch_shapes"]))}
    real = mean(lambda s: s["real_tokens"])
    peak = device_peak(device_info, args.dtype)

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
                      ("torch_compile", "off (--no-torch)" if reference is None
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


def sorted_batches(ids: list[np.ndarray], batch_size: int, buckets, pad_id: int) -> list[tuple]:
    """The sentences as the project evaluates them (train.evaluate): sorted by length, in
    batches padded to their bucket, the last batch filled up; [(ids, mask, real rows, row
    indices)]."""
    lengths = np.asarray([len(r) for r in ids])
    order = np.argsort(lengths, kind="stable")
    batches = []
    for start in range(0, len(ids), batch_size):
        idx = order[start:start + batch_size]
        real = len(idx)
        if real < batch_size:
            idx = np.concatenate([idx, np.full(batch_size - real, idx[-1])])
        length = bucket_length(int(lengths[idx].max()), buckets)
        i, m = pad_ids([ids[j] for j in idx], length, pad_id)
        batches.append((i, m, real, idx[:real]))
    return batches


def time_calls(runs: dict[str, Callable], repeats: int, warmup: int):
    """({name: first call's seconds}, {name: first call's output}, {name: [timed seconds]});
    the calls alternate within each repeat."""
    first, outputs = {}, {}
    for name, fn in runs.items():
        start = time.perf_counter()
        outputs[name] = fn()
        first[name] = time.perf_counter() - start
    for _ in range(max(warmup - 1, 0)):
        for fn in runs.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return first, outputs, times


def bench_encode(args, data: BenchData, config, params, heads,
                 reference: TorchReference | None, device_info: dict) -> dict:
    """Forward + mean pooling of the STS dev sentences: JAX bucketed vs PyTorch padding=True."""
    texts, ids = data.dev_sentences(args.encode_limit)
    n, bs = len(ids), args.encode_batch_size
    lengths = np.asarray([len(r) for r in ids])

    # JAX, as the project evaluates (train.evaluate): buckets chosen over the sentences' lengths.
    buckets = choose_buckets(lengths, data.cfg.max_length,
                             num_buckets=data.cfg.num_buckets)
    model = MultitaskBert(config, heads, dtype=args.dtype, attention_impl=args.attention_impl)
    dev_params = jax.device_put(params)
    embed = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m,
                                                method=MultitaskBert.embed))
    jax_batches = sorted_batches(ids, bs, buckets, data.tokenizer.pad_id)

    encoded_shapes = set()  # `embed` compiles once per distinct input shape run

    def run_jax():
        out = np.zeros((n, config.hidden_size), np.float32)
        for i, m, real, idx in jax_batches:
            encoded_shapes.add((i.shape, i.dtype, m.shape, m.dtype))
            out[idx] = np.asarray(embed(dev_params, jax.device_put(i), jax.device_put(m)))[:real]
        return out

    runs: dict[str, Callable] = {"jax": run_jax}
    shapes = {"jax": [i.shape for i, *_ in jax_batches]}
    if reference is not None:
        torch_runs, shapes["torch"] = reference.encoders(config, params, heads, texts,
                                                         jax_batches, bs, data.cfg.max_length,
                                                         data.model_dir)
        runs.update(torch_runs)
        shapes["torch_sorted"] = shapes["jax"]
    first, outputs, times = time_calls(runs, args.repeats, args.warmup)

    n_params = count_params(params["bert"]["encoder"])
    padded = {name: sum(rows * length for rows, length in s) for name, s in shapes.items()}
    flops = {name: sum(model_flops(n_params, config, rows, length, train=False)
                       for rows, length in s) for name, s in shapes.items()}
    peak = device_peak(device_info, args.dtype)
    real_tokens = int(lengths.sum())
    res: dict[str, Any] = {
        "encode_sentences": n, "encode_batch_size": bs, "encode_real_tokens": real_tokens,
        "encode_buckets": list(buckets),
        "encode_padding_waste_jax": 1 - real_tokens / padded["jax"],
        "num_compiles_encode": len(encoded_shapes),
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
            res[f"encode_ratio_vs_{name}"] = (res["encode_seq_per_s_jax"]
                                              / res[f"encode_seq_per_s_{name}"])
    return res
