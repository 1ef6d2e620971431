"""train.config: one source per setting. Every field has its help and range in its metadata,
the command line is generated from them with the preset's (or --config file's) real defaults,
and train_config.json records every setting of a run."""
from __future__ import annotations

import dataclasses
import json

import pytest

from train.config import PRESETS, TrainConfig
from train.flags import base_config as _base_config
from train.multitask import build_parser, config_from_args, main


def test_every_setting_has_a_sentence_of_help_and_a_flag():
    parser = build_parser()
    flags = {a.dest: a for a in parser._actions}
    for field in dataclasses.fields(TrainConfig):
        text = field.metadata.get("help", "")
        assert len(text.split()) >= 4 and text != field.name.replace("_", " "), field.name
        assert field.name in flags and flags[field.name].help.startswith(text), field.name
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and action.help.strip() != action.dest.replace("_", " ")


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_help_shows_the_presets_values_never_none(preset, capsys):
    with pytest.raises(SystemExit):
        main(["--preset", preset, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and "default None" not in text
    cfg = PRESETS[preset]
    assert f"(default {cfg.epochs})" in text
    assert f"(default {','.join(cfg.tasks)})" in text and f"(default {cfg.pooling})" in text


def test_config_file_is_the_base_and_flags_override_it(tmp_path):
    saved = PRESETS["concat"].replace(lr=3e-5, head_lr=1e-3, epochs=3, seed=2, resume=True)
    path = tmp_path / "train_config.json"
    saved.to_json(path)
    argv = ["--config", str(path), "--seed", "5"]
    base, name = _base_config(argv)
    cfg = config_from_args(build_parser(base, name).parse_args(argv), base)
    assert cfg == saved.replace(seed=5, resume=False)  # resume is never inherited


def test_a_bad_config_file_is_one_error_line(tmp_path, capsys):
    path = tmp_path / "train_config.json"
    path.write_text('{"lr": ')
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "train_config.json" in err and len(err.splitlines()) == 1
    assert main(["--config", str(tmp_path / "missing.json")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_ranges_hold_in_the_dataclass_too():
    with pytest.raises(ValueError, match="batch_size: 0 is not allowed"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="lr: 0 is not allowed"):
        TrainConfig(lr=0.0)


def test_train_config_json_records_every_run_setting(tmp_path):
    cfg = TrainConfig(save_every=7, data_dir="somewhere", sst_dev="dev.csv")
    cfg.to_json(tmp_path / "c.json")
    saved = json.loads((tmp_path / "c.json").read_text())
    assert {f.name for f in dataclasses.fields(TrainConfig)} == set(saved)
    assert saved["save_every"] == 7 and saved["data_dir"] == "somewhere"
    assert cfg.data_overrides() == {("sst", "dev"): "dev.csv"}
    assert TrainConfig.from_json(tmp_path / "c.json") == cfg
