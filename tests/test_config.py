"""train.config: one source per setting. Every field has its help and range in its metadata,
the command line is generated from them with the preset's (or --config file's) real defaults,
and train_config.json records every setting of a run."""
from __future__ import annotations

import dataclasses
import json
import re

import pytest

from bert_jax.cli import nonnegative_float, nonnegative_int, positive_float, positive_int, seed_int
from train.config import PRESETS, TrainConfig, below_one
from train.flags import base_config as _base_config
from train.multitask import build_parser, config_from_args, main


def test_every_setting_has_a_sentence_of_help_and_a_flag():
    parser = build_parser()
    flags = {a.dest: a for a in parser._actions}
    for field in dataclasses.fields(TrainConfig):
        text = field.metadata.get("help", "")
        assert len(text.split()) >= 4 and text != field.name.replace("_", " "), field.name
        if field.metadata.get("cli") is False:  # set by another setting (user_tasks: the file)
            assert field.name not in flags, field.name
            continue
        assert field.name in flags and flags[field.name].help.startswith(text), field.name
    assert [f.name for f in dataclasses.fields(TrainConfig)
            if f.metadata.get("cli") is False] == ["user_tasks"]
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and action.help.strip() != action.dest.replace("_", " ")


def printed_helps(text: str) -> dict[str, str]:
    """{option (its first string): its help, lines joined} as `--help` printed them: an entry
    starts at a line indented by two spaces in the option sections, its help goes on in the
    lines indented further."""
    helps, current = {}, None
    lines = text.splitlines()
    for line in lines[lines.index("options:"):]:
        match = re.match(r"  (-\S.*?)(?: {2,}(.*))?$", line)
        if match:
            current = match[1].split(", ")[0].split()[0]
            helps[current] = match[2] or ""
        elif line.startswith("   ") and current:
            helps[current] = f"{helps[current]} {line.strip()}".strip()
        else:
            current = None
    return helps


def shown(value) -> str:
    """A default as the help should say it: a tuple comma-joined, '' as none."""
    return ",".join(value) if isinstance(value, tuple) else "none" if value == "" else str(value)


def assert_help_states_the_defaults_of(base: TrainConfig, argv: list[str], capsys) -> None:
    """Each setting's help, as `--help` prints it, is its field's help sentence followed by
    `base`'s value of it, `(default X)` (a sentence that says its own default keeps it)."""
    with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit):
        mp.setenv("COLUMNS", "1000")  # no line wrapped (argparse breaks lines after a "-")
        main(argv + ["--help"])
    helps = printed_helps(capsys.readouterr().out)
    for field in dataclasses.fields(TrainConfig):
        if field.metadata.get("cli") is False:
            continue
        text = " ".join(field.metadata["help"].split())
        value = shown(getattr(base, field.name))
        want = text if "(default" in text else f"{text} (default {value})"
        assert helps.pop("--" + field.name.replace("_", "-")) == want, field.name
    assert set(helps) == {"-h", "--preset", "--config", "--out", "--no-progress", "--allow-cpu"}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_help_shows_every_settings_default_from_the_preset(preset, capsys):
    assert_help_states_the_defaults_of(PRESETS[preset], ["--preset", preset], capsys)


def test_help_shows_every_settings_default_from_the_config_file(tmp_path, capsys):
    saved = PRESETS["baseline"].replace(lr=3e-5, tasks=("sst", "sts"), pack=False, seed=3,
                                        sst_train="mine.csv", dropout=0.25)
    saved.to_json(tmp_path / "train_config.json")
    assert_help_states_the_defaults_of(saved, ["--config", str(tmp_path / "train_config.json")],
                                       capsys)


# The range of each number setting, by the argparse type in its metadata: (the lowest value
# it takes, a value it refuses, [values above the lowest it takes]).
RANGES = {positive_int: ("1", "0", ["7"]), nonnegative_int: ("0", "-1", ["3"]),
          positive_float: ("1e-12", "0", ["0.5", "1"]),
          nonnegative_float: ("0", "-1e-12", ["0.5", "3"]),
          below_one: ("0", "1", ["0.999"]), seed_int: ("0", "-1", ["4294967295"])}


@pytest.mark.parametrize("field", [f for f in dataclasses.fields(TrainConfig)
                                   if f.metadata.get("type")], ids=lambda f: f.name)
def test_each_number_setting_takes_its_range_and_the_values_its_help_names(field, capsys):
    """The flag and the dataclass take the lowest value of the field's range (RANGES) and
    refuse the one below it, naming the flag; the special values its help names, `(0: off)`,
    `-1: ...`, are values it takes; a [0, 1) range is said in words."""
    flag = "--" + field.name.replace("_", "-")
    assert field.metadata["type"] in RANGES, f"{field.name}: add its type's range to RANGES"
    low, bad, more = RANGES[field.metadata["type"]]
    text = field.metadata["help"]
    named = re.findall(r"[(;] ?(-?\d+(?:\.\d+)?): ", text)
    for value in [low, *more, *named]:
        cfg = config_from_args(build_parser().parse_args([flag, value]), PRESETS["more-epochs"])
        assert getattr(cfg, field.name) == float(value), (field.name, value)
    with pytest.raises(SystemExit):
        build_parser().parse_args([f"{flag}={bad}"])
    assert re.search(f"argument {flag}: {bad} is (not allowed|out of range)",
                     capsys.readouterr().err)
    with pytest.raises(ValueError, match=f"{field.name}.* {re.escape(bad)}"):
        TrainConfig(**{field.name: {"int": int, "float": float}[str(field.type)](bad)})
    if field.metadata["type"] is below_one:
        assert "from 0 up to (not including) 1" in text, field.name


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


@pytest.mark.parametrize("field, value", [("eps", 0.0), ("b1", 7.0), ("b2", 1.0),
                                          ("dropout", 5.0), ("dropout", 1.0), ("b1", -0.1)])
def test_optimiser_and_dropout_ranges_are_checked_at_start(field, value, capsys):
    """eps 0 trains to NaN; betas and dropout outside [0, 1) make no sense: refused by the
    dataclass and by the parser, naming the field."""
    with pytest.raises(ValueError, match=f"{field}: .* is not allowed"):
        TrainConfig(**{field: value})
    with pytest.raises(SystemExit):
        main([f"--{field.replace('_', '-')}", str(value)])
    assert f"--{field}" in capsys.readouterr().err
    assert TrainConfig(b1=0.0, b2=0.0, dropout=0.0, eps=1e-12).eps == 1e-12


def test_compute_dtype_and_attention_kernel_are_training_settings(capsys):
    """`--dtype` and `--attention-impl` are checked as training settings (the model's
    config.json no longer holds them), naming the field and the allowed values."""
    with pytest.raises(ValueError, match="attention_impl must be one of .*'xla', 'cudnn'.*'flash'"):
        TrainConfig(attention_impl="flash")
    with pytest.raises(ValueError, match="dtype must be 'auto', 'float32' or 'bfloat16'"):
        TrainConfig(dtype="int8")
    with pytest.raises(SystemExit):
        main(["--attention-impl", "flash"])
    assert "attention_impl must be one of" in capsys.readouterr().err
    cfg = TrainConfig(attention_impl="cudnn", pack=False, dtype="bfloat16")
    assert (cfg.attention_impl, cfg.dtype) == ("cudnn", "bfloat16")
