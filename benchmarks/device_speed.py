"""The device check's speed stages against PyTorch `transformers`, same run, same work
(`python -m benchmarks.device_speed STAGE --ctx FILE --result FILE`).

Each stage is one `python -m benchmarks` measurement (`cli.run`) whose figures are kept
under the check's names. PyTorch runs on the same device at the same dtype (autocast),
`torch.compile` with its default mode. This module loads PyTorch at import (the check's JAX-only
stages are in `device_stages`, which does not).
"""
from __future__ import annotations

import sys

from benchmarks import cli
from benchmarks.device_stages import (Results, attention_for_fixed_lengths, bench_args,
                                          device_info, stage_main)
from benchmarks.torch_reference import TorchReference


def reference(ctx: dict, dynamic: bool) -> TorchReference:
    """PyTorch in bfloat16 (autocast), one intra-op thread per CPU. torch.compile: `dynamic`
    shapes for real lengths (one program for every padded length, as a PyTorch user with
    variable lengths compiles), static for fixed ones. --smoke (CPU): one thread, and the
    `eager` backend with static shapes, which traces the graph with Dynamo but skips Inductor's
    minutes of C++ compilation."""
    if ctx["smoke"]:
        return TorchReference(1, "bfloat16", compile_options={"backend": "eager",
                                                              "dynamic": False})
    return TorchReference(0, "bfloat16", compile_options={"dynamic": dynamic})


def keep(res: dict, prefix: str, names: dict[str, str]) -> dict:
    """`res`'s figures `names` (bench key -> check suffix) under `prefix`."""
    return {f"{prefix}_{suffix}": res.get(key) for key, suffix in names.items()}


TRAIN_FIGURES = {
    "train_seq_per_s_jax": "seq_per_s_jax",
    "train_seq_per_s_torch_eager": "seq_per_s_torch_eager",
    "train_seq_per_s_torch_compile": "seq_per_s_torch_compile",
    "train_speedup_vs_torch_eager": "speedup_vs_torch_eager",
    "train_speedup_vs_torch_compile": "speedup_vs_torch_compile",
    "compile_seconds_jax": "compile_seconds_jax",
    "compile_seconds_torch_compile": "compile_seconds_torch_compile",
    "num_compiles": "num_compiles_jax",
    "torch_compile_status": "torch_compile_status",
}


def multitask_b8(ctx: dict, out: Results) -> None:
    """The multitask step of the embedded default at batch 8 per task (40 sentences), real
    steps of the planned epoch: JAX packed as training packs, PyTorch padded per call
    (`tokenizer(padding=True)`), eager and torch.compile'd."""
    smoke = ctx["smoke"]
    flags = (["--batch-size", "2", "--sample-steps", "1", "--repeats", "2", "--warmup", "1",
              "--limit-train", "64", "--pipeline-steps", "8"] if smoke else
             ["--batch-size", "8", "--sample-steps", "8", "--repeats", "10", "--warmup", "2",
              "--pipeline-steps", "400"])
    args = bench_args(ctx, ["--model", "default", "--dtype", "bfloat16", "--layout", "packed",
                            "--torch-padding", "per-call", "--skip-encode", *flags])
    out.update(**device_info(), multitask_b8_shape=(
        f"embedded default, {args.batch_size} examples per task ({5 * args.batch_size} "
        f"sentences) per step, bfloat16, {args.sample_steps} real steps of the first "
        f"{args.pipeline_steps}; JAX packed, PyTorch padded per call"))
    res = cli.run(args, [], reference(ctx, dynamic=True), [], None)
    c = res.get("same_loss_check") or {}
    out.update(**keep(res, "multitask_b8", TRAIN_FIGURES),
               multitask_b8_same_loss_abs_diff=c.get("abs_diff"))


def bert_base_32x128(ctx: dict, out: Results) -> None:
    """bert-base's shape (random weights) at 32 examples per task x 128 tokens, bfloat16: JAX
    against PyTorch eager and torch.compile on identical full-length tensors."""
    smoke = ctx["smoke"]
    flags = (["--model", "tiny", "--batch-size", "2", "--seq-len", "16", "--repeats", "2",
              "--warmup", "1"] if smoke else
             ["--model", "bert-base", "--batch-size", "32", "--seq-len", "128", "--repeats", "10",
              "--warmup", "2"])
    args = bench_args(ctx, [*flags, "--dtype", "bfloat16", "--attention-impl",
                            attention_for_fixed_lengths(), "--skip-encode", "--limit-train", "64"])
    out.update(**device_info(), bert_base_32x128_shape=(
        f"{args.model}, {args.batch_size} examples per task ({5 * args.batch_size} sequences) x "
        f"{args.seq_len} tokens, bfloat16, JAX attention {args.attention_impl}"))
    res = cli.run(args, [], reference(ctx, dynamic=False), [], None)
    out.update(**keep(res, "bert_base_32x128", TRAIN_FIGURES))


def encode(ctx: dict, out: Results) -> None:
    """Forward + mean pooling of the STS dev sentences (2 x 863), bfloat16: JAX as the project
    evaluates (sorted, bucketed) against PyTorch with `tokenizer(padding=True)` per batch."""
    smoke = ctx["smoke"]
    flags = (["--encode-limit", "32", "--encode-batch-size", "16", "--repeats", "2",
              "--warmup", "1"] if smoke else
             ["--encode-batch-size", "64", "--repeats", "5", "--warmup", "2"])
    args = bench_args(ctx, ["--model", "default", "--dtype", "bfloat16", "--skip-train",
                            "--limit-train", "64", *flags])
    out.update(**device_info())
    res = cli.run(args, [], reference(ctx, dynamic=False), [], None)
    out.update(encode_sentences=res.get("encode_sentences"),
               encode_seq_per_s_jax=res.get("encode_seq_per_s_jax"),
               encode_seq_per_s_torch=res.get("encode_seq_per_s_torch"),
               encode_speedup_vs_torch=res.get("encode_ratio_vs_torch"),
               encode_min_cosine_jax_vs_torch=res.get("encode_min_cosine_jax_vs_torch"))


STAGES = {"multitask_b8": multitask_b8, "bert_base_32x128": bert_base_32x128, "encode": encode}

if __name__ == "__main__":
    sys.exit(stage_main(STAGES))
