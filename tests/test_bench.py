"""`python -m bert_jax.bench` at a tiny size: it runs, and its JSON holds every figure; without
PyTorch it says what to install, and `--no-torch` times JAX alone."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require

from bert_jax.bench import cli
from bert_jax.bench.report import plot_sweep, sweep_figure

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "tiny", "--batch-size", "2", "--seq-len", "16", "--repeats", "2",
        "--warmup", "1", "--limit-train", "64", "--encode-limit", "64",
        "--encode-batch-size", "16"]
# The CLI with torch and transformers unimportable, as on a machine without the extra.
NO_TORCH = ("import sys; sys.modules['torch'] = sys.modules['transformers'] = None; "
            "from bert_jax.bench.cli import main; sys.exit(main(sys.argv[1:]))")
# The CLI, then which of torch and transformers it loaded.
TORCH_LOADED = ("import sys; from bert_jax.bench.cli import main; code = main(sys.argv[1:]); "
                "print('loaded:', [m for m in ('torch', 'transformers') if m in sys.modules]); "
                "sys.exit(code)")


def run_bench(args, bert_jax_cache, prefix=("-m", "bert_jax.bench")):
    env = {**os.environ, "BERT_JAX_CACHE": str(bert_jax_cache),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *prefix, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=170)


@pytest.mark.slow
def test_benchmark_tiny_runs_and_writes_json(tmp_path, data_dir, bert_jax_cache):
    require("torch")
    require("transformers")
    out = tmp_path / "bench.json"
    proc = run_bench([*TINY, "--no-torch-compile", "--data-dir", str(data_dir),
                      "--json", str(out)], bert_jax_cache)
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


@pytest.mark.slow
def test_no_torch_times_jax_without_loading_pytorch(tmp_path, data_dir, bert_jax_cache):
    out = tmp_path / "bench.json"
    args = [*TINY, "--data-dir", str(data_dir), "--json", str(out)]
    refused = run_bench(args, bert_jax_cache, prefix=("-c", NO_TORCH))
    assert refused.returncode == 2, refused.stdout[-3000:] + refused.stderr[-3000:]
    assert "pip install -e '.[torch]'" in refused.stderr and "--no-torch" in refused.stderr
    assert "Traceback" not in refused.stderr and not out.exists()

    proc = run_bench([*args, "--no-torch"], bert_jax_cache, prefix=("-c", TORCH_LOADED))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "loaded: []" in proc.stdout  # so --no-torch needs neither installed
    res = json.loads(out.read_text())
    assert res["train_step_seconds_jax"] > 0 and res["encode_seq_per_s_jax"] > 0
    assert res["train_step_seconds_torch_eager"] is None
    assert res["torch_eager_status"] == res["torch_compile_status"] == "off (--no-torch)"
    assert res["same_loss_check"] is None and "encode_seq_per_s_torch" not in res
    assert not {"torch", "transformers"} & set(res["versions"])


def test_flags_that_cannot_work_together_are_refused():
    for args, message in ((["--plot", "p.png"], "--plot needs a batch-size sweep"),
                          (["--torch-padding", "same"], "it needs --layout padded"),
                          (["--repeats", "0"], "--repeats must be at least 1")):
        with pytest.raises(SystemExit, match=message):
            cli.check_args(cli.build_parser().parse_args(args))


def test_plot_sweep(tmp_path):
    sweep = [{"batch_size": b, "train_seq_per_s_jax": 10.0 * b, "train_seq_per_s_torch_eager": 5.0 * b,
              "train_seq_per_s_torch_compile": None} for b in (4, 8, 16)]
    res = {"seq_len": None, "model": "default", "dtype": "float32", "device_kind": "cpu",
           "cpu_model": "test CPU", "cpu_count": 2, "date": "2026-01-01T00:00:00"}
    path = tmp_path / "plot.png"
    plot_sweep(sweep, str(path), res)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = {line.get_label(): line for line in sweep_figure(sweep, res).axes[0].get_lines()}
    assert set(lines) == {"JAX (this project)", "PyTorch eager"}  # compile did not run
    for label, per_batch in (("JAX (this project)", 10.0), ("PyTorch eager", 5.0)):
        assert list(lines[label].get_xdata()) == [4, 8, 16]
        assert list(lines[label].get_ydata()) == [per_batch * b for b in (4, 8, 16)]
