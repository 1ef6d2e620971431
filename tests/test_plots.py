"""`bert_jax.plots`: every figure is written as a PNG and draws the values it claims, checked
against numpy and scipy."""
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


def assert_png_of(path: Path, fig) -> None:
    """The file at `path` is a PNG of `fig`: its pixels [h, w, 4] are those of `fig` drawn
    again here, at the resolution the PNG records, and it is not one flat colour."""
    import io
    from PIL import Image
    assert_png(path)
    with Image.open(path) as image:
        dpi = round(image.info["dpi"][0])
        pixels = np.asarray(image.convert("RGBA"))
    again = io.BytesIO()
    fig.savefig(again, format="png", dpi=dpi, bbox_inches="tight")
    np.testing.assert_array_equal(pixels, np.asarray(Image.open(again).convert("RGBA")))
    assert len(np.unique(pixels.reshape(-1, 4), axis=0)) > 10, path


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions save, in order (they are still written to disk)."""
    saved = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda f, out: saved.append(f) or save(f, out))
    return saved


def assert_draws_the_logs(fig, run_dir: Path) -> None:
    """Every loss line of `fig` is its train_log.jsonl column, every dev line its metrics.jsonl
    column (by epoch), the best-checkpoint marker sits at the last best evaluation, and the
    title is the run's name."""
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").open()]
    dev = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    assert log and dev
    ax_loss, ax_dev = fig.axes[:2]
    lines = {line.get_label(): line for line in ax_loss.get_lines()}
    for key, label, _ in plots._TASK_LOSSES:
        np.testing.assert_allclose(lines[label].get_xdata(), [r["step"] for r in log])
        np.testing.assert_allclose(lines[label].get_ydata(), [r[key] for r in log])
    lines = {line.get_label(): line for line in ax_dev.get_lines()}
    for key, label, _ in plots._DEV_METRICS:
        np.testing.assert_allclose(lines[label].get_xdata(), [r["epoch"] for r in dev])
        np.testing.assert_allclose(lines[label].get_ydata(), [r[key] for r in dev])
    best = [r for r in dev if r["best"]][-1]
    assert list(lines["best checkpoint"].get_xdata()) == [best["epoch"]] * 2
    assert fig._suptitle.get_text() == Path(run_dir).name


def test_run_plots(tiny_run, tmp_path, figures):
    """The PNG written is the figure of the run's own logs."""
    out = plots.training_curves(tiny_run, tmp_path / "curves.png")
    assert out == tmp_path / "curves.png" and len(figures) == 1
    assert_draws_the_logs(figures[0], tiny_run)
    assert_png_of(out, figures[0])
    run = shutil.copytree(tiny_run, tmp_path / "run")  # the session run is shared read-only
    paths = plots.write_run_plots(run)
    assert paths == [run / "plots" / "training_curves.png"] and len(figures) == 2
    assert_draws_the_logs(figures[1], run)
    assert_png_of(paths[0], figures[1])


def test_training_curves_of_a_partial_run(tmp_path):
    """An SST-only run (no para/sts losses), a cut-off last line and no metrics.jsonl yet."""
    lines = [json.dumps({"step": s, "loss": 1.0 / s, "loss_sst": 1.0 / s, "time": 0.0})
             for s in range(1, 6)]
    (tmp_path / "train_log.jsonl").write_text("\n".join(lines) + '\n{"step": 6, "lo')
    assert_png(plots.training_curves(tmp_path, tmp_path / "plots" / "c.png"))
    with pytest.raises(FileNotFoundError, match="train_log.jsonl"):
        plots.training_curves(tmp_path / "missing", tmp_path / "x.png")


def test_eval_plots(tmp_path, figures):
    """Each PNG written is the figure of its task's outputs against its gold labels."""
    rng = np.random.default_rng(0)
    n = 200
    gold = {"sst": rng.integers(0, 5, n), "para": rng.integers(0, 2, n),
            "sts": rng.uniform(0, 5, n).astype(np.float32)}
    outputs = {"sst": rng.normal(size=(n, 5)), "para": rng.normal(size=n),
               "sts": gold["sts"] + rng.normal(size=n)}
    paths = plots.write_eval_plots(tmp_path / "eval", outputs, gold)
    assert paths == [tmp_path / "eval" / name for name in ("sst_confusion.png",
                                                           "para_histograms.png",
                                                           "sts_scatter.png")]
    assert_eval_figures(dict(zip(("sst", "para", "sts"), figures)), outputs, gold)
    for path, fig in zip(paths, figures, strict=True):
        assert_png_of(path, fig)
    # tasks without gold labels (test splits) are skipped
    assert plots.write_eval_plots(tmp_path / "t", outputs, {"sst": gold["sst"]}) == [
        tmp_path / "t" / "sst_confusion.png"]
    assert len(figures) == 4
    assert_eval_figures({"sst": figures[3]}, outputs, {"sst": gold["sst"]})
    assert_png_of(tmp_path / "t" / "sst_confusion.png", figures[3])


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


def test_each_task_has_one_colour_in_every_plot(tiny_run, tmp_path, monkeypatch):
    """A task's loss, its dev metric and its prediction plot share TASK_COLORS[task]."""
    from matplotlib.colors import to_rgba
    label_task = {label: task for _, label, task in plots._TASK_LOSSES + plots._DEV_METRICS}
    fig = plots.training_curves_figure(tiny_run)
    seen = {}
    for ax in fig.axes[:2]:
        for line in ax.get_lines():
            if line.get_label() in label_task:
                task = label_task[line.get_label()]
                seen.setdefault(task, []).append(to_rgba(line.get_color()))
    assert set(seen) == {"sst", "para", "sts", "all"}
    for task, colours in seen.items():
        assert len(colours) == 2, task  # one line per panel: its loss and its dev metric
        assert set(colours) == {to_rgba(plots.TASK_COLORS[task])}, task
    assert len({to_rgba(c) for c in plots.TASK_COLORS.values()}) == len(plots.TASK_COLORS)

    figures = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda f, out: figures.append(f) or save(f, out))
    rng = np.random.default_rng(0)
    plots.write_eval_plots(tmp_path, {"sst": rng.normal(size=(20, 5)),
                                      "para": rng.normal(size=20), "sts": rng.uniform(0, 5, 20)},
                           {"sst": rng.integers(0, 5, 20), "para": rng.integers(0, 2, 20),
                            "sts": rng.uniform(0, 5, 20)})
    sst, para, sts = (f.axes[0] for f in figures)
    assert sst.images[0].get_cmap().name == plots._TASK_CMAPS["sst"] == "Blues"
    assert to_rgba(plots.TASK_COLORS["sst"])[2] > 0.5  # Blues for a blue task
    paraphrase_bars = [p for p in para.patches if p.get_label().startswith("paraphrase")]
    assert paraphrase_bars and all(p.get_facecolor()[:3] == to_rgba(plots.TASK_COLORS["para"])[:3]
                                   for p in paraphrase_bars)
    assert tuple(sts.collections[0].get_facecolor()[0][:3]) == to_rgba(
        plots.TASK_COLORS["sts"])[:3]


def test_eval_plots_draw_the_values_they_claim(tmp_path, figures):
    """Against numpy and scipy computed here: the confusion matrix's shares and counts, the
    paraphrase histograms' bar heights, the STS points and r, the accuracies in the titles."""
    rng = np.random.default_rng(3)
    n = 300
    gold = {"sst": rng.integers(0, 5, n), "para": rng.integers(0, 2, n),
            "sts": rng.uniform(0, 5, n)}
    outputs = {"sst": rng.normal(size=(n, 5)) + 2 * np.eye(5)[gold["sst"]],
               "para": rng.normal(size=n) + 2 * gold["para"] - 1,
               "sts": gold["sts"] + rng.normal(size=n)}
    plots.write_eval_plots(tmp_path, outputs, gold)
    assert_eval_figures(dict(zip(("sst", "para", "sts"), figures)), outputs, gold)


def assert_eval_figures(figs: dict, outputs: dict, gold: dict) -> None:
    """Each task's figure in `figs` draws `outputs[task]` against `gold[task]`, computed here with
    numpy and scipy: the confusion matrix's shares and counts, the paraphrase histograms' bar
    heights and counts, the STS points and r, the accuracies and sizes in the titles."""
    from scipy.special import expit
    from scipy.stats import pearsonr
    assert set(figs) <= set(gold)
    if "sst" in figs:
        sst, labels = figs["sst"].axes[0], gold["sst"]
        pred = outputs["sst"].argmax(-1)
        counts = np.array([[np.sum((labels == g) & (pred == p)) for p in range(5)]
                           for g in range(5)])
        np.testing.assert_allclose(sst.images[0].get_array(),
                                   counts / np.maximum(counts.sum(1, keepdims=True), 1))
        assert [t.get_text() for t in sst.texts] == [str(c) for c in counts.ravel()]
        assert f"accuracy {np.mean(pred == labels):.3f}, n={len(labels)}" in sst.get_title()
    if "para" in figs:
        para, labels = figs["para"].axes[0], gold["para"]
        prob = expit(outputs["para"])
        bins = np.linspace(0, 1, 26)
        assert len(para.containers) == 2  # gold 0, then gold 1
        for value, label, container in zip((0, 1), ("not paraphrase (gold 0)",
                                                    "paraphrase (gold 1)"), para.containers):
            want, _ = np.histogram(prob[labels == value], bins=bins)
            np.testing.assert_array_equal([b.get_height() for b in container], want)
            count = int((labels == value).sum())
            assert container.patches[0].get_label() == f"{label}: {count}"
        assert f"accuracy {np.mean((prob > 0.5) == (labels == 1)):.3f}" in para.get_title()
    if "sts" in figs:
        sts, labels = figs["sts"].axes[0], gold["sts"]
        np.testing.assert_allclose(sts.collections[0].get_offsets(),
                                   np.stack([labels, outputs["sts"]], 1))
        r = pearsonr(outputs["sts"], labels).statistic
        assert f"Pearson r {r:.3f}, n={len(labels)}" in sts.get_title()


def test_training_curves_draw_the_logged_values(tiny_run):
    """Every loss line is its train_log.jsonl column, every dev line its metrics.jsonl column
    (by epoch), and the best-checkpoint marker sits at the last best evaluation."""
    assert_draws_the_logs(plots.training_curves_figure(tiny_run), tiny_run)


def test_one_evaluation_is_a_marked_point_on_an_axis_from_zero_to_the_runs_end(tmp_path):
    """A 600-step run of 1,688 steps per epoch, evaluated once at its end (epoch 0.3555): the
    dev panel runs from epoch 0 to the run's end, not 0.340..0.375 around the point."""
    per_epoch, last = 1688, 600
    lines = [json.dumps({"step": s, "loss": 3.0 - s / 600, "time": 0.0})
             for s in range(50, last + 1, 50)]
    (tmp_path / "train_log.jsonl").write_text("\n".join(lines) + "\n")
    record = {"step": last, "epoch": round(last / per_epoch, 4), "sst_acc": 0.427,
              "para_acc": 0.806, "sts_r": 0.869, "overall": 0.722, "best": True}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    fig = plots.training_curves_figure(tmp_path)
    ax_dev = fig.axes[1]
    low, high = ax_dev.get_xlim()
    assert low == 0 and last / per_epoch <= high <= 1.1 * last / per_epoch
    lines = [ln for ln in ax_dev.get_lines() if ln.get_label() != "best checkpoint"]
    assert len(lines) == 4 and all(ln.get_marker() == "o" for ln in lines)
    assert all(list(ln.get_xdata()) == [record["epoch"]] for ln in lines)


# ------------------------------------------------------------------ a user's own tasks

def user_tasks():
    """A user's classification task with string classes (three, K logits), one with two (one
    logit) and a regression task on a 1..10 scale."""
    from bert_jax.tasks import Task
    mood = Task("mood", "classification", text=("review",), label="mood",
                classes=("sad", "meh", "happy"))
    polar = Task("polar", "pair-classification", text=("a", "b"), label="same",
                 classes=("different", "same"))
    stars = Task("stars", "regression", text=("review",), label="stars", range=(1.0, 10.0))
    return mood, polar, stars


def test_a_user_tasks_plots_are_a_confusion_matrix_with_its_classes_and_a_scatter(
        tmp_path, figures):
    """`<name>_confusion.png` per classification task (ticks: its class values, counts and
    shares against numpy, two classes from one logit's sign), `<name>_scatter.png` per regression
    task (its points, the diagonal and the gold axis over its range, r against scipy), each in
    its task's colour; beside the built-ins' three plots, in the order of the definitions."""
    from matplotlib.colors import to_rgba
    from scipy.stats import pearsonr
    from bert_jax.tasks import builtin_tasks
    mood, polar, stars = user_tasks()
    rng = np.random.default_rng(5)
    n = 120
    gold = {"sst": rng.integers(0, 5, n), "para": rng.integers(0, 2, n),
            "sts": rng.uniform(0, 5, n), "mood": rng.integers(0, 3, n),
            "polar": rng.integers(0, 2, n), "stars": rng.uniform(1, 10, n)}
    outputs = {"sst": rng.normal(size=(n, 5)), "para": rng.normal(size=n),
               "sts": rng.uniform(0, 5, n),
               "mood": rng.normal(size=(n, 3)) + np.eye(3)[gold["mood"]],
               "polar": rng.normal(size=n) + gold["polar"] - 0.5,
               "stars": gold["stars"] + rng.normal(size=n) * 3}
    tasks = builtin_tasks() + (mood, polar, stars)
    paths = plots.write_eval_plots(tmp_path, outputs, gold, tasks)
    assert [p.name for p in paths] == ["sst_confusion.png", "para_histograms.png",
                                       "sts_scatter.png", "mood_confusion.png",
                                       "polar_confusion.png", "stars_scatter.png"]
    assert [plots.plot_file(t) for t in tasks] == [p.name for p in paths]
    assert_eval_figures(dict(zip(("sst", "para", "sts"), figures)), outputs, gold)
    for path, fig in zip(paths, figures, strict=True):
        assert_png_of(path, fig)
    colours = plots.task_colors([t.name for t in tasks])
    assert len({to_rgba(colours[t.name]) for t in tasks}) == len(tasks)  # six tasks, six colours

    for task, fig, pred in ((mood, figures[3], outputs["mood"].argmax(-1)),
                            (polar, figures[4], (outputs["polar"] > 0).astype(int))):
        ax, labels, k = fig.axes[0], gold[task.name], len(task.classes)
        assert [t.get_text() for t in ax.get_xticklabels()] == list(task.classes)
        assert [t.get_text() for t in ax.get_yticklabels()] == list(task.classes)
        counts = np.array([[np.sum((labels == g) & (pred == p)) for p in range(k)]
                           for g in range(k)])
        np.testing.assert_allclose(ax.images[0].get_array(), counts / counts.sum(1, keepdims=True))
        assert [t.get_text() for t in ax.texts] == [str(c) for c in counts.ravel()]
        assert ax.get_title() == f"{task.name} (accuracy {np.mean(pred == labels):.3f}, n={n})"
        cmap = ax.images[0].get_cmap()
        assert cmap.name == plots._CMAPS[colours[task.name]] != "Blues"
    ax = figures[5].axes[0]
    np.testing.assert_allclose(ax.collections[0].get_offsets(),
                               np.stack([gold["stars"], outputs["stars"]], 1))
    assert tuple(ax.collections[0].get_facecolor()[0][:3]) == to_rgba(colours["stars"])[:3]
    diagonal = ax.get_lines()[0]
    assert list(diagonal.get_xdata()) == list(diagonal.get_ydata()) == [1.0, 10.0]
    low, high = ax.get_xlim()
    assert low < 1.0 and 10.0 < high < 10.5
    assert min(outputs["stars"]) > ax.get_ylim()[0] and max(outputs["stars"]) < ax.get_ylim()[1]
    assert ax.get_xlabel() == "gold stars" and ax.get_ylabel() == "predicted stars"
    r = pearsonr(outputs["stars"], gold["stars"]).statistic
    assert ax.get_title() == f"stars (Pearson r {r:.3f}, n={n})"


def test_eval_plots_refuse_outputs_of_a_task_they_have_no_definition_of(tmp_path):
    mood, _, _ = user_tasks()
    outputs, gold = {"mood": np.zeros((4, 3))}, {"mood": np.zeros(4, int)}
    with pytest.raises(ValueError, match="outputs of mood but no definition.*tasks="):
        plots.write_eval_plots(tmp_path, outputs, gold)
    assert not list(tmp_path.iterdir())
    assert plots.write_eval_plots(tmp_path, outputs, gold, [mood]) == [
        tmp_path / "mood_confusion.png"]
    with pytest.raises(ValueError, match="gold labels are not class indices 0..2"):
        plots.confusion([0, 1], [0, 3], tmp_path / "bad.png", mood.classes)


def test_training_curves_draw_every_task_of_the_logs(tmp_path, tiny_model_dir):
    """A run with its own tasks: each `loss_<task>` and each `<task>_acc` / `<task>_r` of the
    logs is a line (its loss named as the run's definition says), a task's two lines in one
    colour, the user's tasks in `EXTRA_COLORS` by the order of the definitions."""
    import shutil
    from matplotlib.colors import to_rgba
    mood, polar, stars = user_tasks()
    log = [{"step": s, "loss": 4.0 / s, "loss_sst": 1.0 / s, "loss_para": 0.5 / s,
            "loss_sts": 0.7 / s, "loss_stars": 2.0 / s, "loss_mood": 1.5 / s} for s in (1, 2, 3)]
    dev = [{"step": s, "epoch": s / 3, "sst_acc": 0.2 * s, "para_acc": 0.5, "sts_r": 0.1 * s,
            "mood_acc": 0.3 * s, "stars_r": -0.1 * s, "overall": 0.4, "best": s == 3}
           for s in (1, 2, 3)]
    (tmp_path / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dev))
    shutil.copy(tiny_model_dir / "config.json", tmp_path / "config.json")
    (tmp_path / "train_config.json").write_text(json.dumps(
        {"user_tasks": [t.to_dict() for t in (mood, polar, stars)]}))
    fig = plots.training_curves_figure(tmp_path)
    ax_loss, ax_dev = fig.axes[:2]
    losses = {line.get_label(): line for line in ax_loss.get_lines()}
    scores = {line.get_label(): line for line in ax_dev.get_lines()}
    for label, key, task, lines in (("mood (cross-entropy)", "loss_mood", "mood", losses),
                                    ("stars (MSE)", "loss_stars", "stars", losses),
                                    ("mood accuracy", "mood_acc", "mood", scores),
                                    ("stars Pearson r", "stars_r", "stars", scores)):
        records = log if lines is losses else dev
        x = [r["step"] for r in records] if lines is losses else [r["epoch"] for r in records]
        np.testing.assert_allclose(lines[label].get_xdata(), x)
        np.testing.assert_allclose(lines[label].get_ydata(), [r[key] for r in records])
        colour = plots.EXTRA_COLORS[(mood.name, polar.name, stars.name).index(task)]
        assert to_rgba(lines[label].get_color()) == to_rgba(colour), label
    assert "polar" not in " ".join(losses) + " ".join(scores)  # in no log: no line
    assert_draws_the_logs(fig, tmp_path)  # the built-ins' lines as ever
    (tmp_path / "train_config.json").unlink()  # no definitions: named by the logs alone
    labels = [line.get_label() for line in plots.training_curves_figure(tmp_path).axes[0].lines]
    assert labels[-2:] == ["stars", "mood"]
