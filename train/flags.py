"""The command line of `python -m train.multitask`: one flag per `TrainConfig` field, defaulting
to the preset's (or the `--config` file's) value; and what it checks before any work (an `--out`
that holds a run, a CPU where `--no-allow-cpu` asks for a GPU/TPU)."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from bert_jax.checkpoints import RunCheckpoints, read_json
from bert_jax.cli import prog
from bert_jax.task_file import read_tasks_file
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
    return "none" if value == "" else str(value)


def field_help(field: dataclasses.Field, default) -> str:
    """A field's help with its default, `(default X)`, unless the help says its own default."""
    text = field.metadata["help"]
    return text if "(default" in text else f"{text} (default {shown_default(default)})"


def build_parser(base: TrainConfig | None = None, base_name: str = "more-epochs"
                 ) -> argparse.ArgumentParser:
    """The command line: one flag per `TrainConfig` field (its help from the field), each
    defaulting to `base`'s value (the preset, or the `--config` file), shown in `--help`."""
    base = base or PRESETS[base_name]
    parser = argparse.ArgumentParser(
        prog=prog("train.multitask"),
        description="Fine-tune BERT on SST-5, Quora paraphrase and STS (and your own tasks: "
                    "--tasks-file), with dev evaluation, checkpoints and resume. A preset (or "
                    "--config) gives every setting; each flag below overrides one.")
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
    parser.add_argument("--allow-cpu", action=argparse.BooleanOptionalAction, default=None,
                        help="run where JAX has only the CPU (default yes); --no-allow-cpu "
                             "refuses to start there, as `make train-full` does: a full run "
                             "takes many hours on a CPU")
    group = parser.add_argument_group(f"settings (each defaults to {base_name}'s value)")
    for field in dataclasses.fields(TrainConfig):
        if field.metadata.get("cli") is False:
            continue
        flag = "--" + field.name.replace("_", "-")
        default = getattr(base, field.name)
        kwargs = {"default": None, "help": field_help(field, default)}
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


def config_from_args(args: argparse.Namespace, base: TrainConfig | None = None,
                     out: Path | None = None) -> TrainConfig:
    """The run's settings: `base` with the flags given. `--tasks-file` adds its definitions
    (and, without `--tasks`, their names to the tasks trained); a `--resume` without it takes
    them from the run's train_config.json in `out`."""
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if f.metadata.get("cli") is not False and getattr(args, f.name) is not None}
    base = base or PRESETS[args.preset]
    if args.tasks_file:
        user = read_tasks_file(args.tasks_file)
        overrides["user_tasks"] = user
        if args.tasks is None:
            overrides["tasks"] = base.tasks + tuple(t.name for t in user
                                                    if t.name not in base.tasks)
    elif args.resume and out is not None and (out / "train_config.json").is_file():
        saved = read_json(out / "train_config.json")
        if saved.get("user_tasks"):
            saved_cfg = TrainConfig.from_dict(saved)
            overrides["user_tasks"] = saved_cfg.user_tasks
            overrides.setdefault("tasks_file", saved_cfg.tasks_file)
            if args.tasks is None:
                overrides["tasks"] = saved_cfg.tasks
    return base.replace(**overrides)


def changed_settings(cfg: TrainConfig, base: TrainConfig) -> dict:
    """The settings of `cfg` that differ from `base` (the preset or `--config` file)."""
    now, before = cfg.to_dict(), base.to_dict()
    for d in (now, before):  # a task's name says enough here; train_config.json has the rest
        d["user_tasks"] = [t["name"] for t in d["user_tasks"]]
    return {k: v for k, v in now.items() if before.get(k) != v}


def check_new_run(out: Path, resume: bool) -> None:
    """Refuse, before any work, an `out` whose last/ holds a checkpoint when `resume` is off:
    continuing it, writing elsewhere or starting over is the user's choice."""
    if resume:
        return
    checkpoints = RunCheckpoints(out, read_only=True)
    try:
        step = checkpoints.latest_step("last")
    finally:
        checkpoints.close()
    if step is not None:
        raise TrainingError(
            f"{out} already holds a run (its last/ checkpoint is at step {step}): pass --resume "
            f"to continue it (make train ARGS=--resume), another --out for a new run (make train "
            f"OUT=checkpoints/NAME), or delete {out} to start over")


def check_backend(allow_cpu: bool | None, backend: str, total_steps_hint: str) -> None:
    """Refuse to start on the CPU under --no-allow-cpu (`allow_cpu` False; None: the flag not
    given, allowed); `total_steps_hint`: the run's length, said in the message ("10 epochs")."""
    if backend == "cpu" and allow_cpu is False:
        raise TrainingError(
            f"JAX runs on the CPU here (no usable GPU/TPU), where this run ({total_steps_hint}) "
            "takes many hours: pass --allow-cpu to run it anyway (make train-full ALLOW_CPU=1), "
            "install the GPU build (make install ACCEL=cuda), or run the short `make train`")
