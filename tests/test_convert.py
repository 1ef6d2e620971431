"""Checkpoint conversion (bert_jax/checkpoint_files.py, converted.py and the convert.py CLI): error
cases, minBERT checkpoints, overwriting, and the loaders importing no command line."""
from __future__ import annotations

import argparse
import ast
import json
import os
import random
import re
import subprocess
import sys
import types
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import require

torch = require("torch")
transformers = require("transformers")

from bert_jax import BertConfig, BertModel, Tokenizer, load_pretrained  # noqa: E402
from bert_jax import convert, converted, embedded  # noqa: E402
from bert_jax.checkpoint_files import convert_state_dict  # noqa: E402
from bert_jax.converted import convert_checkpoint  # noqa: E402
from bert_jax.errors import ConversionError  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
VOCAB = embedded.embedded_model_dir() / "vocab.txt"
TINY = dict(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=128, max_position_embeddings=64)
HEAD = ("sentiment_linear.weight", "sentiment_linear.bias")


@pytest.fixture(scope="module")
def tiny_torch():
    torch.manual_seed(0)
    return transformers.BertModel(transformers.BertConfig(**TINY)).eval()


@pytest.fixture(scope="module")
def tiny_config():
    return BertConfig(**TINY)


@pytest.fixture
def tiny_state(tiny_torch):
    """The tiny model's HuggingFace state dict as numpy (fresh copy per test)."""
    return {k: v.numpy().copy() for k, v in tiny_torch.state_dict().items()}


@pytest.fixture(scope="module")
def batch():
    """Sentence pairs, padded: int32 [3, T]."""
    tok = Tokenizer(VOCAB)
    return tok(["a first sentence.", "hi", "the third one is the longest of them all"],
               ["and its partner", "there", "short"], max_length=16, padding="longest")


def assert_matches_torch(model, config, params, batch, pooler=True):
    inputs = {k: torch.from_numpy(batch[k].astype(np.int64)) for k in batch}
    with torch.no_grad():
        want = model(**inputs)
    got = BertModel(config, add_pooling_layer=pooler).apply({"params": params}, **batch)
    keep = batch["attention_mask"].astype(bool)
    assert np.abs(np.asarray(got.last_hidden_state)[keep]
                  - want.last_hidden_state.numpy()[keep]).max() < 1e-4
    if pooler:
        assert np.abs(np.asarray(got.pooler_output) - want.pooler_output.numpy()).max() < 1e-4


def write_hf_folder(model, folder: Path) -> Path:
    model.save_pretrained(folder)
    (folder / "vocab.txt").write_bytes(VOCAB.read_bytes())
    return folder


# ---------------------------------------------------------------- HuggingFace state dicts

def test_prefixed_bin_with_head_and_buffer(tmp_path, tiny_torch, batch):
    write_hf_folder(tiny_torch, tmp_path)
    state = {f"bert.{k}": v for k, v in tiny_torch.state_dict().items()}
    state["bert.embeddings.position_ids"] = torch.arange(64)[None]
    state["classifier.weight"], state["classifier.bias"] = torch.zeros(5, 64), torch.zeros(5)
    torch.save(state, tmp_path / "classifier.bin")
    with pytest.warns(UserWarning, match="classifier.weight"):
        config, params, report = convert_checkpoint(tmp_path / "classifier.bin", verbose=False)
    assert (report.source_format, report.prefix) == ("huggingface", "bert.")
    assert report.skipped == ["classifier.weight", "classifier.bias"]
    assert report.ignored == ["bert.embeddings.position_ids"]
    assert len(report.converted) == len(tiny_torch.state_dict())
    assert_matches_torch(tiny_torch, config, params, batch)


def test_missing_key(tiny_state, tiny_config):
    del tiny_state["encoder.layer.1.output.dense.bias"]
    with pytest.raises(ConversionError, match=r"1 missing keys.*encoder\.layer\.1\.output\.dense\.bias"):
        convert_state_dict(tiny_state, tiny_config)


def test_unexpected_keys(tiny_state, tiny_config):
    tiny_state["encoder.layer.0.attention.self.extra.weight"] = np.zeros(3, np.float32)
    tiny_state["encoder.layer.2.output.dense.bias"] = np.zeros(64, np.float32)
    with pytest.raises(ConversionError, match="2 unexpected keys") as err:
        convert_state_dict(tiny_state, tiny_config)
    assert "encoder.layer.0.attention.self.extra.weight" in str(err.value)
    assert "encoder.layer.2.output.dense.bias" in str(err.value)


def test_shape_mismatch_lists_all(tiny_state, tiny_config):
    tiny_state["encoder.layer.0.attention.self.query.weight"] = np.zeros((64, 32), np.float32)
    tiny_state["embeddings.word_embeddings.weight"] = np.zeros((100, 64), np.float32)
    with pytest.raises(ConversionError, match="2 keys with the wrong shape") as err:
        convert_state_dict(tiny_state, tiny_config)
    message = str(err.value)
    assert "encoder.layer.0.attention.self.query.weight: expected (64, 64), got (64, 32)" in message
    assert "embeddings.word_embeddings.weight: expected (30522, 64), got (100, 64)" in message


def test_every_problem_reported_at_once(tiny_state, tiny_config):
    del tiny_state["pooler.dense.weight"]
    tiny_state["encoder.layer.0.output.LayerNorm.gamma"] = np.zeros(64, np.float32)
    tiny_state["encoder.layer.1.intermediate.dense.bias"] = np.zeros(7, np.float32)
    with pytest.raises(ConversionError) as err:
        convert_state_dict(tiny_state, tiny_config)
    message = str(err.value)
    for text in ("pooler.dense.weight", "encoder.layer.0.output.LayerNorm.gamma",
                 "encoder.layer.1.intermediate.dense.bias: expected (128,), got (7,)"):
        assert text in message


def test_missing_pooler(tiny_state, tiny_config, tiny_torch, batch):
    del tiny_state["pooler.dense.weight"], tiny_state["pooler.dense.bias"]
    with pytest.raises(ConversionError, match="allow_missing_pooler"):
        convert_state_dict(tiny_state, tiny_config)
    params, report = convert_state_dict(tiny_state, tiny_config, allow_missing_pooler=True)
    assert report.missing_pooler and "pooler" not in params
    assert "no pooler" in report.summary()
    assert_matches_torch(tiny_torch, tiny_config, params, batch, pooler=False)


def test_not_bert(tmp_path, tiny_config):
    gpt2 = transformers.GPT2Model(transformers.GPT2Config(
        n_layer=1, n_embd=32, n_head=2, vocab_size=100, n_positions=32))
    gpt2.save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ConversionError, match="'gpt2' is not BERT"):
        convert_checkpoint(tmp_path / "gpt2")
    tiny_config.to_json(tmp_path / "bert_config.json")
    with pytest.raises(ConversionError, match="not a BERT checkpoint.*under: h, ln_f, wpe, wte"):
        convert_checkpoint(tmp_path / "gpt2" / "model.safetensors",
                           config_file=tmp_path / "bert_config.json")


def test_truncated_files(tmp_path, tiny_torch):
    write_hf_folder(tiny_torch, tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="truncated or corrupt") as err:
        convert_checkpoint(tmp_path)
    assert str(weights) in str(err.value)
    torch.save(tiny_torch.state_dict(), tmp_path / "model.bin")
    data = (tmp_path / "model.bin").read_bytes()
    (tmp_path / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="cannot read this PyTorch checkpoint") as err:
        convert_checkpoint(tmp_path / "model.bin")
    assert str(tmp_path / "model.bin") in str(err.value)


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        convert.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--vocab" in out and "--config" in out and "minBERT" in out


def test_cli_error_exit_status(tmp_path, capsys):
    assert convert.main([str(tmp_path / "nothing"), str(tmp_path / "out")]) == 1
    assert "no such file or folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- minBERT checkpoints

def minbert_name(hf_key: str) -> str:
    """HuggingFace BertModel key -> CS224N minBERT key."""
    names = {"embeddings.word_embeddings": "word_embedding",
             "embeddings.position_embeddings": "pos_embedding",
             "embeddings.token_type_embeddings": "tk_type_embedding",
             "embeddings.LayerNorm": "embed_layer_norm", "pooler.dense": "pooler_dense"}
    layer = {"attention.self.": "self_attention.", "attention.output.dense": "attention_dense",
             "attention.output.LayerNorm": "attention_layer_norm",
             "intermediate.dense": "interm_dense", "output.dense": "out_dense",
             "output.LayerNorm": "out_layer_norm"}
    module, leaf = hf_key.rsplit(".", 1)
    if module.startswith("encoder.layer."):
        _, _, i, rest = module.split(".", 3)
        for old, new in layer.items():
            if rest.startswith(old):
                return f"bert.bert_layers.{i}.{new}{rest[len(old):]}.{leaf}"
        raise KeyError(hf_key)
    return f"bert.{names[module]}.{leaf}"


@pytest.fixture(scope="module")
def minbert_checkpoint(tmp_path_factory, tiny_torch):
    path = tmp_path_factory.mktemp("minbert") / "finetune-10-1e-05-multitask.pt"
    model = {minbert_name(k): v for k, v in tiny_torch.state_dict().items()}
    model["bert.position_ids"] = torch.arange(64)[None]
    model[HEAD[0]], model[HEAD[1]] = torch.randn(5, 64), torch.zeros(5)
    optim = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))])
    torch.save({"model": model, "optim": optim.state_dict(),
                "args": argparse.Namespace(option="finetune", lr=1e-5, epochs=10, use_gpu=False),
                "model_config": types.SimpleNamespace(
                    hidden_size=64, num_attention_heads=4, hidden_dropout_prob=0.3,
                    num_labels=5, data_dir=".", option="finetune"),
                "system_rng": random.getstate(), "numpy_rng": np.random.get_state(),
                "torch_rng": torch.random.get_rng_state()}, path)
    return path


@pytest.mark.slow
def test_minbert_cli(tmp_path, minbert_checkpoint, tiny_torch, batch):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO_ROOT)] + os.environ.get("PYTHONPATH", "").split(os.pathsep)).rstrip(os.pathsep)}
    out = tmp_path / "converted"
    run = subprocess.run([sys.executable, "-m", "bert_jax.convert", str(minbert_checkpoint),
                          str(out), "--vocab", str(VOCAB)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "minbert checkpoint" in run.stdout and "skipped 2 keys" in run.stdout
    assert all(key in run.stdout for key in HEAD)
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "conversion.json", "params", "vocab.txt"]
    assert json.loads((out / "conversion.json").read_text())["skipped"] == list(HEAD)
    config, params = load_pretrained(out)
    assert config.shape_dict() == BertConfig(**TINY).shape_dict()
    assert_matches_torch(tiny_torch, config, params, batch)


def test_minbert_function(tmp_path, minbert_checkpoint, tiny_torch, batch, capsys):
    config, params, report = convert_checkpoint(minbert_checkpoint, tmp_path / "out")
    assert report.source_format == "minbert" and report.prefix == "bert."
    assert report.skipped == list(HEAD) and report.ignored == ["bert.position_ids"]
    printed = capsys.readouterr().out
    assert "sentiment_linear.weight" in printed and "config inferred" in printed
    assert "vocab:" in printed  # fell back to bert-base-uncased's vocab, and said so
    assert config.num_attention_heads == 4  # from model_config
    assert_matches_torch(tiny_torch, config, params, batch)
    loaded_config, loaded = converted.load_converted(tmp_path / "out")
    assert loaded_config == config
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    with pytest.raises(FileExistsError):
        converted.save_converted(tmp_path / "out", params, config, VOCAB)


def test_overwrite_never_deletes_the_source_or_the_working_folder(tmp_path, tiny_torch,
                                                                   monkeypatch, capsys):
    src = write_hf_folder(tiny_torch, tmp_path / "hf")
    before = sorted(p.name for p in src.iterdir())
    monkeypatch.chdir(tmp_path)
    for out, why in ((src, "is or holds the source"), (tmp_path, "current folder"),
                     (Path("."), "current folder"), (src / "converted", "inside the source"),
                     (tmp_path / "hf" / "..", "current folder")):
        assert convert.main([str(src), str(out), "--overwrite"]) == 1
        err = capsys.readouterr().err
        assert why in err and "Traceback" not in err, (out, err)
    assert sorted(p.name for p in src.iterdir()) == before and (tmp_path / "hf").is_dir()
    # A folder that is not an earlier conversion is never replaced; an earlier one is.
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert convert.main([str(src), str(other), "--overwrite"]) == 1
    assert "not a converted model folder" in capsys.readouterr().err
    assert (other / "keep.txt").read_text() == "mine"
    assert convert.main([str(src), "converted"]) == 0
    assert convert.main([str(src), "converted", "--overwrite"]) == 0
    assert (tmp_path / "converted" / "conversion.json").is_file()


class _Payload:
    """A pickled object whose unpickling would run code: it must never be built."""
    ran = False

    def __reduce__(self):
        return (_mark_ran, ())


def _mark_ran():
    _Payload.ran = True
    return "ran"


def test_a_pickle_with_a_disallowed_global_is_refused_and_never_runs(tmp_path, tiny_torch):
    path = tmp_path / "evil.pt"
    torch.save({"model": tiny_torch.state_dict(), "payload": _Payload()}, path)
    _Payload.ran = False
    with pytest.raises(ConversionError, match=r"evil.pt: cannot read this PyTorch checkpoint: "
                                              r"it pickles .*_mark_ran.*, which is not allowed"):
        convert_checkpoint(path, verbose=False)
    assert not _Payload.ran


def test_the_loaders_import_no_command_line():
    """Loading a model (pretrained.py, exported.py, converted.py, checkpoint_files.py) never
    imports a command-line module (one defining `main`, such as convert.py)."""
    package = REPO_ROOT / "bert_jax"
    clis = {path.stem for path in package.glob("*.py")
            if any(isinstance(node, ast.FunctionDef) and node.name == "main"
                   for node in ast.parse(path.read_text()).body)}
    assert {"convert", "export", "predict"} <= clis
    for loader in ("pretrained", "exported", "converted", "checkpoint_files"):
        tree = ast.parse((package / f"{loader}.py").read_text())
        imported = {node.module.rpartition(".")[2] for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.module
                    and node.module.startswith("bert_jax")}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                     and node.module == "bert_jax" for alias in node.names}
        assert not imported & clis, (loader, imported & clis)


# ---------------------------------------------------------------- damaged inputs

def test_a_header_dtype_that_does_not_fit_the_weights_is_refused(tmp_path, tiny_torch, capsys):
    """An edited safetensors header (F32 -> I32, the same byte size) would turn the weights'
    bytes into integers; the converter refuses it, naming the tensor and the file."""
    write_hf_folder(tiny_torch, tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    name = "encoder.layer.0.attention.self.query.weight"
    assert header[name]["dtype"] == "F32"
    start = data.index(b'"F32"', data.index(name.encode()))
    data[start:start + 5] = b'"I32"'
    weights.write_bytes(bytes(data))
    capsys.readouterr()  # transformers' progress bars
    assert convert.main([str(tmp_path / "hf"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert f"{name} (int32)" in err and str(weights) in err and "not floating point" in err
    assert not (tmp_path / "out").exists()


def test_a_raw_malicious_pickle_is_refused_without_advising_weights_only_false(tmp_path):
    """A plain pickle (not torch's zip format) whose opcodes the safe loader does not know:
    torch's message says to re-run with weights_only=False, which would execute it."""
    import pickle
    path = tmp_path / "raw.bin"
    path.write_bytes(pickle.dumps(_Payload()))
    _Payload.ran = False
    with pytest.raises(ConversionError) as err:
        convert_checkpoint(path, verbose=False)
    message = str(err.value)
    assert "not a plain weights file" in message and "refused" in message and str(path) in message
    assert "weights_only" not in message and "\n" not in message
    assert not _Payload.ran


@pytest.mark.parametrize("text, why", [
    ("[1, 2]", "a JSON object .* is expected, not list"),
    ('{"hidden_size": -5}', "hidden_size must be a whole number from 1"),
    ('{"hidden_size": 1000000000000, "num_attention_heads": 4}',
     "hidden_size must be a whole number from 1 to 65,536"),
    ('{"num_hidden_layers": "2"}', "num_hidden_layers must be a whole number .* not '2'"),
    ('{"layer_norm_eps": "1e-12"}', "layer_norm_eps must be a number"),
    ("{not json", "not a readable JSON file"),
])
def test_a_damaged_config_json_is_one_error_line(tmp_path, tiny_torch, capsys, text, why):
    write_hf_folder(tiny_torch, tmp_path / "hf")
    (tmp_path / "hf" / "config.json").write_text(text)
    capsys.readouterr()  # transformers' progress bars
    assert convert.main([str(tmp_path / "hf"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'hf' / 'config.json'}: ") and err.count("\n") == 1
    assert re.search(why, err), err
