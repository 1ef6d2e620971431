"""The device check's JSON keys, its targets with pass/fail, and the printed summary.

`KEYS` is every top-level key of device_check.json (BENCHMARKS.md lists the same, one line each;
tests/test_device_check.py keeps the two equal). `judge` turns the figures into the report
lines: each target's key, value, target and pass (None where it cannot be judged: a figure
missing, a GPU-only figure on the CPU, or any speed figure under --smoke).
"""
from __future__ import annotations

import operator

KEYS: dict[str, str] = {
    # the run
    "date": "UTC start time (ISO 8601)",
    "smoke": "true for `--smoke` (CPU, tiny sizes: figures not comparable to a device's)",
    "device": "JAX's device kind (e.g. NVIDIA H200; cpu under --smoke)",
    "platform": "JAX's backend: gpu, tpu or cpu",
    "device_count": "devices JAX sees (the check uses the first)",
    "gpu": "nvidia-smi's name, driver and memory; null without nvidia-smi",
    "weights": "\"exact\" (the embedded all-MiniLM-L6-v2) or \"float16 copy\" (the pack's, "
               "upcast to float32 at load)",
    "weights_from": "the --init every stage used",
    "data": "where the data came from (the pack's data.tar.xz, or a folder)",
    "pack": "the pack folder used, or null",
    "versions": "python, jax, jaxlib, the JAX CUDA plugin, flax, optax, orbax-checkpoint, torch, "
                "transformers, tokenizers, datasets, dill, multiprocess, pyarrow, fsspec, numpy",
    "budget_seconds": "the time budget of the whole check",
    "wall_seconds": "seconds since the check started (at the last write)",
    "stages": "per stage: status (ok, error, timeout, skipped), seconds (wall), cpu_seconds "
              "(its processes' CPU time), limit_seconds, error",
    "sizes": "the shape of each measurement as run (tiny under --smoke)",
    "targets": "the report lines: per target key, value, target, pass (see below)",
    # correctness
    "correctness_sentences": "STS dev sentences the correctness checks encode (256; 32 smoke)",
    "correctness_padded_length": "their padded length (a multiple of 64)",
    "packed_rows": "rows of 128 tokens the sentences packed into",
    "packed_vs_padded_max_abs_diff": "float32 (highest matmul precision): largest difference "
                                     "between packed and padded mean-pooled embeddings",
    "packed_vs_padded_hidden_max_abs_diff": "the same over every token's last hidden state",
    "bf16_vs_f32_min_cosine": "smallest cosine between bfloat16 and float32 mean-pooled "
                              "embeddings (padded rows, XLA attention)",
    "cudnn_vs_xla_max_abs_diff": "bfloat16, padded rows: largest difference of last hidden "
                                 "states at unpadded positions, cuDNN vs XLA attention (GPU)",
    "cudnn_vs_xla_min_token_cosine": "smallest cosine of those hidden states, per token (GPU)",
    "cudnn_vs_xla_min_cosine": "smallest cosine of the mean-pooled embeddings (GPU)",
    "cudnn_vs_xla_status": "ok, or why the cuDNN check did not run (n/a on a CPU)",
    "bf16_concat_steps": "steps of the bfloat16 concat run read for the losses-fall check "
                         "(the end-to-end run's first 300)",
    "bf16_concat_losses": "its logged mean losses (every 50 steps)",
    "bf16_concat_losses_fall": "the mean of the last two logged losses is below the first",
    "step_shapes_compiled": "train-step programs the concat run compiled",
    "step_shapes_planned": "distinct step shapes its input pipeline planned",
    # end to end
    "concat_10ep_wall_seconds": "wall time of `train.multitask --preset concat` for 10 epochs "
                                "with dev evaluation each epoch (the whole command); null if it "
                                "did not finish",
    "concat_10ep_train_seconds": "its training loop's own seconds (summary.json)",
    "concat_10ep_epochs": "epochs evaluated (10 when it finished)",
    "concat_10ep_dev": "per epoch: dev sst_acc, para_acc, sts_r, overall and seconds since start",
    "concat_10ep_final_dev": "dev scores at the end",
    "concat_10ep_step_compiles": "train-step programs it compiled",
    "concat_10ep_input_wait_fraction": "share of its time the loop waited for input",
    # model FLOP utilisation
    "bert_base_256x128_mfu_jax": "bert-base shape, 256 examples per task x 128 tokens, "
                                 "bfloat16: model FLOP utilisation of the JAX train step "
                                 "against the device's dense peak (null on a CPU)",
    "bert_base_256x128_tflops_jax": "its model TFLOP/s",
    "bert_base_256x128_seq_per_s_jax": "its sequences per second",
    "bert_base_256x128_step_seconds_jax": "its step time",
    "bert_base_256x128_compile_seconds_jax": "its compile time",
    # the multitask step against PyTorch
    "multitask_b8_seq_per_s_jax": "embedded default, batch 8 per task, bfloat16, real steps: "
                                  "JAX sentences per second (packed rows)",
    "multitask_b8_seq_per_s_torch_eager": "PyTorch eager (padding=True per encoder call)",
    "multitask_b8_seq_per_s_torch_compile": "PyTorch torch.compile (dynamic shapes)",
    "multitask_b8_speedup_vs_torch_eager": "PyTorch eager step time / JAX step time",
    "multitask_b8_speedup_vs_torch_compile": "torch.compile step time / JAX step time",
    "multitask_b8_compile_seconds_jax": "JAX compile seconds for the sampled step shapes",
    "multitask_b8_compile_seconds_torch_compile": "torch.compile's compile seconds",
    "multitask_b8_num_compiles_jax": "JAX step programs compiled",
    "multitask_b8_torch_compile_status": "ok, or torch.compile's error",
    "multitask_b8_same_loss_abs_diff": "dropout off, same weights and examples: |JAX loss - "
                                       "PyTorch loss|",
    # bert-base 32x128 against PyTorch
    "bert_base_32x128_seq_per_s_jax": "bert-base shape, 32 examples per task x 128 tokens, "
                                      "bfloat16: JAX sequences per second",
    "bert_base_32x128_seq_per_s_torch_eager": "PyTorch eager, the same tensors",
    "bert_base_32x128_seq_per_s_torch_compile": "PyTorch torch.compile (static shapes)",
    "bert_base_32x128_speedup_vs_torch_eager": "PyTorch eager step time / JAX step time",
    "bert_base_32x128_speedup_vs_torch_compile": "torch.compile step time / JAX step time",
    "bert_base_32x128_compile_seconds_jax": "JAX compile seconds",
    "bert_base_32x128_compile_seconds_torch_compile": "torch.compile's compile seconds",
    "bert_base_32x128_num_compiles_jax": "JAX step programs compiled",
    "bert_base_32x128_torch_compile_status": "ok, or torch.compile's error",
    # encoding
    "encode_sentences": "STS dev sentences encoded (2 x 863; 32 smoke)",
    "encode_seq_per_s_jax": "bfloat16 forward + mean pooling: JAX sentences per second (sorted, "
                            "bucketed batches of 64)",
    "encode_seq_per_s_torch": "PyTorch, tokenizer(padding=True) per batch of 64 in file order",
    "encode_speedup_vs_torch": "JAX sentences/s / PyTorch sentences/s",
    "encode_min_cosine_jax_vs_torch": "smallest cosine between the two frameworks' embeddings",
}
# Null on a CPU (under --smoke) by nature.
GPU_ONLY = ("gpu", "cudnn_vs_xla_max_abs_diff", "cudnn_vs_xla_min_token_cosine",
            "cudnn_vs_xla_min_cosine", "bert_base_256x128_mfu_jax")

# name -> (key, comparison, threshold, judged under --smoke). A threshold given as a string is
# another key of the JSON; None: set per device (`wall_target`).
TARGETS = {
    "packed_vs_padded": ("packed_vs_padded_max_abs_diff", "<=", 1e-4, True),
    "bf16_vs_f32": ("bf16_vs_f32_min_cosine", ">=", 0.999, True),
    "cudnn_vs_xla": ("cudnn_vs_xla_min_cosine", ">=", 0.999, True),
    "bf16_concat_losses_fall": ("bf16_concat_losses_fall", "==", True, True),
    "step_shapes": ("step_shapes_compiled", "<=", "step_shapes_planned", True),
    "multitask_b8_vs_torch_eager": ("multitask_b8_speedup_vs_torch_eager", ">=", 8.0, False),
    "multitask_b8_vs_torch_compile": ("multitask_b8_speedup_vs_torch_compile", ">=", 3.0, False),
    "bert_base_32x128_vs_torch_compile": ("bert_base_32x128_speedup_vs_torch_compile", ">=", 2.5,
                                          False),
    "bert_base_256x128_mfu": ("bert_base_256x128_mfu_jax", ">=", 0.45, False),
    "concat_10ep_wall_seconds": ("concat_10ep_wall_seconds", "<", None, False),
}
OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, "==": operator.eq}


def wall_target(device: str | None) -> float | None:
    """The 10-epoch target: 2.5 minutes on an H200, 3 on an H100; none elsewhere."""
    device = (device or "").upper()
    return 150.0 if "H200" in device else 180.0 if "H100" in device else None


def judge(res: dict) -> dict[str, dict]:
    out = {}
    for name, (key, op, threshold, in_smoke) in TARGETS.items():
        if isinstance(threshold, str):
            threshold = res.get(threshold)
        elif threshold is None:
            threshold = wall_target(res.get("device"))
        value = res.get(key)
        line = {"key": key, "value": value,
                "target": f"{op} {threshold}" if threshold is not None else None, "pass": None}
        if res.get("smoke") and not in_smoke:
            line["note"] = "--smoke: not judged"
        elif threshold is None:
            line["note"] = "no target for this device"
        elif value is None and name == "concat_10ep_wall_seconds":
            stage = (res.get("stages") or {}).get("e2e", {})
            if stage.get("status") == "timeout" and stage.get("seconds", 0) >= threshold:
                line.update({"pass": False, "note": "stopped at its limit, past the target"})
            else:
                line["note"] = "not measured"
        elif value is None:
            line["note"] = "not measured" if key not in GPU_ONLY or res.get("platform") == "gpu" \
                else "n/a on this platform"
        else:
            line["pass"] = bool(OPS[op](value, threshold))
        out[name] = line
    return out


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "n/a" if value is None else str(value)


def print_summary(res: dict, log) -> None:
    """The stages and the report lines, through `log.say`."""
    log.say(f"device {res.get('device')} ({res.get('gpu') or 'no nvidia-smi'}), weights "
            f"{res.get('weights')}, smoke {res.get('smoke')}")
    for name, stage in res.get("stages", {}).items():
        log.say(f"  stage {name:<18} {stage.get('status'):<8} "
                f"{fmt(stage.get('seconds'))} s (CPU {fmt(stage.get('cpu_seconds'))} s) "
                f"{stage.get('error') or ''}")
    for name, line in (res.get("targets") or {}).items():
        verdict = {True: "PASS", False: "FAIL", None: "-"}[line["pass"]]
        log.say(f"  {verdict:<4} {name:<34} {fmt(line['value']):>10}  {line['target'] or ''}"
                f"{'  (' + line['note'] + ')' if line.get('note') else ''}")
