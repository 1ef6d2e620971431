"""What a run folder holds over time, beside the checkpoints: its JSON-lines logs (appended by
the first process, cut back to a checkpoint's step on resume) and the checks that a resumed
run is the run the folder holds."""
from __future__ import annotations

import json
import os
from pathlib import Path

import jax

from bert_jax.config import BertConfig
from bert_jax.checkpoints import read_json
from bert_jax.tokenizer import Tokenizer
from train.config import RESUMABLE_CHANGES, TrainConfig
from train.errors import TrainingError


def write_json_line(path: Path, record: dict) -> None:
    if jax.process_index() != 0:  # a multi-process run: the first process writes the logs
        return
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def keep_log_until(path: Path, step: int) -> list[dict]:
    """Rewrite a JSON-lines log keeping only records of steps <= `step` (a resumed run writes
    the later ones again; a line cut short by a kill is dropped); returns the records kept."""
    lines = path.read_text().splitlines() if path.exists() else []
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", 0) <= step:
            kept.append(record)
    if len(kept) != len(lines) and jax.process_index() == 0:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, path)
    return kept


def check_resume_config(run_dir: Path, cfg: TrainConfig) -> None:
    saved_path = run_dir / "train_config.json"
    if not saved_path.exists():
        return
    try:
        saved = TrainConfig.from_dict(read_json(saved_path)).to_dict()
    except (TypeError, ValueError) as err:
        raise TrainingError(f"{saved_path}: not a training configuration this version can read "
                            f"({err}). Restore the file, or start a new run in another --out"
                            ) from None
    now = cfg.to_dict()
    # --linear-decay's schedule ends at the run's last step: its length may not change.
    schedule_bound = {"epochs", "max_steps"} if cfg.linear_decay else set()
    changed = {k: (saved[k], now[k]) for k in now if k in saved and saved[k] != now[k]
               and (k not in RESUMABLE_CHANGES or k in schedule_bound)}
    if changed:
        detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        why = (" (--linear-decay decays the learning rate to 0 at the run's last step, so "
               "--epochs and --max-steps must stay those of the run)"
               if schedule_bound & set(changed) else "")
        raise TrainingError(
            f"{saved_path}: --resume with a different configuration ({detail}){why}. Resume "
            "with the same flags, or start a new run in another --out folder")


def check_model_shapes(out_dir: Path, bert_config, tokenizer: Tokenizer, init: str,
                        resume: bool) -> None:
    """Refuse an --init whose shapes differ from the run being resumed, or from its own vocab."""
    if tokenizer.vocab_size > bert_config.vocab_size:
        raise TrainingError(
            f"--init {init}: vocab.txt has {tokenizer.vocab_size} tokens but the model's "
            f"vocab_size is {bert_config.vocab_size}; use the vocab.txt that came with the weights")
    saved_path = out_dir / "config.json"
    if resume and saved_path.exists():
        saved, now = BertConfig.from_json(saved_path).shape_dict(), bert_config.shape_dict()
        if saved != now:
            diff = {k: (saved[k], now[k]) for k in saved if saved[k] != now[k]}
            raise TrainingError(
                f"--init {init} does not match the model of the run being resumed "
                f"({saved_path}): " + ", ".join(f"{k} {a} in the run vs {b} in --init"
                                               for k, (a, b) in diff.items()))
