"""bert_jax/errors.py: every command-line tool turns the project's own errors (BertJaxError and
its kinds) into one `error: ...` line and exit status, and nothing else: any other exception
is a bug and keeps its traceback (it is not passed off as a user's mistake)."""
from __future__ import annotations

import pytest

from bert_jax import convert, export, predict
from bert_jax.errors import ConfigError, MissingFileError, OutputExistsError, OutputWriteError
from train import analyze, evaluate, frozen_baseline, multitask


def tools(tmp_path):
    """(name, module, the function its main calls first that may fail, argv, exit status)."""
    text = tmp_path / "input.txt"
    text.write_text("a sentence\n")
    return [
        ("train.multitask", multitask, "train_and_evaluate",
         ["--no-progress", "--out", str(tmp_path / "run")], 2),
        ("train.evaluate", evaluate, "_evaluate", [str(tmp_path)], 2),
        ("train.analyze", analyze, "saved_dev_outputs", [str(tmp_path), "--no-progress"], 2),
        ("train.frozen_baseline", frozen_baseline, "run", [], 2),
        ("bert_jax.predict", predict, "parse_input",
         ["all-MiniLM-L6-v2", "--task", "sst", "--input", str(text)], 2),
        ("bert_jax.convert", convert, "convert_checkpoint", [str(tmp_path), str(tmp_path / "o")],
         1),
        ("bert_jax.export", export, "check_output_folder",
         ["all-MiniLM-L6-v2", str(tmp_path / "export")], 2),
    ]


def raising(err):
    def fail(*args, **kwargs):
        raise err
    return fail


@pytest.mark.parametrize("index", range(7))
def test_the_projects_errors_are_one_line_and_others_keep_their_traceback(
        index, tmp_path, monkeypatch, capsys):
    name, module, function, argv, status = tools(tmp_path)[index]
    monkeypatch.chdir(tmp_path)  # no data/ nor ../shared/data: no tool looks for it before `function`
    for err in (ConfigError("--lr 0: must be positive"), MissingFileError("x.csv: no such file"),
                OutputExistsError("o: already exists"), OutputWriteError("o: cannot write it")):
        monkeypatch.setattr(module, function, raising(err))
        assert module.main(argv) == status, name
        lines = [line for line in capsys.readouterr().err.splitlines()
                 if line.startswith("error:")]
        assert lines == [f"error: {err}"], (name, lines)
    # A bug is not a user's mistake: ValueError, FileNotFoundError, KeyError propagate.
    for bug in (ValueError("a bug"), FileNotFoundError("a bug"), KeyError("a bug")):
        monkeypatch.setattr(module, function, raising(bug))
        with pytest.raises(type(bug), match="a bug"):
            module.main(argv)
