"""Damaged run and export folders: every damage given to `python -m bert_jax.predict`,
`python -m train.evaluate` or `MultitaskModel.load` is one `error:` line naming the file and the fix, never a traceback nor a
model that predicts with a config, vocabulary or head settings that no longer fit its weights."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from bert_jax import predict
from bert_jax.api import MultitaskModel
from bert_jax.errors import BertJaxError, ConfigError


def edit_json(name: str, **changes):
    def damage(folder: Path) -> None:
        values = json.loads((folder / name).read_text())
        values.update(changes)
        (folder / name).write_text(json.dumps(values))
    return damage


def write(name: str, text: str):
    return lambda folder: (folder / name).write_text(text)


def keep_lines(name: str, n: int):
    def damage(folder: Path) -> None:
        lines = (folder / name).read_text(encoding="utf-8").splitlines(keepends=True)
        (folder / name).write_text("".join(lines[:n]), encoding="utf-8")
    return damage


def cut_bytes(name: str, n: int):
    return lambda folder: (folder / name).write_bytes((folder / name).read_bytes()[:n])


@pytest.fixture(scope="module")
def export_dir(tiny_run, tmp_path_factory) -> Path:
    from bert_jax import export
    out = tmp_path_factory.mktemp("export") / "export"
    assert export.main([str(tiny_run), str(out)]) == 0
    return out


def check_one_error_line(folder: Path, named: str, why: str, tmp_path, capsys) -> None:
    """predict exits 2 with one `error:` line naming `folder/named` and `why`; the API raises
    a BertJaxError saying the same."""
    sentences = tmp_path / "in.txt"
    sentences.write_text("a fine film\na mess\n")
    capsys.readouterr()
    assert predict.main([str(folder), "--task", "sst", "--input", str(sentences)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and err.count("\n") == 1, err
    assert str(folder / named) in err and why in err, err
    with pytest.raises(BertJaxError, match=re.escape(why)):
        MultitaskModel.load(folder)


RUN_DAMAGES = {
    "config.json a list": (write("config.json", "[1, 2]"), "config.json",
                           "must be a JSON object"),
    "config.json absurd size": (edit_json("config.json", hidden_size=10 ** 12),
                                "config.json", "hidden_size must be a whole number from 1"),
    "config.json a string": (edit_json("config.json", num_hidden_layers="2"), "config.json",
                             "num_hidden_layers must be a whole number"),
    "config.json more layers than the weights": (
        edit_json("config.json", num_hidden_layers=3), "",
        "do not fit the run's config.json and train_config.json"),
    "config.json another vocab_size": (edit_json("config.json", vocab_size=1000), "vocab.txt",
                                       "30522 tokens, but the model's word embedding has 1000"),
    "vocab.txt empty": (write("vocab.txt", ""), "vocab.txt", "0 tokens"),
    "vocab.txt of 1,000 lines": (keep_lines("vocab.txt", 1000), "vocab.txt",
                                 "1000 tokens, but the model's word embedding has 30522"),
    "train_config.json pooling": (edit_json("train_config.json", pooling="max"),
                                  "train_config.json", "pooling must be one of"),
    "train_config.json max_length": (edit_json("train_config.json", max_length="abc"),
                                     "train_config.json", "max_length 'abc' is not a whole"),
}


def test_evaluate_names_a_damaged_train_config(tiny_run, data_dir, tmp_path, capsys):
    from train import evaluate
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("predictions"))
    edit_json("train_config.json", max_length="abc")(run)
    capsys.readouterr()
    assert evaluate.main([str(run), "--out", str(tmp_path / "out"), "--data-dir", str(data_dir),
                          "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {run / 'train_config.json'}: max_length 'abc'"), err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", RUN_DAMAGES)
def test_a_damaged_run_folder_is_one_error_line(case, tiny_run, tmp_path, capsys):
    damage, named, why = RUN_DAMAGES[case]
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("predictions"))
    damage(run)
    check_one_error_line(run, named, why, tmp_path, capsys)


EXPORT_DAMAGES = {
    "heads_config.json not JSON": (write("heads_config.json", "{bad"), "heads_config.json",
                                   "not a readable JSON file"),
    "heads_config.json a list": (write("heads_config.json", "[1]"), "heads_config.json",
                                 "a JSON object is expected, not list"),
    "heads_config.json pooling": (edit_json("heads_config.json", pooling="max"),
                                  "heads_config.json", "pooling must be one of"),
    "heads_config.json max_length": (edit_json("heads_config.json", max_length="x"),
                                     "heads_config.json", "max_length 'x' is not a whole"),
    "heads.safetensors truncated": (cut_bytes("heads.safetensors", 100), "heads.safetensors",
                                    "cannot read it (truncated or corrupt?)"),
    "config.json more layers than the weights": (
        edit_json("config.json", num_hidden_layers=3), "model.safetensors", "16 missing keys"),
    "vocab.txt of 1,000 lines": (keep_lines("vocab.txt", 1000), "vocab.txt",
                                 "1000 tokens, but the model's word embedding has 30522"),
}


@pytest.mark.parametrize("case", EXPORT_DAMAGES)
def test_a_damaged_export_is_one_error_line(case, export_dir, tmp_path, capsys):
    damage, named, why = EXPORT_DAMAGES[case]
    folder = tmp_path / "export"
    shutil.copytree(export_dir, folder)
    damage(folder)
    check_one_error_line(folder, named, why, tmp_path, capsys)


@pytest.mark.parametrize("batch_size", [0, -3, 2.5])
def test_an_api_batch_size_below_one_is_a_config_error(tiny_run, batch_size):
    with pytest.raises(ConfigError, match=f"batch_size must be a whole number of at least 1, "
                                          f"not {batch_size}"):
        MultitaskModel.load(tiny_run, batch_size=batch_size)
