"""`python -m benchmarks` at a tiny size: its JSON holds every figure, each what it claims to be
(work sizes, parameter counts and FLOPs recomputed here from the tokenizer, the data file and
PyTorch's BertModel; rates = work / seconds), and the printed report shows the JSON's numbers;
without PyTorch it says what to install, and `--no-torch` times JAX alone."""
import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require

from benchmarks import cli
from benchmarks.report import plot_sweep, sweep_figure
from bert_jax.config import PRESETS
from bert_jax.embedded import embedded_model_dir

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "tiny", "--batch-size", "2", "--seq-len", "16", "--repeats", "2",
        "--warmup", "1", "--limit-train", "64", "--encode-limit", "64",
        "--encode-batch-size", "16"]
# The CLI with torch and transformers unimportable, as on a machine without the extra.
NO_TORCH = ("import sys; sys.modules['torch'] = sys.modules['transformers'] = None; "
            "from benchmarks.cli import main; sys.exit(main(sys.argv[1:]))")
# The CLI, then which of torch and transformers it loaded.
TORCH_LOADED = ("import sys; from benchmarks.cli import main; code = main(sys.argv[1:]); "
                "print('loaded:', [m for m in ('torch', 'transformers') if m in sys.modules]); "
                "sys.exit(code)")


def run_bench(args, bert_jax_cache, prefix=("-m", "benchmarks")):
    env = {**os.environ, "BERT_JAX_CACHE": str(bert_jax_cache),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *prefix, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=170)


def tiny_counts() -> dict[str, int]:
    """The tiny shape's parameters as PyTorch `transformers` counts them ("encoder", "bert":
    embeddings, encoder and pooler), and the heads' by hand (SST linear H -> 5, paraphrase
    [|u-v|, u*v] -> H -> 1, STS cosine: none)."""
    transformers = require("transformers")
    c = PRESETS["tiny"]
    model = transformers.BertModel(transformers.BertConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads, intermediate_size=c.intermediate_size,
        max_position_embeddings=c.max_position_embeddings, type_vocab_size=c.type_vocab_size))
    h = c.hidden_size
    return {"encoder": sum(p.numel() for p in model.encoder.parameters()),
            "bert": sum(p.numel() for p in model.parameters()),
            "heads": (5 * h + 5) + (2 * h * h + h) + (h + 1)}


def model_flops(n_params: int, sequences: int, length: int, train: bool) -> float:
    """The package's documented model FLOPs: training 6 x non-embedding parameters x padded
    tokens + 12 x layers x sequences x T^2 x hidden; inference a third of that."""
    c = PRESETS["tiny"]
    train_flops = (6 * n_params * sequences * length
                   + 12 * c.num_hidden_layers * sequences * length ** 2 * c.hidden_size)
    return train_flops if train else train_flops / 3


def sts_dev_lengths(data_dir: Path, n: int) -> list[int]:
    """Token counts of the first n STS dev sentences in file order (all sentence1 first), read
    with csv and tokenized with `tokenizers` from the embedded default's tokenizer.json."""
    tokenizers = require("tokenizers")
    with open(data_dir / "sts-dev.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    texts = ([r["sentence1"].lower().strip() for r in rows]
             + [r["sentence2"].lower().strip() for r in rows])[:n]
    tok = tokenizers.Tokenizer.from_file(str(embedded_model_dir() / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(128)
    return [len(e.ids) for e in tok.encode_batch(texts)]


def numbers(x, where="res"):
    """(path, value) of every number in a JSON tree."""
    if isinstance(x, dict):
        for k, v in x.items():
            yield from numbers(v, f"{where}.{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from numbers(v, f"{where}[{i}]")
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        yield where, x


def report_row(stdout: str, label: str) -> list[str]:
    """The printed report's row starting with `label`, split into its fields after the label."""
    rows = [line[len(label) + 2:].split() for line in stdout.splitlines()
            if line.startswith(f"  {label} ")]
    assert len(rows) == 1, (label, stdout[-3000:])
    return rows[0]


@pytest.mark.slow
def test_benchmark_tiny_writes_figures_that_hold(tmp_path, data_dir, bert_jax_cache):
    require("torch")
    counts = tiny_counts()
    out = tmp_path / "bench.json"
    args = [*TINY, "--no-torch-compile", "--sizes", "2", "--data-dir", str(data_dir),
            "--json", str(out)]
    proc = run_bench(args, bert_jax_cache)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["command"] == " ".join(["python -m benchmarks", *args])
    bad = [(k, v) for k, v in numbers(res) if not math.isfinite(v)]
    assert not bad, bad

    # The work: 5 x 2 sentences of 16 tokens (--seq-len: no padding), the tiny shape's
    # parameters as transformers counts them, and the documented FLOPs of that.
    seqs, length, c = 10, 16, PRESETS["tiny"]
    assert (res["num_layers"], res["hidden_size"]) == (c.num_hidden_layers, c.hidden_size)
    assert res["sentences_per_step"] == seqs and res["sampled_jax_shapes"] == [[[seqs, length]]]
    for key in ("padded_tokens_per_step_jax", "padded_tokens_per_step_torch",
                "real_tokens_per_step"):
        assert res[key] == seqs * length, key
    assert res["params_non_embedding"] == counts["encoder"] + counts["heads"]
    assert res["params_total"] == counts["bert"] + counts["heads"]
    step_flops = model_flops(res["params_non_embedding"], seqs, length, train=True)
    assert res["model_flops_per_step_jax"] == res["model_flops_per_step_torch"] == \
        pytest.approx(step_flops)

    # Train step rates are that work over the step time, for each framework timed.
    for name in ("jax", "torch_eager"):
        s = res[f"train_step_seconds_{name}"]
        assert s > 0 and res[f"{name}_status"] == "ok"
        assert res[f"train_step_seconds_by_sample_{name}"] == {"0": s}  # the one --seq-len batch
        assert res[f"train_seq_per_s_{name}"] == pytest.approx(seqs / s)
        assert res[f"train_tokens_per_s_{name}"] == pytest.approx(seqs * length / s)
        assert res[f"train_real_tokens_per_s_{name}"] == pytest.approx(seqs * length / s)
        assert res[f"train_flops_per_s_{name}"] == pytest.approx(step_flops / s)
        assert res[f"train_mfu_{name}"] is None  # no peak for a CPU
        assert res[f"compile_seconds_{name}"] >= 0
    assert res["compile_seconds_jax"] > 0 and res["num_compiles"] == 1  # one fixed shape
    ratio = res["train_step_seconds_jax"] / res["train_step_seconds_torch_eager"]
    assert res["train_step_ratio_vs_torch_eager"] == pytest.approx(ratio)
    assert res["train_speedup_vs_torch_eager"] == res["speedup"]["train_vs_torch_eager"] == \
        pytest.approx(1 / ratio)
    # torch.compile was switched off: reported, not timed.
    assert res["train_step_seconds_torch_compile"] is None
    assert res["torch_compile_status"] == "off (--no-torch-compile)"
    assert res["train_step_ratio_vs_torch_compile"] is None
    # Same weights and batch, dropout off: both frameworks compute the same (positive) loss.
    check = res["same_loss_check"]
    assert check["loss_jax"] > 0 and check["loss_torch"] > 0
    assert check["abs_diff"] == pytest.approx(abs(check["loss_jax"] - check["loss_torch"]))
    assert check["abs_diff"] < 1e-3 * max(1.0, abs(check["loss_jax"]))
    # --sizes 2 is the one batch size run: the sweep's row holds the step's timings.
    assert [row["batch_size"] for row in res["sweep"]] == [2]
    timed = [k for k in cli.SWEEP_KEYS if k.startswith("train_")
             or k in ("num_compiles", "compile_seconds_jax")]
    assert {k: res["sweep"][0][k] for k in timed} == {k: res.get(k) for k in timed}

    # Encoding: 64 sentences in batches of 16. PyTorch pads each file-order batch to its
    # longest sentence; JAX pads length-sorted batches to the bucket above their longest.
    lengths = sts_dev_lengths(data_dir, 64)
    n, bs, buckets = 64, 16, res["encode_buckets"]
    assert (res["encode_sentences"], res["encode_batch_size"]) == (n, bs)
    assert res["encode_real_tokens"] == sum(lengths)
    assert buckets == sorted(buckets) and buckets[-1] >= max(lengths)
    ordered = sorted(lengths)
    padded = {"torch": [max(lengths[i:i + bs]) for i in range(0, n, bs)],
              "jax": [min(b for b in buckets if b >= max(ordered[i:i + bs]))
                      for i in range(0, n, bs)]}
    padded["torch_sorted"] = padded["jax"]
    assert res["num_compiles_encode"] == len(set(padded["jax"]))
    for name in ("jax", "torch"):
        assert res[f"encode_padding_waste_{name}"] == pytest.approx(
            1 - sum(lengths) / (bs * sum(padded[name])))
    encoder_params = counts["encoder"]
    for name, lens in padded.items():
        s = res[f"encode_seconds_{name}"]
        assert s > 0
        assert res[f"encode_seq_per_s_{name}"] == pytest.approx(n / s)
        assert res[f"encode_tokens_per_s_{name}"] == pytest.approx(bs * sum(lens) / s)
        assert res[f"encode_real_tokens_per_s_{name}"] == pytest.approx(sum(lengths) / s)
        assert res[f"encode_flops_per_s_{name}"] == pytest.approx(
            sum(model_flops(encoder_params, bs, t, train=False) for t in lens) / s)
        assert res[f"encode_mfu_{name}"] is None
    for name, key in (("torch", "encode_vs_torch"),
                      ("torch_sorted", "encode_vs_torch_same_batches")):
        ratio = res["encode_seconds_" + name] / res["encode_seconds_jax"]
        assert res[f"encode_ratio_vs_{name}"] == res["speedup"][key] == pytest.approx(ratio)
    assert 0.999 < res["encode_min_cosine_jax_vs_torch"] <= 1 + 1e-6
    assert res["compile_seconds_jax_encode"] >= 0

    # The printed report shows the JSON's numbers.
    for name in ("jax", "torch_eager"):
        row = report_row(proc.stdout, f"{name:<18}")
        assert row[:6] == [f"{res[f'train_step_seconds_{name}'] * 1e3:.1f}", "ms",
                           f"{res[f'train_seq_per_s_{name}']:.1f}",
                           f"{res[f'train_tokens_per_s_{name}']:.0f}",
                           f"{res[f'train_flops_per_s_{name}'] / 1e9:.1f}", "n/a"], name
    for name, label in (("jax", "jax (sorted, buckets)"),
                        ("torch", "torch (file order, padding=True)"),
                        ("torch_sorted", "torch (jax's sorted batches)")):
        waste = res[f"encode_padding_waste_{'torch' if name == 'torch' else 'jax'}"]
        assert report_row(proc.stdout, label) == [
            f"{res[f'encode_seconds_{name}']:.3f}", f"{res[f'encode_seq_per_s_{name}']:.1f}",
            f"{res[f'encode_tokens_per_s_{name}']:.0f}", f"{waste:.1%}",
            f"{res[f'encode_flops_per_s_{name}'] / 1e9:.1f}", "n/a"], name
    sweep_rows = [line.split() for line in proc.stdout.splitlines()
                  if re.fullmatch(r"\s+2\s+[\d.]+\s+[\d.]+\s+n/a\s+[\d.]+", line)]
    row = res["sweep"][0]
    assert sweep_rows == [["2", f"{row['train_seq_per_s_jax']:.1f}",
                           f"{row['train_seq_per_s_torch_eager']:.1f}", "n/a",
                           f"{row['train_step_ratio_vs_torch_eager']:.3f}"]]
    for key in ("device", "device_kind", "versions", "date", "cpu_model"):
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
