"""The GPU device check (`make device-check`, BENCHMARKS.md "GPU (device check)"): the document
lists exactly the JSON's keys and targets (parsed from BENCHMARKS.md, so the two cannot drift);
the smoke run (CPU, tiny sizes) writes every key, with a value wherever a CPU can give one; the
targets are judged as promised; the pack holds float16 weights that load as the embedded
default's within float16 rounding, and the data the check unpacks."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bert_jax.bench import device_pack
from bert_jax.bench.device_setup import choose_weights, unpack_data
from bert_jax.bench.device_targets import GPU_ONLY, KEYS, TARGETS, judge
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
    proc = subprocess.run([sys.executable, "-m", "bert_jax.bench.device_check", "--smoke",
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
