"""The GPU device check (`make device-check`, BENCHMARKS.md "GPU (device check)"): the document
lists exactly the JSON's keys and targets (parsed from BENCHMARKS.md, so the two cannot drift);
the smoke run (CPU, tiny sizes) writes every key, with a value wherever a CPU can give one, and
values that hold (sizes recomputed here from the data file, the tokenizer and PyTorch's
BertModel, rates that agree with each other, dev scores with CS224N's overall, the targets'
verdicts); the targets are judged as promised; the pack holds float16 weights that load as the
embedded default's within float16 rounding, and the data the check unpacks."""
from __future__ import annotations

import csv
import importlib.metadata
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import require
from test_bench import model_flops, numbers, tiny_counts

from benchmarks import device_pack
from benchmarks.device_setup import choose_weights, unpack_data
from benchmarks.device_targets import GPU_ONLY, KEYS, OPS, TARGETS, judge
from bert_jax.embedded import embedded_model_dir
from bert_jax.pretrained import load_pretrained

ROOT = Path(__file__).resolve().parents[1]
# Null in a smoke run without a pack, besides the GPU-only figures.
NULL_WITHOUT_PACK = ("pack",)


def documented() -> tuple[list[str], list[str]]:
    """(JSON keys, target names) listed in BENCHMARKS.md's "GPU (device check)" section."""
    text = (ROOT / "BENCHMARKS.md").read_text()
    assert "\n## GPU (device check)\n" in text, "BENCHMARKS.md has no 'GPU (device check)' section"
    section = text.split("\n## GPU (device check)\n", 1)[1].split("\n## ", 1)[0]
    return (re.findall(r"^- `([a-z0-9_]+)`:", section, re.M),
            re.findall(r"^- target `([a-z0-9_]+)`:", section, re.M))


def test_benchmarks_md_lists_every_key_and_target_once():
    keys, targets = documented()
    assert len(keys) == len(set(keys)) and len(targets) == len(set(targets))
    assert set(keys) == set(KEYS), (f"undocumented: {sorted(set(KEYS) - set(keys))}; "
                                    f"documented but not written: {sorted(set(keys) - set(KEYS))}")
    assert set(targets) == set(TARGETS)


def test_targets_are_judged_as_promised():
    res = {key: None for key in KEYS}
    res.update(smoke=False, platform="gpu", device="NVIDIA H200", stages={},
               multitask_b8_speedup_vs_torch_eager=9.0,
               multitask_b8_speedup_vs_torch_compile=2.0, concat_10ep_wall_seconds=160.0,
               step_shapes_compiled=6, step_shapes_planned=6, bf16_vs_f32_min_cosine=0.9995)
    lines = judge(res)
    assert lines["multitask_b8_vs_torch_eager"]["pass"] is True
    assert lines["multitask_b8_vs_torch_compile"]["pass"] is False
    assert lines["concat_10ep_wall_seconds"]["pass"] is False  # 2.5 minutes on an H200
    assert lines["concat_10ep_wall_seconds"]["target"] == "< 150.0"
    assert lines["step_shapes"]["pass"] is True and lines["bf16_vs_f32"]["pass"] is True
    assert lines["bert_base_256x128_mfu"]["pass"] is None  # not measured: no verdict
    res["device"] = "NVIDIA H100 80GB HBM3"
    assert judge(res)["concat_10ep_wall_seconds"]["pass"] is True  # 3 minutes on an H100
    res.update(smoke=True, platform="cpu", device="cpu")
    lines = judge(res)
    assert lines["multitask_b8_vs_torch_eager"]["pass"] is None  # speed: not judged in smoke
    assert lines["bf16_vs_f32"]["pass"] is True  # correctness: judged everywhere
    assert lines["cudnn_vs_xla"]["note"] == "n/a on this platform"
    # A run stopped at its limit, past the target, fails it.
    res.update(smoke=False, platform="gpu", device="NVIDIA H200", concat_10ep_wall_seconds=None,
               stages={"e2e": {"status": "timeout", "seconds": 241.0}})
    assert judge(res)["concat_10ep_wall_seconds"]["pass"] is False


@pytest.fixture(scope="module")
def smoke_json(tmp_path_factory, data_dir) -> dict:
    """The smoke run's JSON: the one CI's `make device-check SMOKE=1` just wrote
    ($BERT_JAX_DEVICE_CHECK_JSON), else a fresh run."""
    if os.environ.get("BERT_JAX_DEVICE_CHECK_JSON"):
        return json.loads(Path(os.environ["BERT_JAX_DEVICE_CHECK_JSON"]).read_text())
    out = tmp_path_factory.mktemp("device-check")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.device_check", "--smoke",
                           "--pack", "none", "--data-dir", str(data_dir), "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    return json.loads((out / "device_check.json").read_text())


@pytest.mark.slow
def test_smoke_run_writes_every_documented_key(smoke_json):
    keys, targets = documented()
    assert smoke_json["smoke"] is True and smoke_json["platform"] == "cpu"
    assert set(smoke_json) == set(keys)
    failed = {n: s for n, s in smoke_json["stages"].items() if s["status"] != "ok"}
    assert not failed
    allowed_null = set(GPU_ONLY) | (set(NULL_WITHOUT_PACK) if not smoke_json["pack"] else set())
    empty = [k for k in keys if smoke_json[k] is None and k not in allowed_null]
    assert not empty, f"no value in the smoke run: {empty}"
    assert set(smoke_json["targets"]) == set(targets)
    for name in ("packed_vs_padded", "bf16_vs_f32", "bf16_concat_losses_fall", "step_shapes"):
        assert smoke_json["targets"][name]["pass"] is True, smoke_json["targets"][name]
    assert smoke_json["cudnn_vs_xla_status"].startswith("n/a")
    assert smoke_json["multitask_b8_torch_compile_status"] == "ok"
    assert smoke_json["concat_10ep_epochs"] == len(smoke_json["concat_10ep_dev"]) == 2
    assert set(smoke_json["versions"]) >= {"jax", "jaxlib", "flax", "optax", "torch",
                                           "transformers", "datasets"}


def sts_dev_pairs_lengths(data_dir: Path, n: int) -> list[int]:
    """Token counts of the correctness stage's sentences (the first n/2 STS dev pairs: every
    sentence1, then every sentence2), read with csv and tokenized with `tokenizers`."""
    tokenizers = require("tokenizers")
    with open(data_dir / "sts-dev.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))[:n // 2]
    texts = [r[c].lower().strip() for c in ("sentence1", "sentence2") for r in rows]
    tok = tokenizers.Tokenizer.from_file(str(embedded_model_dir() / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(128)
    return [len(e.ids) for e in tok.encode_batch(texts)]


def first_fit_decreasing(lengths: list[int], row_length: int) -> int:
    """Rows that first-fit decreasing packs `lengths` into."""
    rows: list[int] = []
    for n in sorted(lengths, reverse=True):
        for i, used in enumerate(rows):
            if used + n <= row_length:
                rows[i] += n
                break
        else:
            rows.append(n)
    return len(rows)


@pytest.mark.slow
def test_smoke_run_figures_hold(smoke_json, data_dir):
    res = smoke_json
    bad = [(k, v) for k, v in numbers(res) if not math.isfinite(v)]
    assert not bad, bad
    for name, version in res["versions"].items():  # this machine's, as it ran here
        if name != "python" and version is not None:
            assert version == importlib.metadata.version(name), name
    for name, stage in res["stages"].items():
        assert 0 < stage["seconds"] <= stage["limit_seconds"], (name, stage)
    # each figure is rounded to 0.1 s: the stages' sum may exceed the wall time by 0.05 a figure
    stage_sum = sum(s["seconds"] for s in res["stages"].values())
    assert res["wall_seconds"] >= stage_sum - 0.05 * (len(res["stages"]) + 1)
    assert res["wall_seconds"] <= res["budget_seconds"]

    # Correctness: 16 STS dev pairs, padded to the multiple of 64 above the longest, packed
    # first-fit decreasing into rows of 128; each difference within its stated tolerance, the
    # pooled one no larger than the largest token difference it averages.
    lengths = sts_dev_pairs_lengths(data_dir, 32)
    assert res["correctness_sentences"] == len(lengths) == 32
    assert res["correctness_padded_length"] == -(-max(lengths) // 64) * 64
    assert res["packed_rows"] == first_fit_decreasing(lengths, 128)
    pooled = res["packed_vs_padded_max_abs_diff"]
    hidden = res["packed_vs_padded_hidden_max_abs_diff"]
    assert 0 <= pooled <= hidden + 1e-7 and hidden <= 1e-4
    assert pooled <= TARGETS["packed_vs_padded"][2]
    assert TARGETS["bf16_vs_f32"][2] <= res["bf16_vs_f32_min_cosine"] <= 1 + 1e-6
    # Every target line shows the JSON's value, and its verdict is the comparison itself.
    for name, (key, op, threshold, in_smoke) in TARGETS.items():
        line = res["targets"][name]
        assert line["key"] == key and line["value"] == res[key], name
        if isinstance(threshold, str):
            threshold = res[threshold]
        if in_smoke and res[key] is not None:
            assert line["pass"] is bool(OPS[op](res[key], threshold)), name
        else:
            assert line["pass"] is None, name

    # The end-to-end run: 2 epochs of 2 steps, a loss logged at every step.
    losses = res["bf16_concat_losses"]
    assert res["bf16_concat_steps"] == len(losses) == 4 and all(x > 0 for x in losses)
    assert res["bf16_concat_losses_fall"] is (sum(losses[-2:]) / 2 < losses[0])
    dev = res["concat_10ep_dev"]
    assert [(d["epoch"], d["step"]) for d in dev] == [(1, 2), (2, 4)]
    for d in dev:
        assert 0 <= d["sst_acc"] <= 1 and 0 <= d["para_acc"] <= 1 and -1 <= d["sts_r"] <= 1
        assert d["overall"] == pytest.approx((d["sst_acc"] + d["para_acc"]
                                              + (d["sts_r"] + 1) / 2) / 3)  # CS224N's
        assert 0 < d["seconds_since_start"] <= res["concat_10ep_wall_seconds"]
    assert dev[0]["seconds_since_start"] < dev[1]["seconds_since_start"]
    assert res["concat_10ep_final_dev"] == {k: dev[-1][k] for k in res["concat_10ep_final_dev"]}
    assert res["concat_10ep_wall_seconds"] == res["stages"]["e2e"]["seconds"]
    assert 0 < res["concat_10ep_train_seconds"] <= res["concat_10ep_wall_seconds"]
    assert 0 <= res["concat_10ep_input_wait_fraction"] <= 1
    assert res["step_shapes_compiled"] == res["concat_10ep_step_compiles"]
    assert 1 <= res["step_shapes_compiled"] <= res["step_shapes_planned"]

    # Speed: the tiny shape, 2 examples per task (10 sentences) x 16 tokens, so sentences/s x
    # step seconds = 10 and TFLOP/s x seconds = the documented model FLOPs of the step.
    counts = tiny_counts()
    seconds = res["bert_base_256x128_step_seconds_jax"]
    assert res["bert_base_256x128_seq_per_s_jax"] * seconds == pytest.approx(10)
    assert res["bert_base_256x128_tflops_jax"] * 1e12 * seconds == pytest.approx(
        model_flops(counts["encoder"] + counts["heads"], 10, 16, train=True))
    assert res["bert_base_256x128_compile_seconds_jax"] > 0
    for prefix in ("multitask_b8", "bert_base_32x128"):
        jax_rate = res[f"{prefix}_seq_per_s_jax"]
        for other in ("torch_eager", "torch_compile"):  # same sentences per step in both
            assert res[f"{prefix}_speedup_vs_{other}"] == pytest.approx(
                jax_rate / res[f"{prefix}_seq_per_s_{other}"]), (prefix, other)
        assert res[f"{prefix}_num_compiles_jax"] == 1  # one sampled step, one fixed shape
        assert res[f"{prefix}_compile_seconds_jax"] > 0
        assert res[f"{prefix}_compile_seconds_torch_compile"] >= 0
        assert res[f"{prefix}_torch_compile_status"] == "ok"
    # bfloat16 on both sides (8 significant bits) of a summed loss of about 5.
    assert 0 <= res["multitask_b8_same_loss_abs_diff"] < 0.02
    assert res["encode_sentences"] == 32
    assert res["encode_speedup_vs_torch"] == pytest.approx(
        res["encode_seq_per_s_jax"] / res["encode_seq_per_s_torch"])
    assert 0.99 < res["encode_min_cosine_jax_vs_torch"] <= 1 + 1e-6  # bfloat16


@pytest.mark.slow
def test_the_pack_carries_float16_weights_and_the_data(tmp_path, data_dir, default_model):
    pack = tmp_path / "device-pack"
    manifest = device_pack.build(pack, data_dir, wheels=False)
    assert manifest["total_mib"] < device_pack.MAX_MIB
    assert manifest["run"]["carry"] == ["device-pack"] and manifest["run"]["timeout_s"] <= 600
    assert set(manifest["files"]) >= {"data.tar.xz", "model/model.safetensors", "model/vocab.txt"}
    assert (pack / "RUN.md").read_text().count(device_pack.RUN_COMMAND) == 1

    weights, kind = choose_weights(pack)
    assert (weights, kind) == (str(pack / "model"), "float16 copy")
    _, half = load_pretrained(weights)
    _, exact = default_model
    word = "word_embeddings"
    a = np.asarray(half["embeddings"][word]["embedding"])
    b = np.asarray(exact["embeddings"][word]["embedding"])
    assert a.dtype == np.float32  # upcast at load
    assert np.abs(a - b).max() <= 1e-3 and np.abs(a - b).max() > 0  # float16 rounding, no more

    folder, where = unpack_data(pack, None, tmp_path)
    assert where.endswith("data.tar.xz (xz)")
    for name in device_pack.DATA_FILES:
        assert (Path(folder) / name).read_bytes() == (data_dir / name).read_bytes()
