"""train.evaluate and train.analyze command lines: output paths refused before any work."""
from __future__ import annotations

import pytest

from train import analyze, evaluate


def test_evaluate_out_that_is_a_file_is_refused(tmp_path, capsys):
    taken = tmp_path / "scores.txt"
    taken.write_text("mine")
    with pytest.raises(SystemExit) as info:
        evaluate.main([str(tmp_path / "run"), "--out", str(taken)])
    assert info.value.code == 2
    assert "is a file: pass a folder path" in capsys.readouterr().err
    assert taken.read_text() == "mine"


def test_analyze_out_that_is_a_folder_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        analyze.main([str(tmp_path / "run"), "--out", str(tmp_path)])
    assert info.value.code == 2
    assert "is a folder: pass a file path" in capsys.readouterr().err


@pytest.mark.parametrize("tool, flag, value", [
    (evaluate, "--batch-size", "0"), (evaluate, "--limit", "-1"),
    (analyze, "--top", "-1"), (analyze, "--limit", "-3")])
def test_numbers_out_of_range_are_refused(tool, flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        tool.main([str(tmp_path / "run"), flag, value])
    assert info.value.code == 2 and f"argument {flag}:" in capsys.readouterr().err
