"""The command-line surface: the console scripts of setup.cfg run from the virtual environment
outside the repository, and every flag of every tool says what it does."""
from __future__ import annotations

import argparse
import configparser
import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {
    "bert-jax-train": "train.multitask:main",
    "bert-jax-evaluate": "train.evaluate:main",
    "bert-jax-analyze": "train.analyze:main",
    "bert-jax-compare": "train.compare:main",
    "bert-jax-ablation": "train.ablation:main",
    "bert-jax-frozen-baseline": "train.frozen_baseline:main",
    "bert-jax-predict": "bert_jax.predict:main",
    "bert-jax-convert": "bert_jax.convert:main",
    "bert-jax-export": "bert_jax.export:main",
}
# The tools whose --help this file checks flag by flag (train.multitask's flags come from
# TrainConfig's fields: tests/test_config.py).
TOOLS = ("train.evaluate", "train.analyze", "train.compare", "train.frozen_baseline",
         "train.ablation", "bert_jax.predict", "bert_jax.convert", "bert_jax.export")


def declared_scripts() -> dict[str, str]:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    lines = cfg["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict((part.strip() for part in line.split("=", 1)) for line in lines)


def test_setup_cfg_declares_the_console_scripts():
    assert declared_scripts() == SCRIPTS
    for target in SCRIPTS.values():
        module, func = target.split(":")
        main = getattr(importlib.import_module(module), func)
        # console scripts run sys.exit(main()): main returns the exit status
        assert inspect.signature(main).return_annotation in (int, "int"), target


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_console_script_help_runs_outside_the_repository(script, tmp_path):
    path = Path(sys.executable).parent / script
    assert path.is_file(), (f"{path}: no such script; install the package into this "
                            "environment again (`pip install -e .`, or `make install`)")
    done = subprocess.run([str(path), "--help"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {script} ") and "Traceback" not in done.stderr
    # it lists the options and arguments of its tool's parser, no fewer and no more
    parser = _parser(SCRIPTS[script].split(":")[0])
    options, positionals = listed_arguments(done.stdout)
    assert options == {o for a in parser._actions for o in a.option_strings}, script
    assert positionals == [a.metavar or a.dest for a in parser._actions
                           if not a.option_strings], script
    assert " ".join(parser.description.split()) in " ".join(done.stdout.split())


def listed_arguments(help_text: str) -> tuple[set[str], list[str]]:
    """(the option strings, the positional names) that `--help` lists in its sections
    ("positional arguments:", "options:", argument groups): the lines indented by exactly two
    spaces there; an unindented line that is no section title starts the epilog."""
    lines = help_text.splitlines()
    start = next(i for i, line in enumerate(lines)
                 if line in ("positional arguments:", "options:"))
    options, positionals = set(), []
    for line in lines[start:]:
        if line and not line.startswith(" "):
            if not line.endswith(":"):
                break
            continue
        match = re.match(r"  (\S.*?)(?: {2,}|$)", line)
        if not match:  # a help text's next line (indented further) or a blank line
            continue
        if match[1].startswith("-"):  # "-h, --help", "--out DIR", "--pack, --no-pack"
            options |= {part.split()[0] for part in match[1].split(", ")}
        else:
            positionals.append(match[1])
    return options, positionals


def test_listed_arguments_reads_what_argparse_prints():
    parser = argparse.ArgumentParser(description="d", epilog="SRC is: a folder")
    parser.add_argument("src", help="the source folder to read")
    parser.add_argument("--out", metavar="DIR", help="x " * 60)
    parser.add_argument("--pack", action=argparse.BooleanOptionalAction, help="pack the rows")
    parser.add_argument_group("settings").add_argument("--choice", choices=["a", "b"], help="c")
    assert listed_arguments(parser.format_help()) == (
        {"-h", "--help", "--out", "--pack", "--no-pack", "--choice"}, ["src"])


def _parser(module_name: str):
    return importlib.import_module(module_name).build_parser()


def _words(text: str) -> str:
    return " ".join(text.lower().replace("-", " ").replace("_", " ").split())


@pytest.mark.parametrize("module_name", TOOLS)
def test_every_flag_says_what_it_does(module_name):
    parser = _parser(module_name)
    text = parser.format_help()
    assert "(default: None)" not in text and "default None" not in text
    for action in parser._actions:
        names = action.option_strings or [action.dest]
        help_text = action.help or ""
        assert help_text.strip() and help_text != "==SUPPRESS==", f"{module_name} {names}: no help"
        own = {_words(n) for n in names + [action.dest]} | {
            _words(action.metavar) if isinstance(action.metavar, str) else ""}
        assert _words(help_text) not in own, f"{module_name} {names}: help repeats the name"
        assert len(help_text.split()) >= 3, f"{module_name} {names}: {help_text!r} is no sentence"
        if "%(default)" in help_text:
            continue
        assert help_text.count("(default") <= 1, f"{module_name} {names}: {help_text!r}"


def closing_block(text: str) -> tuple[str, list[Path]]:
    """(the scores line or "", the paths listed) of the closing block at the end of `text`."""
    lines = text.rstrip("\n").splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("wrote "))
    scores = lines[start - 1] if start and ": " in lines[start - 1] else ""
    return scores, [Path(line.strip()) for line in lines[start + 1:]]


def test_compare_ends_with_scores_and_what_it_wrote(tmp_path, capsys):
    import json
    from train import compare
    runs = []
    for seed, sst in ((1, 0.4), (2, 0.5)):
        run = tmp_path / f"s{seed}"
        run.mkdir()
        (run / "train_config.json").write_text(json.dumps({"seed": seed}))
        (run / "metrics.jsonl").write_text(json.dumps(
            {"step": 10, "epoch": 1.0, "sst_acc": sst, "para_acc": 0.8, "sts_r": 0.85,
             "overall": 0.7}) + "\n")
        runs.append(str(run))
    out = tmp_path / "table.md"
    assert compare.main(runs + ["--out", str(out)]) == 0
    printed = capsys.readouterr()
    scores, paths = closing_block(printed.err)
    assert scores.startswith("mean dev scores over 2 runs: sst_acc 0.450, para_acc 0.800")
    assert paths == [out] and out.read_text().strip() == printed.out.strip()
    assert compare.main(runs[:1]) == 0
    scores, paths = closing_block(capsys.readouterr().err)
    assert "sst_acc 0.400" in scores and paths == []


def test_frozen_baseline_ends_with_scores_and_what_it_wrote(tmp_path, capsys, monkeypatch):
    import json
    from train import frozen_baseline
    scores = {"sst_acc": 0.41234, "para_acc": 0.7, "sts_r": 0.8, "overall": 0.67}
    monkeypatch.setattr(frozen_baseline, "run", lambda *a: dict(scores))
    out = tmp_path / "frozen.json"
    assert frozen_baseline.main(["--out", str(out)]) == 0
    line, paths = closing_block(capsys.readouterr().out)
    assert "sst_acc 0.412, para_acc 0.700, sts_r 0.800, overall 0.670" in line
    assert paths == [out] and json.loads(out.read_text())["sst_acc"] == 0.41234


def test_ablation_ends_with_the_folders_it_wrote(tmp_path, capsys, monkeypatch, data_dir):
    from train import ablation

    def fake_train(cfg, out, files, **kwargs):
        out.mkdir(parents=True)
        return {"sst_acc": 0.3, "para_acc": 0.6, "sts_r": 0.1, "overall": 0.48}
    monkeypatch.setattr(ablation, "train_and_evaluate", fake_train)
    root = tmp_path / "ablation"
    assert ablation.main(["--out", str(root), "--presets", "baseline,cosine",
                          "--data-dir", str(data_dir)]) == 0
    text = capsys.readouterr().out
    assert "| `cosine` |" in text and "0.480" in text
    _, paths = closing_block(text)
    assert paths == [root / "baseline-seed11711", root / "cosine-seed11711",
                     root / "results.jsonl"]
    assert all(p.exists() for p in paths)


def test_predict_convert_export_name_what_they_wrote(tiny_model_dir, tiny_run, tmp_path,
                                                     capsys):
    """Their last line names the output (a file, or a folder and its contents) as it exists."""
    import re
    from bert_jax import convert, export, predict
    exported = tmp_path / "exported"
    assert export.main([str(tiny_model_dir), str(exported)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"wrote {exported.resolve()}: ")
    for name in re.findall(r"[\w.]+\.(?:json|safetensors|txt)", line):
        assert (exported / name).is_file(), name

    converted = tmp_path / "converted"
    assert convert.main([str(exported), str(converted)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    match = re.fullmatch(r"wrote (\S+) \((.*)\)", line)
    assert match and Path(match[1]) == converted.resolve()
    assert sorted(match[2].split(", ")) == sorted(
        p.name + ("/" if p.is_dir() else "") for p in converted.iterdir())

    lines = tmp_path / "in.txt"
    lines.write_text("a fine film\na dull one\n")
    out = tmp_path / "preds.csv"
    assert predict.main([str(tiny_run), "--task", "sst", "--input", str(lines),
                         "--output", str(out)]) == 0
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"wrote 2 predictions to {out.resolve()}" and out.is_file()


@pytest.mark.parametrize("argv0, shown", [
    ("/venv/bin/bert-jax-evaluate", "bert-jax-evaluate"),
    ("/repo/train/evaluate.py", "python -m train.evaluate"), ("-m", "python -m train.evaluate")])
def test_usage_names_the_command_the_user_typed(argv0, shown, monkeypatch):
    monkeypatch.setattr(sys, "argv", [argv0, "--help"])
    assert _parser("train.evaluate").format_usage().startswith(f"usage: {shown} ")


def option_helps(module_name: str) -> dict[str, str]:
    """{first option string (or dest): its help as --help prints it, whitespace made single}."""
    parser = _parser(module_name)
    formatter = parser._get_formatter()
    return {(a.option_strings or [a.dest])[0]: " ".join(formatter._expand_help(a).split())
            for a in parser._actions if a.help}


@pytest.mark.parametrize("module_name", TOOLS + ("train.multitask",))
def test_help_states_each_default_once_in_one_style(module_name):
    """`(default X)` everywhere (never `(default: X)`), once per option at most."""
    for option, text in option_helps(module_name).items():
        assert "(default:" not in text, f"{module_name} {option}: {text!r}"
        assert text.count("(default") <= 1, f"{module_name} {option}: {text!r}"


@pytest.mark.parametrize("module_name", TOOLS + ("train.multitask",))
def test_help_states_the_parsers_real_defaults(module_name):
    """Every option that defaults to a value says it, `(default X)`, and X is the parser's own
    default: the value itself, its meaning after it (`0: all rows`), or for a list of all tasks
    "all" (train.multitask's settings default to None here: tests/test_config.py reads them)."""
    from bert_jax.cs224n import TASKS
    helps = option_helps(module_name)
    checked = 0
    for action in _parser(module_name)._actions:
        if action.default in (None, False, [], argparse.SUPPRESS):
            continue
        name = (action.option_strings or [action.dest])[0]
        match = re.search(r"\(default ([^)]*)\)", helps[name])
        assert match, f"{module_name} {name}: its help does not say its default {action.default!r}"
        shown, default = match[1], action.default
        head = re.split(r"[:;]", shown)[0].strip()
        if isinstance(default, (int, float)):
            assert float(head) == default, f"{module_name} {name}: {shown!r} vs {default!r}"
        elif default == ",".join(TASKS) and shown == "all":
            pass
        else:
            assert head == default or shown.endswith(f": {default}"), (
                f"{module_name} {name}: {shown!r} vs {default!r}")
        checked += 1
    assert checked or module_name in ("train.compare", "bert_jax.convert")


def test_train_help_names_what_a_resume_may_change_and_the_data_default_once():
    from train.config import RESUMABLE_CHANGES
    helps = option_helps("train.multitask")
    assert "RESUMABLE_CHANGES" not in helps["--resume"]
    for name in RESUMABLE_CHANGES - {"resume"}:
        assert "--" + name.replace("_", "-") in helps["--resume"], name
    assert helps["--data-dir"] == ("folder with the CS224N files (default data/, else "
                                   "../shared/data)")
    assert helps["--sst-train"].endswith("(default none)")


def test_predict_calls_its_run_argument_RUN_as_the_readme_does():
    from bert_jax import predict
    usage = predict.build_parser().format_usage()
    assert "RUN" in usage.split() and "CKPT" not in predict.build_parser().format_help()
    assert "`python -m bert_jax.predict RUN " in (REPO / "README.md").read_text()


def test_frozen_baseline_shows_the_default_encoder():
    assert option_helps("train.frozen_baseline")["--init"].endswith(
        "(default all-MiniLM-L6-v2)")


def test_closing_block_says_folders_as_folders(tmp_path):
    from train.evaluate import closing_block
    (tmp_path / "best").mkdir()
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    (tmp_path / "vocab.txt").write_text("[PAD]\n")
    block = closing_block([tmp_path / "best", tmp_path / "metrics.jsonl", tmp_path / "vocab.txt"])
    assert block.splitlines() == ["wrote 2 files and 1 folder:", f"  {tmp_path / 'best'}/",
                                  f"  {tmp_path / 'metrics.jsonl'}", f"  {tmp_path / 'vocab.txt'}"]
    assert closing_block([tmp_path / "best"]).splitlines()[0] == "wrote 1 folder:"
    assert closing_block([]) == "wrote no files"
