"""`python -m train.benchmark` at a tiny size: it runs, and its JSON holds every figure."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("torch")
pytest.importorskip("transformers")


def test_benchmark_tiny_runs_and_writes_json(tmp_path, data_dir, bert_jax_cache):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "train.benchmark", "--model", "tiny", "--batch-size", "2",
           "--seq-len", "16", "--repeats", "2", "--warmup", "1",
           "--no-torch-compile", "--limit-train", "64", "--encode-limit", "64",
           "--encode-batch-size", "16", "--data-dir", str(data_dir), "--json", str(out)]
    env = {**os.environ, "BERT_JAX_CACHE": str(bert_jax_cache),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())

    positive = ["train_step_seconds_jax", "train_step_seconds_torch_eager",
                "train_step_ratio_vs_torch_eager", "train_speedup_vs_torch_eager",
                "train_seq_per_s_jax", "train_seq_per_s_torch_eager", "train_tokens_per_s_jax",
                "train_tokens_per_s_torch_eager", "compile_seconds_jax", "num_compiles",
                "encode_seq_per_s_jax", "encode_seq_per_s_torch", "encode_seq_per_s_torch_sorted",
                "encode_ratio_vs_torch", "encode_tokens_per_s_jax", "encode_tokens_per_s_torch",
                "pipeline_steps", "pipeline_distinct_step_shapes", "pipeline_padding_waste"]
    for key in positive:
        assert isinstance(res.get(key), (int, float)) and res[key] > 0, (key, res.get(key))
    assert res["num_compiles"] == 1  # one fixed --seq-len shape
    assert res["train_step_ratio_vs_torch_eager"] == pytest.approx(
        res["train_step_seconds_jax"] / res["train_step_seconds_torch_eager"])
    assert res["speedup"]["train_vs_torch_eager"] == pytest.approx(
        1 / res["train_step_ratio_vs_torch_eager"])
    assert res["encode_ratio_vs_torch"] == pytest.approx(
        res["encode_seq_per_s_jax"] / res["encode_seq_per_s_torch"])
    # torch.compile was switched off: reported, not timed.
    assert res["train_step_seconds_torch_compile"] is None
    assert res["torch_compile_status"].startswith("off")
    # MFU needs a known accelerator peak: none on CPU.
    if res["platform"] == "cpu":
        assert res["train_mfu_jax"] is None
    # Same weights and batch, dropout off: both frameworks compute the same loss.
    check = res["same_loss_check"]
    assert check["abs_diff"] < 1e-3 * max(1.0, abs(check["loss_jax"]))
    assert res["encode_min_cosine_jax_vs_torch"] > 0.999
    for key in ("device", "device_kind", "versions", "date", "command", "cpu_model"):
        assert res[key], key
    assert {"jax", "flax", "torch", "transformers"} <= set(res["versions"])


def test_plot_sweep(tmp_path):
    pytest.importorskip("matplotlib")
    from train.benchmark import plot_sweep
    sweep = [{"batch_size": b, "train_seq_per_s_jax": 10.0 * b, "train_seq_per_s_torch_eager": 5.0 * b,
              "train_seq_per_s_torch_compile": None} for b in (4, 8, 16)]
    res = {"seq_len": None, "model": "default", "dtype": "float32", "device_kind": "cpu",
           "cpu_model": "test CPU", "cpu_count": 2, "date": "2026-01-01T00:00:00"}
    path = tmp_path / "plot.png"
    plot_sweep(sweep, str(path), res)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
