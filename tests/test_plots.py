"""`bert_jax.plots`: every figure is written as a non-empty PNG."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bert_jax import plots

PNG = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    path = Path(path)
    assert path.is_file() and path.stat().st_size > 1000, path
    assert path.read_bytes()[:8] == PNG


def test_run_plots(tiny_run, tmp_path):
    assert_png(plots.training_curves(tiny_run, tmp_path / "curves.png"))
    run = shutil.copytree(tiny_run, tmp_path / "run")  # the session run is shared read-only
    paths = plots.write_run_plots(run)
    assert paths == [run / "plots" / "training_curves.png"]
    assert_png(paths[0])


def test_training_curves_of_a_partial_run(tmp_path):
    """An SST-only run (no para/sts losses), a cut-off last line and no metrics.jsonl yet."""
    lines = [json.dumps({"step": s, "loss": 1.0 / s, "loss_sst": 1.0 / s, "time": 0.0})
             for s in range(1, 6)]
    (tmp_path / "train_log.jsonl").write_text("\n".join(lines) + '\n{"step": 6, "lo')
    assert_png(plots.training_curves(tmp_path, tmp_path / "plots" / "c.png"))
    with pytest.raises(FileNotFoundError, match="train_log.jsonl"):
        plots.training_curves(tmp_path / "missing", tmp_path / "x.png")


def test_eval_plots(tmp_path):
    rng = np.random.default_rng(0)
    n = 200
    gold = {"sst": rng.integers(0, 5, n), "para": rng.integers(0, 2, n),
            "sts": rng.uniform(0, 5, n).astype(np.float32)}
    outputs = {"sst": rng.normal(size=(n, 5)), "para": rng.normal(size=n),
               "sts": gold["sts"] + rng.normal(size=n)}
    paths = plots.write_eval_plots(tmp_path / "eval", outputs, gold)
    assert [p.name for p in paths] == ["sst_confusion.png", "para_histograms.png",
                                       "sts_scatter.png"]
    for p in paths:
        assert_png(p)
    # tasks without gold labels (test splits) are skipped
    assert plots.write_eval_plots(tmp_path / "t", outputs, {"sst": gold["sst"]}) == [
        tmp_path / "t" / "sst_confusion.png"]


def test_single_plots_and_shape_errors(tmp_path):
    assert_png(plots.sst_confusion([0, 1, 2, 3, 4], [0, 1, 2, 4, 4], tmp_path / "c.png"))
    assert_png(plots.sts_scatter([1.0, 2.0, 4.5], [1.5, 2.0, 5.0], tmp_path / "s.png"))
    assert_png(plots.para_histograms([0.1, 0.9, 0.6], [0, 1, 0], tmp_path / "p.png"))
    with pytest.raises(ValueError, match="3 predictions for 2 gold"):
        plots.sts_scatter([1, 2, 3], [1, 2], tmp_path / "bad.png")


def test_plots_leave_the_matplotlib_backend_alone(tmp_path):
    import matplotlib
    before = matplotlib.get_backend()
    plots.sst_confusion([0], [0], tmp_path / "c.png")
    assert matplotlib.get_backend() == before
