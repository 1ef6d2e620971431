"""The command line of `python -m train.multitask`: one flag per `TrainConfig` field, defaulting
to the preset's (or the `--config` file's) value."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from bert_jax.checkpoints import read_json
from bert_jax.cli import prog
from train.config import PRESET_NOTES, PRESETS, TrainConfig
from train.errors import TrainingError


def field_type(field: dataclasses.Field):
    if field.metadata.get("type") is not None:
        return field.metadata["type"]
    if field.name == "tasks":
        return lambda text: tuple(x.strip() for x in text.split(",") if x.strip())
    return {"int": int, "float": float, "str": str}[str(field.type)]


def shown_default(value) -> str:
    if isinstance(value, tuple):
        return ",".join(value)
    return repr(value) if value == "" else str(value)


def build_parser(base: TrainConfig | None = None, base_name: str = "more-epochs"
                 ) -> argparse.ArgumentParser:
    """The command line: one flag per `TrainConfig` field (its help from the field), each
    defaulting to `base`'s value (the preset, or the `--config` file), shown in `--help`."""
    base = base or PRESETS[base_name]
    parser = argparse.ArgumentParser(
        prog=prog("train.multitask"),
        description="Fine-tune BERT on SST-5, Quora paraphrase and STS, with dev evaluation, "
                    "checkpoints and resume. A preset (or --config) gives every setting; each "
                    "flag below overrides one.")
    parser.add_argument("--preset", default="more-epochs", choices=sorted(PRESETS),
                        help="starting configuration (default more-epochs): " + "; ".join(
                            f"{k}: {v}" for k, v in PRESET_NOTES.items()))
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="start from a saved train_config.json instead of a preset; flags "
                             "still override it")
    parser.add_argument("--out", default=None,
                        help="run folder (default checkpoints/PRESET)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (plain log lines only)")
    group = parser.add_argument_group(f"settings (default: {base_name}'s value)")
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        default = getattr(base, field.name)
        kwargs = {"default": None,
                  "help": f"{field.metadata['help']} (default {shown_default(default)})"}
        if field.type in ("bool", bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            group.add_argument(flag, type=field_type(field), metavar=field.name.upper(),
                               **kwargs)
    return parser


def base_config(argv) -> tuple[TrainConfig, str]:
    """The configuration the flags start from: `--config FILE`, else `--preset` (a first,
    partial parse, so that `--help` can show the real defaults)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default="more-epochs", choices=sorted(PRESETS))
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        try:
            return TrainConfig.from_dict(read_json(Path(known.config))).replace(resume=False), \
                known.config
        except FileNotFoundError:
            raise TrainingError(f"--config {known.config}: no such file") from None
        except (TypeError, ValueError) as err:
            raise TrainingError(f"--config {known.config}: not a training configuration "
                                f"({err})") from None
    return PRESETS[known.preset], known.preset


def config_from_args(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if getattr(args, f.name) is not None}
    return (base or PRESETS[args.preset]).replace(**overrides)
