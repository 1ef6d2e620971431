"""Throughput benchmark: this project's JAX train step and encoder against PyTorch `transformers`.

`python -m benchmarks [flags]` from the repository root (the package is not installed with
`bert_jax`): the flags and `main` (what is timed: the package's docstring).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from typing import Any

import jax

from benchmarks.flops import count_params, non_embedding_params
from benchmarks.report import (DEFINITIONS, environment, load_average, plot_sweep,
                                   print_profiles, print_report, write_json)
from benchmarks.timing import bench_encode, bench_train
from benchmarks.workload import MODELS, BenchData, load_jax_model
from bert_jax.cli import prog, seed_int

log = logging.getLogger("benchmarks")

TORCH_EXTRA = "pip install -e '.[torch]'"
# The train-step figures a --sizes sweep keeps per batch size.
SWEEP_KEYS = ("batch_size", "train_step_seconds_jax", "train_step_seconds_torch_eager",
              "train_step_seconds_torch_compile", "train_seq_per_s_jax",
              "train_seq_per_s_torch_eager", "train_seq_per_s_torch_compile",
              "train_step_ratio_vs_torch_eager", "train_step_ratio_vs_torch_compile",
              "pipeline_padding_waste", "pipeline_padding_waste_torch", "num_compiles",
              "compile_seconds_jax")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog("benchmarks"),
                                description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", choices=MODELS, default="default",
                   help="default: the embedded all-MiniLM-L6-v2 weights; bert-base / tiny: that "
                        "shape with random weights")
    p.add_argument("--init", default="all-MiniLM-L6-v2",
                   help="weights (and tokenizer) of --model default: the embedded default, or a "
                        "converted or HuggingFace folder holding them (e.g. a float16 copy)")
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
    p.add_argument("--no-torch", action="store_true",
                   help="time JAX only (PyTorch and transformers need not be installed)")
    p.add_argument("--skip-train", action="store_true", help="skip the train-step benchmark")
    p.add_argument("--skip-encode", action="store_true", help="skip the encoding benchmark")
    p.add_argument("--encode-batch-size", type=int, default=64,
                   help="sentences per encoding batch (both frameworks)")
    p.add_argument("--encode-limit", type=int, default=0,
                   help="encode only the first N STS dev sentences (0: all 2 x 863)")
    p.add_argument("--limit-train", type=int, default=0,
                   help="use the first N training examples per task for buckets and the pipeline")
    p.add_argument("--pipeline-steps", type=int, default=0,
                   help="steps of the planned epoch to analyse (0: the whole epoch)")
    p.add_argument("--threads", type=int, default=0,
                   help="PyTorch intra-op threads (0: one per CPU, as XLA's thread pool)")
    p.add_argument("--lr", type=float, default=1e-5,
                   help="AdamW learning rate of the timed train steps (both frameworks)")
    p.add_argument("--seed", type=seed_int, default=0,
                   help="seed of the random weights (the heads; the encoder too with --model "
                        "bert-base / tiny) and of the --seq-len batch")
    p.add_argument("--data-dir", default=None,
                   help="folder of the CS224N files (None: ./data, else ../shared/data)")
    p.add_argument("--profile", action="store_true",
                   help="also profile one step (the most used length) of JAX (jax.profiler, op "
                        "time by forward/backward/optimizer) and PyTorch eager (torch.profiler)")
    p.add_argument("--json", default=None, help="write every figure to this JSON file")
    p.add_argument("--plot", default=None,
                   help="PNG of train sentences/s against batch size (needs --sizes)")
    return p


def check_args(args) -> list[int]:
    """Refuse flags that cannot work together (before anything loads); the sweep's sizes."""
    for flag in ("batch_size", "repeats", "warmup", "encode_batch_size", "sample_steps"):
        if getattr(args, flag) < 1:
            raise SystemExit(f"--{flag.replace('_', '-')} must be at least 1")
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()}) if args.sizes else []
    if args.plot and not sizes:
        raise SystemExit("--plot needs a batch-size sweep: pass --sizes, e.g. --sizes 4,8,16,32")
    if args.torch_padding == "same" and args.layout == "packed":
        raise SystemExit("--torch-padding same gives PyTorch JAX's padded tensors: it needs "
                         "--layout padded")
    return sizes


def check_device(args, platform_name: str) -> None:
    if args.attention_impl == "cudnn" and platform_name != "gpu":
        raise SystemExit(f"--attention-impl cudnn needs an NVIDIA GPU (JAX runs on {platform_name})")
    if args.attention_impl == "cudnn" and args.layout == "packed" and not args.seq_len:
        raise SystemExit("--attention-impl cudnn takes no packed rows: add --layout padded")
    if args.attention_impl == "cudnn" and args.dtype == "float32":
        raise SystemExit("--attention-impl cudnn needs --dtype bfloat16")


def torch_reference(args):
    """The PyTorch reference (a `torch_reference.TorchReference`), or exit 2 naming the extra to
    install when torch or transformers is missing."""
    # The one import inside a function in this package, on purpose: torch and transformers are
    # optional dependencies (the `torch` extra), loaded only when PyTorch timings are asked for
    # (not with --no-torch). It dodges no import cycle.
    try:
        from benchmarks.torch_reference import TorchReference
    except ImportError as err:
        if (err.name or "").split(".")[0] not in ("torch", "transformers"):
            raise
        print(f"python -m benchmarks: PyTorch timings need torch and transformers "
              f"({err.name} is missing): {TORCH_EXTRA}, or pass --no-torch", file=sys.stderr)
        raise SystemExit(2) from None
    return TorchReference(args.threads, args.dtype)


def run(args, sizes: list[int], reference, argv: list[str],
        load_before: list[float] | None) -> dict[str, Any]:
    """Every figure of the run (`reference`: the PyTorch side, or None for --no-torch)."""
    platform_name = jax.devices()[0].platform
    check_device(args, platform_name)
    env = environment(argv, reference.environment() if reference else None)
    device_info = {"platform": platform_name, "device_kind": env["device_kind"]}
    config, params, heads = load_jax_model(args.model, args.seed, args.init)
    if args.seq_len and args.seq_len > config.max_position_embeddings:
        raise SystemExit(f"--seq-len {args.seq_len} exceeds the model's "
                         f"{config.max_position_embeddings} positions")
    data = BenchData(args.data_dir, args.limit_train, args.init)
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
            by_size[b] = bench_train(args, data, config, params, heads, b, reference,
                                     device_info)
        res.update({k: v for k, v in by_size[args.batch_size].items() if k != "batch_size"})
    if not args.skip_encode:
        res.update(bench_encode(args, data, config, params, heads, reference, device_info))
    res["speedup"] = {
        "train_vs_torch_eager": res.get("train_speedup_vs_torch_eager"),
        "train_vs_torch_compile": res.get("train_speedup_vs_torch_compile"),
        "encode_vs_torch": res.get("encode_ratio_vs_torch"),
        "encode_vs_torch_same_batches": res.get("encode_ratio_vs_torch_sorted"),
    }
    if sizes and by_size:
        res["sweep"] = [{k: by_size[b].get(k) for k in SWEEP_KEYS} for b in sizes]
    res["load_average_after"] = load_average()
    # The 1-minute load before the run (after it, the benchmark's own threads dominate it).
    busy = (res["load_average_before"] or [0])[0]
    res["machine_busy"] = bool(platform_name == "cpu" and busy > 0.5 * (os.cpu_count() or 1) + 1)
    return res


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    sizes = check_args(args)
    load_before = load_average()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # torch.compile's parallel compile workers would linger beside the timed loops.
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    reference = None if args.no_torch else torch_reference(args)

    res = run(args, sizes, reference, sys.argv[1:] if argv is None else argv, load_before)
    print_report(res)
    if res.get("profile"):
        print_profiles(res["profile"])
    if res["machine_busy"]:
        print(f"\nnote: load average {res['load_average_before'][0]} on {os.cpu_count() or 1} "
              "CPUs: other work shared the machine; rerun when it is quiet for stable numbers")
    if args.plot and res.get("sweep"):
        plot_sweep(res["sweep"], args.plot, res)
        print(f"plot: {args.plot}")
    if args.json:
        write_json(res, args.json)
        print(f"json: {args.json}")
    return 0
