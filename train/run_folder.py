"""What a run folder holds over time, beside the checkpoints: its JSON-lines logs (appended by
the first process, cut back to a checkpoint's step on resume) and the checks that a resumed
run is the run the folder holds."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import jax
import numpy as np

from bert_jax.config import BertConfig
from bert_jax.checkpoints import read_json
from bert_jax.errors import OutputExistsError
from bert_jax.outputs import check_new_run_folder, check_writable_folder
from bert_jax.plots import read_jsonl
from bert_jax.tokenizer import Tokenizer
from train.config import RESUMABLE_CHANGES, TrainConfig
from train.errors import TrainingError

log = logging.getLogger("train.multitask")
DATA_FILE = "data.json"  # fingerprints of the training data, checked by --resume
DEV_LOG_KEYS = ("step", "overall")  # what --resume reads of every line of metrics.jsonl


def write_json_line(path: Path, record: dict) -> None:
    if jax.process_index() != 0:  # a multi-process run: the first process writes the logs
        return
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def keep_log_until(path: Path, step: int, keys: tuple[str, ...] = ("step",)) -> list[dict]:
    """Rewrite a JSON-lines log keeping only records of steps <= `step` (a resumed run writes
    the later ones again; a last line cut short by a kill is dropped with a warning); returns
    the records kept. A damaged line elsewhere, or one without a number for each of `keys`,
    stops the run (`LogError`, naming the file and the line)."""
    if not path.exists():
        return []
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    kept = [r for r in read_jsonl(path, keys) if r["step"] <= step]
    if len(kept) != len(lines) and jax.process_index() == 0:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, path)
    return kept


def check_resume_config(run_dir: Path, cfg: TrainConfig) -> None:
    saved_path = run_dir / "train_config.json"
    if not saved_path.exists():
        if (run_dir / "last").is_dir() and any((run_dir / "last").iterdir()):
            # Written before the first checkpoint: missing, it was removed, and nothing says
            # which settings the checkpoints were trained with.
            raise TrainingError(
                f"{saved_path}: missing, so --resume cannot check that the settings are the "
                "run's (batch size, max length, data, ...). Restore the file, or start a new "
                "run in another --out")
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


def _fingerprint(data) -> str:
    """sha256 of a task's training examples as the run reads them: ids, token ids, labels."""
    h = hashlib.sha256()
    h.update("\n".join(data.example_ids).encode("utf-8", "surrogateescape"))
    for rows in (data.ids1, data.ids2 or []):
        h.update(np.array([len(r) for r in rows], np.int64).tobytes())
        h.update(np.concatenate(rows).astype(np.int32).tobytes() if len(rows) else b"")
    if data.labels is not None:
        h.update(np.asarray(data.labels).tobytes())
    return h.hexdigest()


def data_fingerprints(train: dict) -> dict[str, dict]:
    """{task: {"examples", "sha256", "source"}} of a run's training data (`RunData.train`)."""
    return {task: {"examples": len(d), "sha256": _fingerprint(d), "source": d.source}
            for task, d in sorted(train.items())}


def record_data(out_dir: Path, train: dict) -> None:
    """Write `out_dir/data.json`: what `check_resume_data` compares a resume with."""
    if jax.process_index() == 0:
        (out_dir / DATA_FILE).write_text(json.dumps(data_fingerprints(train), indent=2) + "\n")


def check_resume_data(out_dir: Path, train: dict) -> None:
    """Refuse a --resume whose training data (sentences, labels, ids) differ from the run's:
    the data order and the checkpoint's step would no longer mean what they did. A run folder
    from before data.json existed is resumed with a warning."""
    path = out_dir / DATA_FILE
    if not path.exists():
        log.warning("%s: missing (a run from an older version?): the training data cannot be "
                    "checked against the run's; it is recorded now", path)
        return
    try:
        saved = read_json(path)
    except (TypeError, ValueError) as err:
        raise TrainingError(f"{path}: damaged ({err}). Restore it, or start a new run in "
                            "another --out") from None
    now = data_fingerprints(train)
    changed = [t for t in sorted(set(saved) | set(now))
               if not isinstance(saved.get(t), dict)
               or (saved[t].get("sha256"), saved[t].get("examples"))
               != (now.get(t, {}).get("sha256"), now.get(t, {}).get("examples"))]
    if changed:
        detail = "; ".join(
            f"{t}: {saved.get(t, {}).get('examples', 'no')} examples from "
            f"{saved.get(t, {}).get('source') or '?'} in the run, now "
            f"{now.get(t, {}).get('examples', 'no')} from {now.get(t, {}).get('source') or '?'}"
            for t in changed)
        raise TrainingError(
            f"{out_dir}: --resume with other training data than the run's ({detail}; other "
            "sentences, labels or ids): its checkpoints were trained on the data in "
            f"{path}. Resume with that data, or start a new run in another --out")


def final_scores(records: list[dict], step: int) -> dict:
    """The dev scores of the evaluation at `step` in `records` (metrics.jsonl), or {}: what a
    resumed run that had nothing left to do reports as its scores."""
    for record in reversed(records):
        if record.get("step") == step:
            return {k: v for k, v in record.items() if k == "overall" or k.endswith(("_acc", "_r"))}
    return {}


def check_run_folder(out_dir: Path, resume: bool) -> None:
    """Refuse an --out that is not a new or empty folder nor a run folder (see
    `bert_jax.outputs.check_new_run_folder`): a training replaces the files it writes there."""
    try:
        check_new_run_folder(out_dir, resume)
    except OutputExistsError as err:
        raise TrainingError(str(err)) from None
    check_writable_folder(out_dir, "--out")

