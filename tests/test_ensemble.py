"""train.ensemble: the ensemble's averaged probabilities and the weight soup, against numpy and
scipy written out independently, for the built-in tasks and a user's; members that define other
tasks refused; `train.evaluate RUN1 RUN2` end to end on two tiny runs."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import replace_best
from scipy.special import expit, logit, softmax

from bert_jax.tasks import Task
from train import ensemble, evaluate


def test_sst_ensemble_is_the_log_of_the_mean_probabilities():
    rng = np.random.default_rng(0)
    logits = [rng.normal(0, 3, (50, 5)) for _ in range(3)]
    got = ensemble.combine_outputs("sst", logits)
    want = np.mean([softmax(x, -1) for x in logits], 0)
    np.testing.assert_allclose(softmax(got.astype(np.float64), -1), want, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))


def test_ensemble_can_disagree_with_averaged_logits():
    """Averaging probabilities is not averaging logits: one confident model outvotes two
    lukewarm ones in probability space only where it should."""
    a = np.array([[10.0, 0, 0, 0, 0]])
    b = c = np.array([[0.0, 0.5, 0, 0, 0]])
    probs = ensemble.combine_outputs("sst", [a, b, c])
    assert probs.argmax(-1)[0] == 0
    np.testing.assert_allclose(softmax(probs.astype(np.float64), -1),
                               np.mean([softmax(x, -1) for x in (a, b, c)], 0), rtol=1e-5)


def test_para_ensemble_is_the_logit_of_the_mean_probability_even_when_saturated():
    logits = [np.array([-3.0, 0.1, 40.0, -800.0, 2.0]), np.array([1.0, -0.3, 35.0, -700.0, -2.0])]
    got = ensemble.combine_outputs("para", logits).astype(np.float64)
    mean = np.mean([expit(x) for x in logits], 0)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got[:2], logit(mean[:2]), rtol=1e-5)
    # mean p = 1 - (e^-40 + e^-35) / 2 is 1 in float64; its logit, exactly:
    assert got[2] == pytest.approx(35 + np.log(2) - np.log1p(np.exp(-5.0)), rel=1e-6)
    assert got[3] < -600  # both models sure it is not a paraphrase: stays sure
    assert got[4] == pytest.approx(0.0, abs=1e-6)  # 0.881 and 0.119 average to 0.5


def test_sts_ensemble_is_the_mean_score():
    scores = [np.array([0.5, 4.0, 2.0]), np.array([1.5, 3.0, 2.5])]
    np.testing.assert_allclose(ensemble.combine_outputs("sts", scores), [1.0, 3.5, 2.25])


NLI = Task("nli", "pair-classification", text=("premise", "hypothesis"), label="gold",
           classes=("neutral", "entailment", "contradiction"))
YES_NO = Task("dup", "pair-classification", text=("a", "b"), label="gold", classes=("no", "yes"))
STARS = Task("stars", "regression", text=("review",), label="stars", range=(1.0, 5.0))


def test_a_user_tasks_ensemble_averages_probabilities_or_scores():
    """Any task by its definition: K > 2 string classes as SST, two as the paraphrase task, a
    score as STS; against scipy's softmax and sigmoid written out independently."""
    rng = np.random.default_rng(1)
    logits = [rng.normal(0, 3, (40, 3)) for _ in range(3)]
    got = ensemble.combine_outputs(NLI, logits)
    assert got.shape == (40, 3)
    np.testing.assert_allclose(softmax(got.astype(np.float64), -1),
                               np.mean([softmax(x, -1) for x in logits], 0), rtol=1e-5,
                               atol=1e-7)
    two = [rng.normal(0, 3, 40) for _ in range(2)]
    np.testing.assert_allclose(ensemble.combine_outputs(YES_NO, two),
                               logit(np.mean([expit(x) for x in two], 0)), rtol=1e-4, atol=1e-5)
    scores = [rng.uniform(1, 5, 40) for _ in range(4)]
    np.testing.assert_allclose(ensemble.combine_outputs(STARS, scores), np.mean(scores, 0),
                               rtol=1e-6)


def test_members_must_define_the_same_tasks():
    """Heads may differ (concat against diff), tasks and their labels may not: one line naming
    the run and the tasks that differ."""
    from bert_jax.heads import HeadConfig
    base = HeadConfig(extra_tasks=(NLI, STARS)).tasks
    ensemble.check_same_tasks([base, HeadConfig(para_head="diff",
                                                 extra_tasks=(NLI, STARS)).tasks],
                              ["runs/a", "runs/b"])
    others = [HeadConfig(extra_tasks=(NLI,)).tasks,  # stars missing
              HeadConfig(extra_tasks=(NLI, STARS, YES_NO)).tasks,  # dup added
              HeadConfig(extra_tasks=(NLI.replace(classes=("entailment", "neutral",
                                                           "contradiction")), STARS)).tasks]
    for tasks, differ in zip(others, ("stars", "dup", "nli")):
        with pytest.raises(ensemble.CombineError) as info:
            ensemble.check_same_tasks([base, tasks], ["runs/a", "runs/b"])
        message = str(info.value)
        assert message.startswith("runs/b: its tasks differ from runs/a's (" + differ + ":")
        assert "\n" not in message


def test_soup_is_the_elementwise_mean_in_each_leafs_dtype():
    trees = [{"a": {"w": jnp.full((2, 3), float(i), jnp.float32)},
              "b": jnp.full((4,), i, jnp.bfloat16)} for i in (1, 2, 6)]
    soup = ensemble.uniform_soup(trees, ["r1", "r2", "r3"])
    np.testing.assert_allclose(np.asarray(soup["a"]["w"]), np.full((2, 3), 3.0))
    assert soup["b"].dtype == jnp.bfloat16 and float(soup["b"][0]) == 3.0


def test_soup_refuses_trees_of_another_shape_naming_the_run():
    a = {"w": jnp.zeros((2, 3))}
    with pytest.raises(ensemble.CombineError, match="runs/b: its parameters differ"):
        ensemble.uniform_soup([a, {"w": jnp.zeros((3, 3))}], ["runs/a", "runs/b"])
    with pytest.raises(ensemble.CombineError, match="runs/b"):
        ensemble.uniform_soup([a, {"v": jnp.zeros((2, 3))}], ["runs/a", "runs/b"])


@pytest.fixture(scope="module")
def two_runs(tiny_run, tmp_path_factory):
    """The shared tiny run and a copy whose best/ weights are perturbed (another 'seed')."""
    import shutil
    from bert_jax.checkpoints import load_run
    other = tmp_path_factory.mktemp("ensemble") / "run2"
    shutil.copytree(tiny_run, other)
    run = load_run(other)
    keys = iter(jax.random.split(jax.random.PRNGKey(7), len(jax.tree.leaves(run.params))))
    noisy = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(next(keys), x.shape, x.dtype),
                         run.params)
    replace_best(other, noisy, run.meta)
    return tiny_run, other


def _outputs(folder):
    with np.load(folder / evaluate.DEV_OUTPUTS_FILE) as f:
        return {k: f[k] for k in f.files}


@pytest.mark.slow
def test_evaluate_two_runs_ensemble_and_soup(two_runs, data_dir, tmp_path, capsys):
    """The ensemble's dev outputs are combine_outputs of each run's own; the soup's are the
    outputs of one run holding the averaged weights; scores.json names both runs."""
    a, b = two_runs
    common = ["--data-dir", str(data_dir), "--limit", "24", "--no-progress"]
    singles = []
    for run in (a, b):
        assert evaluate.main([str(run), "--out", str(tmp_path / run.name)] + common) == 0
        singles.append(_outputs(tmp_path / run.name))
    assert not np.allclose(singles[0]["sst"], singles[1]["sst"])  # the runs differ
    assert evaluate.main([str(a), str(b), "--out", str(tmp_path / "ens")] + common) == 0
    printed = capsys.readouterr().out
    assert "dev scores (ensemble of 2 runs, best checkpoints)" in printed
    ens = _outputs(tmp_path / "ens")
    for task in ("sst", "para", "sts"):
        np.testing.assert_array_equal(ens[f"{task}_ids"], singles[0][f"{task}_ids"])
        np.testing.assert_allclose(ens[task], ensemble.combine_outputs(
            task, [s[task] for s in singles]), rtol=1e-5, atol=1e-5)
    scores = json.loads((tmp_path / "ens" / "scores.json").read_text())
    assert scores["combine"] == "ensemble" and [r["run"] for r in scores["runs"]] == [str(a),
                                                                                      str(b)]
    sst = [line.split(" , ")[1].strip() for line in
           (tmp_path / "ens" / "sst-dev-output.csv").read_text().splitlines()[1:]]
    assert sst == [str(int(k)) for k in ens["sst"].argmax(-1)]

    assert evaluate.main([str(a), str(b), "--out", str(tmp_path / "soup"), "--combine",
                          "soup"] + common) == 0
    soup = _outputs(tmp_path / "soup")
    from bert_jax.checkpoints import load_run
    from bert_jax.data import load_task
    from bert_jax.evaluation import Evaluator
    from bert_jax.heads import MultitaskBert
    from bert_jax.tokenizer import Tokenizer
    from train.sharding import make_mesh
    ra, rb = load_run(a), load_run(b)
    averaged = jax.tree.map(lambda x, y: (x + y) / 2, ra.params, rb.params)
    model = MultitaskBert(ra.bert_config, ra.heads)
    ev = Evaluator(model, make_mesh(), 64)
    sts = load_task(data_dir / "sts-dev.csv", "sts", "dev", Tokenizer(ra.vocab_file),
                    max_length=32, limit=24, skip_bad_rows=True)
    np.testing.assert_allclose(soup["sts"], ev.outputs(averaged, sts, "sts"), rtol=1e-4,
                               atol=1e-5)
    assert json.loads((tmp_path / "soup" / "scores.json").read_text())["combine"] == "soup"


def test_several_runs_need_out(tiny_run, capsys):
    with pytest.raises(SystemExit) as info:
        evaluate.main([str(tiny_run), str(tiny_run)])
    assert info.value.code == 2 and "--out DIR" in capsys.readouterr().err


def test_soup_of_different_configurations_is_one_error_line(tiny_run, tmp_path, data_dir,
                                                           capsys):
    import shutil
    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    cfg = json.loads((other / "train_config.json").read_text())
    cfg["max_length"] = 64
    (other / "train_config.json").write_text(json.dumps(cfg))
    code = evaluate.main([str(tiny_run), str(other), "--combine", "soup", "--out",
                          str(tmp_path / "out"), "--data-dir", str(data_dir), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {other}: its model config") and "\n" == err[-1]
