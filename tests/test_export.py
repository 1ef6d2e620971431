"""`python -m bert_jax.export`: transformers and sentence-transformers load what it writes and give
this project's embeddings (the embedded default and a trained run); tokenizer ids; the round trip
through bert_jax.converted; heads read back by MultitaskModel.load (every task's: a user's own
and cross-encoded ones too, as PyTorch computes them; an export from before tasks were data);
BERT's pooler as a Dense module; overwrite refusals and user errors."""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import require
from flax import traverse_util
from safetensors.numpy import load_file
from user_tasks import MOOD, PAIRS, RELATED, SPAM, TEXTS, export_user_model

torch = require("torch")
transformers = require("transformers")
SentenceTransformer = require("sentence_transformers").SentenceTransformer

from bert_jax import convert, converted, export  # noqa: E402
from bert_jax.api import MultitaskModel  # noqa: E402
from bert_jax.checkpoint_files import read_config  # noqa: E402
from bert_jax.errors import ExportError  # noqa: E402
from bert_jax.export import main  # noqa: E402
from bert_jax.tasks import Task  # noqa: E402
from bert_jax.tokenizer import Tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = ["A gorgeous, witty, seductive movie.", "bad", "  MIXED Case, naïve café  ",
             "中文 and émigré text", "The plot is nothing but boilerplate clichés, " * 30]


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *fragments: str):
    lines = [ln for ln in err.splitlines() if not ln.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], err


def hf_outputs(folder: Path, texts, max_length: int):
    """(mean-pooled last_hidden_state, pooler_output) of AutoModel/AutoTokenizer(folder)."""
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder).eval()
    batch = tok([t.lower().strip() for t in texts], padding=True, truncation=True,
                max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
    mask = batch["attention_mask"][..., None].float()
    mean = (out.last_hidden_state * mask).sum(1) / mask.sum(1)
    return mean.numpy(), out.pooler_output.numpy()


def flat(tree):
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def assert_same_tree(a, b):
    fa, fb = flat(a), flat(b)
    assert sorted(fa) == sorted(fb)
    for key in fa:
        np.testing.assert_array_equal(fa[key], fb[key], err_msg=key)


# ------------------------------------------------------------------ the embedded default

@pytest.fixture(scope="module")
def minilm():
    return MultitaskModel.from_pretrained("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def default_export(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "minilm"
    assert main(["all-MiniLM-L6-v2", str(out), "--format", "sentence-transformers"]) == 0
    return out


def test_default_export_gives_the_models_embeddings(default_export, minilm):
    want = minilm.embed(SENTENCES)  # max_length 128: the last sentence is truncated
    mean, _ = hf_outputs(default_export, SENTENCES, 128)
    np.testing.assert_allclose(mean, want, atol=1e-5, rtol=0)
    st = SentenceTransformer(str(default_export), device="cpu")
    assert [type(m).__name__ for m in st] == ["Transformer", "Pooling"]  # no Normalize
    assert st.max_seq_length == 128
    np.testing.assert_allclose(st.encode(SENTENCES), want, atol=1e-5, rtol=0)


def test_config_is_a_standard_bert_config(default_export, minilm):
    values = json.loads((default_export / "config.json").read_text())
    assert not {"dtype", "param_dtype", "attention_impl"} & set(values)
    assert values["architectures"] == ["BertModel"]
    hf = transformers.BertConfig.from_pretrained(default_export)
    for name in export.HF_CONFIG_FIELDS:
        assert getattr(hf, name) == getattr(minilm.config, name), name
    assert read_config(default_export / "config.json") == minilm.config
    info = json.loads((default_export / "export.json").read_text())
    assert info["source_kind"] == "default" and info["format"] == "sentence-transformers"
    assert not (default_export / "heads.safetensors").exists()  # no trained heads
    with pytest.raises(ExportError, match="from_pretrained"):
        MultitaskModel.load(default_export)


def test_auto_tokenizer_gives_the_project_ids(default_export):
    ours = Tokenizer(default_export / "vocab.txt")
    hf = transformers.AutoTokenizer.from_pretrained(default_export)
    assert hf.model_max_length == 512 and hf.do_lower_case
    texts = SENTENCES + ["ÀCCENTED Ünïcödé", "tabs\tand\nnewlines", "don't stop-believing 3.14",
                         "supercalifragilisticexpialidocious" * 4, "emoji 🙂 and ¿what?"]
    pairs = texts[::-1]
    for second in (None, pairs):
        want = ours(texts, second, max_length=64, padding="longest")
        got = hf(texts, second, max_length=64, padding="longest", truncation=True,
                 return_tensors="np")
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_default_export_converts_back_to_the_same_parameters(default_export, default_model):
    config, params, report = converted.convert_checkpoint(default_export, verbose=False)
    assert config == default_model[0] and not report.skipped
    assert_same_tree(params, default_model[1])


# ------------------------------------------------------------------ a trained run

@pytest.fixture(scope="module")
def run_model(tiny_run) -> MultitaskModel:
    return MultitaskModel.load(tiny_run)


@pytest.fixture(scope="module")
def run_export(tiny_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "run"
    assert main([str(tiny_run), str(out), "--format", "sentence-transformers"]) == 0
    return out


def test_run_export_gives_the_models_embeddings(run_export, run_model):
    assert run_model.max_length == 32 and run_model.heads.pooling == "mean"
    want = run_model.embed(SENTENCES)
    mean, _ = hf_outputs(run_export, SENTENCES, 32)
    np.testing.assert_allclose(mean, want, atol=1e-5, rtol=0)
    st = SentenceTransformer(str(run_export), device="cpu")
    assert st.max_seq_length == 32  # the run's training max_length
    np.testing.assert_allclose(st.encode(SENTENCES), want, atol=1e-5, rtol=0)


def test_run_export_loads_back_with_identical_heads(run_export, run_model):
    heads = load_file(run_export / "heads.safetensors")
    hidden = run_model.config.hidden_size
    assert heads["sst_classifier.weight"].shape == (5, hidden)  # torch.nn.Linear layout
    assert heads["para_hidden.weight"].shape == (hidden, 2 * hidden)
    config = json.loads((run_export / "heads_config.json").read_text())
    assert config["para_head"] == "concat" and config["max_length"] == 32
    model = MultitaskModel.load(run_export)
    assert model.heads == run_model.heads and model.max_length == run_model.max_length
    assert model.config == run_model.config
    assert_same_tree(model.params, run_model.params)  # heads and encoder, bit for bit
    np.testing.assert_allclose(model.sentiment(SENTENCES)[1], run_model.sentiment(SENTENCES)[1],
                               atol=1e-6)
    a, b = SENTENCES[:2], SENTENCES[2:4]
    np.testing.assert_allclose(model.paraphrase(a, b), run_model.paraphrase(a, b), atol=1e-6)
    np.testing.assert_allclose(model.similarity(a, b), run_model.similarity(a, b), atol=1e-5)


def test_an_export_from_before_tasks_were_data_still_loads(run_export, run_model, tmp_path):
    """heads_config.json as exports wrote it before: the HeadConfig's four fields, no
    extra_tasks nor tasks."""
    old = tmp_path / "old"
    shutil.copytree(run_export, old)
    values = json.loads((old / "heads_config.json").read_text())
    assert values["extra_tasks"] == [] and values["tasks"] == ["sst", "para", "sts"]
    for key in ("extra_tasks", "tasks"):
        del values[key]
    (old / "heads_config.json").write_text(json.dumps(values))
    model = MultitaskModel.load(old)
    assert model.heads == run_model.heads and model.heads.extra_tasks == ()
    np.testing.assert_allclose(model.sentiment(SENTENCES)[1], run_model.sentiment(SENTENCES)[1],
                               atol=1e-6)


def test_a_damaged_task_definition_is_one_line(run_export, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(run_export, bad)
    values = json.loads((bad / "heads_config.json").read_text())
    values["extra_tasks"] = [{"name": "nli", "kind": "entailment", "text": ["a", "b"],
                              "label": "y", "classes": ["no", "yes"]}]
    (bad / "heads_config.json").write_text(json.dumps(values))
    with pytest.raises(ExportError, match=r"heads_config.json: task 'nli': kind: unknown kind "
                                          r"'entailment'.*export the run again"):
        MultitaskModel.load(bad)


def test_convert_cli_reads_an_export_back_exactly(run_export, run_model, tmp_path):
    assert convert.main([str(run_export), str(tmp_path / "converted")]) == 0
    config, params = converted.load_converted(tmp_path / "converted")
    assert config.shape_dict() == run_model.config.shape_dict()
    assert_same_tree(params, run_model.params["bert"])


def test_cls_pooling_exports_berts_pooler_as_a_dense_module(tiny_run, tmp_path):
    files = export.load_source(tiny_run)
    files.heads = dataclasses.replace(files.heads, pooling="cls")
    line = export.export_model(files, tmp_path / "cls", "sentence-transformers")
    assert "Dense(tanh)" in line
    model = MultitaskModel(files.bert_config, files.heads, files.params,
                           Tokenizer(files.vocab_file), max_length=32)
    want = model.embed(SENTENCES)  # BERT's pooler output: tanh(dense([CLS]))
    st = SentenceTransformer(str(tmp_path / "cls"), device="cpu")
    assert [type(m).__name__ for m in st] == ["Transformer", "Pooling", "Dense"]
    np.testing.assert_allclose(st.encode(SENTENCES), want, atol=1e-5, rtol=0)
    _, pooler = hf_outputs(tmp_path / "cls", SENTENCES, 32)
    np.testing.assert_allclose(pooler, want, atol=1e-5, rtol=0)
    assert MultitaskModel.load(tmp_path / "cls").heads.pooling == "cls"


def test_which_last_exports_the_last_checkpoint(tiny_run, tmp_path, capsys):
    assert run([tiny_run, tmp_path / "last", "--which", "last"], capsys)[0] == 0
    info = json.loads((tmp_path / "last" / "export.json").read_text())
    assert info["checkpoint"] == "last" and info["source_kind"] == "run"
    assert_same_tree(MultitaskModel.load(tmp_path / "last").params,
                     MultitaskModel.load(tiny_run, "last").params)


def test_encoder_without_pooler(tmp_path, capsys):
    import jax
    from bert_jax import BertModel, init_params, mean_pool
    from bert_jax.config import PRESETS
    from bert_jax.embedded import embedded_model_dir
    config = PRESETS["tiny"]
    params = init_params(config, jax.random.PRNGKey(1), add_pooling_layer=False)
    converted.save_converted(tmp_path / "src", params, config, embedded_model_dir() / "vocab.txt")
    code, _, err = run([tmp_path / "src", tmp_path / "out", "--format", "sentence-transformers"],
                       capsys)
    assert code == 0 and "warning: the model has no pooler" in err
    tok = Tokenizer(tmp_path / "out" / "vocab.txt")
    batch = tok(SENTENCES, max_length=128, padding="longest")  # max_seq_length 128
    hidden = BertModel(config, add_pooling_layer=False).apply(
        {"params": params}, batch["input_ids"], batch["attention_mask"],
        batch["token_type_ids"]).last_hidden_state
    want = np.asarray(mean_pool(hidden, batch["attention_mask"]))
    st = SentenceTransformer(str(tmp_path / "out"), device="cpu")
    np.testing.assert_allclose(st.encode(SENTENCES), want, atol=1e-5, rtol=0)


# ------------------------------------------------------------------ refusals and errors

def listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_overwrite_only_replaces_an_earlier_export(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, _ = run([tiny_model_dir, out], capsys)
    assert code == 0 and stdout.startswith(f"wrote {out.resolve()}: BertModel")
    assert stdout.count("\n") == 1 and not (out / "modules.json").exists()
    code, _, err = run([tiny_model_dir, out], capsys)
    assert code == 2
    assert_one_line_error(err, "not empty", "--overwrite")
    (out / "stale.txt").write_text("old")
    code, stdout, _ = run([tiny_model_dir, out, "--format", "sentence-transformers",
                           "--overwrite"], capsys)
    assert code == 0 and "sentence-transformers modules" in stdout
    assert (out / "modules.json").exists() and not (out / "stale.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    code, _, err = run([tiny_model_dir, mine, "--overwrite"], capsys)
    assert code == 2
    assert_one_line_error(err, "not an earlier export")
    assert listing(mine) == {"keep.txt": b"mine"}

    empty = tmp_path / "empty"
    empty.mkdir()
    assert run([tiny_model_dir, empty], capsys)[0] == 0 and (empty / "config.json").exists()
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, _, err = run([tiny_model_dir, afile, "--overwrite"], capsys)
    assert code == 2 and afile.read_text() == "x"
    assert_one_line_error(err, "not a folder")


def test_never_replaces_the_source_or_the_current_folder(tiny_model_dir, tmp_path, capsys,
                                                         monkeypatch):
    src = tmp_path / "models" / "src"
    shutil.copytree(tiny_model_dir, src)
    (src / "export.json").write_text("{}")  # even a source that looks like an export
    before, src_before = listing(tmp_path), listing(src)
    for out, reason in ((src, "is or holds the source"),
                        (tmp_path / "models", "is or holds the source"),
                        (src / "inside", "inside the source folder")):
        code, _, err = run([src, out, "--overwrite"], capsys)
        assert code == 2
        assert_one_line_error(err, reason)
    assert listing(tmp_path) == before

    out = tmp_path / "out"
    assert run([src, out, "--format", "sentence-transformers"], capsys)[0] == 0
    kept = listing(out)
    for cwd, target in ((out, "."), (out, out), (out / "1_Pooling", out), (out, "..")):
        monkeypatch.chdir(cwd)
        code, _, err = run([src, target, "--overwrite"], capsys)
        assert code == 2
        assert_one_line_error(err, "current folder")
    assert listing(out) == kept and listing(src) == src_before


def test_user_errors_are_one_line_and_exit_2(tiny_model_dir, tmp_path, capsys):
    code, _, err = run([tmp_path / "nope", tmp_path / "o"], capsys)
    assert code == 2
    assert_one_line_error(err, "no such file or folder", "all-MiniLM-L6-v2")
    (tmp_path / "not_a_model").mkdir()
    code, _, err = run([tmp_path / "not_a_model", tmp_path / "o"], capsys)
    assert code == 2
    assert_one_line_error(err, "not_a_model")
    code, _, err = run([tiny_model_dir, tmp_path / "o", "--format", "sentence-transformers",
                        "--max-length", "4096"], capsys)
    assert code == 2
    assert_one_line_error(err, "max_position_embeddings 128")
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as exc:
        main([str(tiny_model_dir), str(tmp_path / "o"), "--format", "onnx"])
    assert exc.value.code == 2


def test_help_has_one_sentence_per_flag():
    for action in export.build_parser()._actions:
        if action.dest != "help":
            assert action.help and action.help.endswith(".") and ". " not in action.help, action
    out = subprocess.run([sys.executable, "-m", "bert_jax.export", "--help"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0
    for flag in ("--format", "--which", "--max-length", "--overwrite", "sentence-transformers"):
        assert flag in out.stdout


def test_predict_uses_an_exports_trained_heads(run_export, run_model, capsys):
    from bert_jax import predict
    texts = SENTENCES[:3]
    src = run_export.parent / "predict-in.txt"
    src.write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n")
    code = predict.main([str(run_export), "--task", "sst", "--input", str(src)])
    out, err = capsys.readouterr()
    assert code == 0 and "untrained" not in err, err
    probs = np.array([[float(x) for x in line.split(",")[2:]] for line in out.splitlines()[1:]])
    np.testing.assert_allclose(probs, run_model.sentiment(texts)[1], atol=1e-5)


# ------------------------------------------------------------------ every task's head

@pytest.fixture(scope="module")
def user_export(user_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "user"
    line = export_user_model(user_model, out, "sentence-transformers")
    assert "task heads of sst, para, sts, mood, spam, related" in line
    return out


def task_inputs(task: Task):
    return (TEXTS,) if not task.is_pair else PAIRS


def test_every_tasks_head_is_exported_and_loads_back(user_export, user_model):
    heads = load_file(user_export / "heads.safetensors")
    hidden = user_model.config.hidden_size
    assert {k: v.shape for k, v in heads.items() if k.endswith(".weight")} == {
        "sst_classifier.weight": (5, hidden), "para_classifier.weight": (1, hidden),
        "mood_classifier.weight": (3, hidden), "spam_classifier.weight": (1, hidden),
        "related_regressor.weight": (1, hidden)}  # cross para: no para_hidden; cosine sts: none
    config = json.loads((user_export / "heads_config.json").read_text())
    assert [Task.from_dict(t) for t in config["extra_tasks"]] == [MOOD, SPAM, RELATED]
    assert config["tasks"] == ["sst", "para", "sts", "mood", "spam", "related"]
    formulas = config["formulas"]
    assert formulas["mood"] == ("mood_classifier(u): 3 logits, one per class in order (sad, meh, "
                                "happy)")
    assert formulas["spam"] == "spam_classifier(u): 1 logit (sigmoid > 0.5: spam, else ham)"
    assert formulas["related"] == "related_regressor(w): score on the 1..5 scale"
    assert formulas["para"].startswith("para_classifier(w): 1 logit")
    assert formulas["sts"] == "5 * cos(u, v): similarity on the 0..5 scale"
    assert "[CLS] a [SEP] b [SEP]" in formulas["w"]
    model = MultitaskModel.load(user_export)
    assert model.heads == user_model.heads and model.max_length == user_model.max_length
    assert_same_tree(model.params, jax.device_get(user_model.params))
    for task in user_model.tasks:
        got, want = model.predict(task.name, *task_inputs(task)), user_model.predict(
            task.name, *task_inputs(task))
        for g, w in zip(*((got, want) if task.is_classification else ((got,), (want,)))):
            if w.dtype.kind == "f":
                np.testing.assert_allclose(g, w, atol=1e-6, err_msg=task.name)
            else:
                np.testing.assert_array_equal(g, w, err_msg=task.name)


def test_exported_user_heads_compute_as_in_pytorch(user_export, user_model):
    """transformers and sentence-transformers load the export; its heads, as torch.nn.Linear
    layers on the mean-pooled BertModel outputs of AutoTokenizer's ids (a cross-encoded pair:
    `tok(a, b)`), give the model's outputs."""
    st = SentenceTransformer(str(user_export), device="cpu")
    np.testing.assert_allclose(st.encode(TEXTS), user_model.embed(TEXTS), atol=1e-5, rtol=0)
    tok = transformers.AutoTokenizer.from_pretrained(user_export)
    bert = transformers.AutoModel.from_pretrained(user_export).eval()
    state = {k: torch.from_numpy(v) for k, v in load_file(user_export / "heads.safetensors").items()}

    def head(name: str, *texts):
        batch = tok(*texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
        linear = torch.nn.Linear(*state[f"{name}.weight"].shape[::-1])
        linear.load_state_dict({"weight": state[f"{name}.weight"], "bias": state[f"{name}.bias"]})
        with torch.no_grad():
            hidden = bert(**batch).last_hidden_state
            mask = batch["attention_mask"][..., None].float()
            return linear((hidden * mask).sum(1) / mask.sum(1)).numpy()

    np.testing.assert_allclose(head("mood_classifier", TEXTS),
                               user_model.raw_outputs("mood", TEXTS), atol=1e-4)
    np.testing.assert_allclose(head("related_regressor", *PAIRS)[:, 0],
                               user_model.predict("related", *PAIRS), atol=1e-4)
