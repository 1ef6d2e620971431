"""Predict with a trained model: `python -m bert_jax.predict RUN --task NAME --input FILE`.

NAME is any task of the run: the built-in sst, para or sts, or a task the run defined itself
(`--tasks-file` of `train.multitask`; the run folder, or its export, holds the definition).

Input forms (`--format`, default auto):
- table: a header naming the task's id column (`id`; none for a task numbering its rows) and
  sentence columns (its `text`: `sentence` for sst, `sentence1` and `sentence2` for para/sts),
  tab- or comma-separated; other columns (labels, the unnamed index) are ignored; a row with an
  unbalanced double quote, or with more or fewer fields than the header, is an error naming its
  line (every id gets its prediction, or none);
- lines: one sentence per line for a single-sentence task, two tab-separated sentences per line
  for a pair task (blank lines are skipped; no header);
- auto: a table when the first non-blank line has two or more fields (split at tabs, else at
  commas) and one of them is a column name of the task or of the CS224N files (`id`,
  `sentence`, `sentence1`, ...); lines otherwise. So a first line of one field (`sentence`) is
  a sentence; a plain first line that looks like a header (`sentence1<TAB>sentence2`) needs
  `--format lines`;
- `--input -` reads either form from stdin.

Output (stdout, or --output FILE): CSV with `id` (the ids of the table's id column) or `line`
(the 1-based input line number: plain lines, or a table of a task without an id column) and
`prediction`: the label value (as the task's classes: sst 0..4, para 0/1, a string class) or
the score (sts 0..5); then for more than two classes one probability per class, `p<class>` in
class order (`p0`..`p4` for sst; `p_<class>` for string classes), for two classes
`probability` (of the second class: para's 1). FILE is a new file or an earlier prediction
file of this tool; any other file only with --overwrite; never the input, nor a file inside a
run or data folder. Exit status 2 for a bad checkpoint, task or input, with a message.
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import sys
from pathlib import Path

import numpy as np

from bert_jax.api import MultitaskModel
from bert_jax.checkpoints import CheckpointError
from bert_jax.cli import output_file, positive_int, prog
from bert_jax.cs224n import DataError, iter_records
from bert_jax.errors import BertJaxError, MissingFileError
from bert_jax.export import HEADS_CONFIG, is_export
from bert_jax.inference import class_probabilities, class_values, to_predictions
from bert_jax.outputs import OutputFile, check_output_file, check_writable_folder
from bert_jax.pretrained import is_default_name
from bert_jax.tasks import BUILTINS, Task, as_task

_KNOWN_COLUMNS = {"id"} | {c for t in BUILTINS.values() for c in t.text + (t.label,)}


# An earlier --output of this tool starts with its header (replaced without --overwrite).
PREDICTIONS = OutputFile("bert_jax.predict --output", lambda head: head.startswith(
    ("id,prediction", "line,prediction")))


class InputError(BertJaxError, ValueError):
    """Unusable input: the message says what is wrong and where."""


def _looks_like_header(fields: list[str], task: Task) -> bool:
    known = (_KNOWN_COLUMNS | set(task.text) | {task.id, task.label}) - {""}
    return bool({f.strip() for f in fields} & known)


def parse_input(text: str, task: Task | str, source: str = "input", form: str = "auto"
                ) -> tuple[str, list[str], list[list[str]]]:
    """(id column name, ids, sentence columns) from the text of an input file, read as `form`
    ("table", "lines", or "auto": see the module's docstring), for `task` (a definition, or a
    built-in's name).

    ids: one string per example ("id": the task's id column of a header, else "line"
    numbers); columns: one list of sentences (a single-sentence task) or two (a pair task),
    each as long as ids. Raises InputError.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    task = as_task(task)
    want = task.text
    id_column = (task.id,) if task.id else ()
    # Lines end at \n, \r\n or \r only: str.splitlines() would also split at Unicode line
    # separators inside a sentence and shift every later line number (the ids).
    lines = re.split(r"\r\n|\r|\n", text)
    first = next((ln for ln in lines if ln.strip()), None)
    if first is None:
        raise InputError(f"{source}: empty input: no sentences")
    for delimiter in ("\t", ",") if form != "lines" else ():
        try:
            header = next(csv.reader([first], delimiter=delimiter))
        except csv.Error:  # a field over csv's size limit: no header
            header = [first]
        if form == "auto" and (len(header) < 2 or not _looks_like_header(header, task)):
            continue
        names = [h.strip() for h in header]
        missing = [c for c in id_column + want if c not in names]
        if missing:
            if delimiter == "\t" and "\t" not in first or delimiter == "," and "\t" in first:
                continue  # a table's separator: the tab when the first line has one
            raise InputError(
                f"{source}: the header has no column{'s' if len(missing) > 1 else ''} "
                f"{', '.join(missing)} (task {task.name!r} needs "
                f"{', '.join(id_column + want)}; the header has "
                f"{', '.join(repr(h) for h in names)}). Use the {_file_kind(task)} of this task, "
                "or pass --format lines if that first line is a sentence")
        return ("id" if task.id else "line"), *_read_table(text, delimiter, task, source)
    if form == "table":
        raise InputError(f"{source}: --format table, but the first line has no header naming "
                         f"{', '.join(id_column + want)}. Use the {_file_kind(task)} of this "
                         "task, or pass --format lines")
    ids, columns = [], [[] for _ in want]
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split("\t") if len(want) == 2 else [line]
        if len(fields) != len(want):
            raise InputError(
                f"{source}, line {number}: {len(fields)} tab-separated field"
                f"{'s' if len(fields) != 1 else ''}; task {task.name!r} takes two sentences "
                "per line separated by one tab")
        if any(not f.strip() for f in fields):
            raise InputError(f"{source}, line {number}: an empty sentence")
        ids.append(str(number))
        for col, f in zip(columns, fields):
            col.append(f)
    return "line", ids, columns


def _file_kind(task: Task) -> str:
    return "CS224N file" if task.name in BUILTINS else "data file"


def _read_table(text: str, delimiter: str, task: Task, source: str):
    """(ids, sentence columns) of a table with a header, read as the CS224N loader reads a file
    (`iter_records`): a row with an unbalanced quote, or with more or fewer fields than the
    header, is an InputError naming its line (never merged with others, never cut short). The
    ids are the task's id column, or the rows' line numbers for a task without one."""
    want = task.text
    try:
        header, records = iter_records(Path(source), text, delimiter)
        names = [h.strip() for h in header]
        pos = {name: i for i, name in enumerate(names)}  # a repeated name: its last position
        ids, columns = [], [[] for _ in want]
        for line, _, row, problem in records:
            where = f"{source}, line {line}"
            if problem:
                raise InputError(f"{where}: {problem}. Fix that row (its quoting, or its "
                                 "length), or remove it")
            if len(row) != len(names):
                raise InputError(
                    f"{where}: {len(row)} field{'s' if len(row) != 1 else ''}, the header has "
                    f"{len(names)} ({', '.join(names)}): "
                    + ("a separator inside a sentence? Quote that sentence"
                       if len(row) > len(names) else "too few fields for the header"))
            values = [row[pos[task.id]] if task.id else str(line)] + [row[pos[c]]
                                                                      for c in want]
            if any(not v.strip() for v in values):
                raise InputError(f"{where}: empty id or sentence")
            ids.append(values[0].strip())
            for col, v in zip(columns, values[1:]):
                col.append(v)
    except DataError as err:  # a row csv cannot parse
        raise InputError(str(err)) from None
    if not ids:
        raise InputError(f"{source}: a header but no rows")
    return ids, columns


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def load_model(ckpt: str, which: str = "best", **kwargs):
    """A run folder -> `MultitaskModel.load`; a model name or converted/HF folder ->
    `MultitaskModel.from_pretrained` (fresh heads)."""
    path = Path(ckpt)
    if (path / "train_config.json").is_file() or (is_export(path)
                                                    and (path / HEADS_CONFIG).is_file()):
        return MultitaskModel.load(path, which, **kwargs)  # trained heads: a run or its export
    if is_default_name(ckpt) or (path / "config.json").is_file():
        return MultitaskModel.from_pretrained(ckpt, **kwargs)
    if not path.exists():
        raise MissingFileError(f"{ckpt}: no such run folder. Pass the --out folder of "
                               "`python -m train.multitask`, or 'all-MiniLM-L6-v2'")
    raise MissingFileError(f"{ckpt}: not a training run folder (no train_config.json) nor a "
                           "model folder (no config.json)")


def probability_columns(task: Task) -> list[str]:
    """The probability columns of `task`'s predictions: `p<class>` per class for more than two
    (`p0`..`p4` for sst; `p_<class>` when the classes are not whole numbers), `probability`
    (of the second class) for two, none for a score."""
    if not task.is_classification:
        return []
    if task.num_outputs == 1:
        return ["probability"]
    numbers = all(isinstance(c, int) and not isinstance(c, bool) for c in task.classes)
    return [f"p{c}" if numbers else f"p_{c}" for c in task.classes]


def write_csv(out, id_name: str, ids: list[str], task: Task | str, outputs: np.ndarray) -> None:
    """CSV rows for raw head outputs of `task` (logits [n, K], one logit [n], scores [n]): the
    label value or score, then the probabilities (`probability_columns`)."""
    task = as_task(task)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([id_name, "prediction"] + probability_columns(task))
    if not task.is_classification:
        for i, s in zip(ids, outputs):
            writer.writerow([i, f"{float(s):.6f}"])
        return
    values = class_values(task, to_predictions(task, outputs))
    probs = class_probabilities(task, outputs)
    if task.num_outputs == 1:  # two classes: the second's probability
        probs = probs[:, 1:]
    for i, value, p in zip(ids, values, probs):
        writer.writerow([i, value] + [f"{x:.6f}" for x in p])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog("bert_jax.predict"), description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt", metavar="RUN",
                        help="a run folder of `python -m train.multitask` (e.g. "
                             "checkpoints/concat), or 'all-MiniLM-L6-v2' / a converted model "
                             "folder (untrained heads: only sts with the cosine head is "
                             "meaningful)")
    parser.add_argument("--task", required=True, metavar="NAME",
                        help="any task of the run: sst (sentiment 0..4), para (paraphrase "
                             "0/1), sts (similarity 0..5), or a task the run defined itself "
                             "(its --tasks-file): prediction = its label value or score")
    parser.add_argument("--input", required=True, metavar="FILE",
                        help="CS224N CSV/TSV (or a table with the task's id and sentence "
                             "columns), or plain lines; '-' reads stdin")
    parser.add_argument("--format", choices=("auto", "table", "lines"), default="auto",
                        help="the input's form: a CS224N table with a header, plain lines "
                             "(no header), or auto: a table when the first line has two or "
                             "more tab- or comma-separated fields, one a CS224N column name "
                             "(default auto)")
    parser.add_argument("--output", metavar="FILE", type=output_file,
                        help="write the CSV here (default stdout)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --output file that is not an earlier "
                             "prediction file of this tool (never one inside a run or data "
                             "folder, nor the input)")
    parser.add_argument("--which", choices=("best", "last"), default="best",
                        help="checkpoint of a run folder (default best)")
    parser.add_argument("--batch-size", type=positive_int, default=32,
                        help="examples per batch (default 32)")
    parser.add_argument("--max-length", type=positive_int, default=None,
                        help="tokens per sentence (default the run's training max_length, "
                             "else 128)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.input == "-":
            # bytes, so that text which is not UTF-8 gets the same clear error as a file
            stdin = getattr(sys.stdin, "buffer", None)
            raw = stdin.read() if stdin is not None else sys.stdin.read().encode("utf-8")
            source = "stdin"
        else:
            path = Path(args.input)
            if not path.is_file():
                raise InputError(f"{path}: no such file")
            if args.output and _same_file(path, Path(args.output)):
                raise InputError(f"--output {args.output} is the input file: writing the "
                                 "predictions would replace it. Pass another --output")
            source = str(path)
            try:
                raw = path.read_bytes()
            except OSError as err:  # unreadable: permissions, a folder, ...
                raise InputError(f"{path}: cannot read it ({err.strerror})") from None
        if args.output:
            check_output_file(args.output, PREDICTIONS, overwrite=args.overwrite,
                              protected=[] if args.input == "-" else [args.input])
            check_writable_folder(Path(args.output).parent, "--output", args.output)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise InputError(f"{source}: not UTF-8 text ({err.reason} at byte {err.start}). "
                             "Re-save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)") from None
        if args.task in BUILTINS:  # a built-in's columns are known before loading the model
            parse_input(text, args.task, source, args.format)
        kwargs = {"batch_size": args.batch_size}
        if args.max_length:
            kwargs["max_length"] = args.max_length
        try:
            model = load_model(args.ckpt, args.which, **kwargs)
        except CheckpointError as err:
            raise InputError(str(err)) from None
        if args.task not in model.heads.names:
            raise InputError(f"--task {args.task}: {args.ckpt} has no such task; its tasks are "
                             f"{', '.join(model.heads.names)}")
        task = model.task(args.task)
        id_name, ids, columns = parse_input(text, task, source, args.format)
        if not model.heads_trained and task.head != "cosine":
            print(f"warning: {args.ckpt} has an untrained {task.name} head: these predictions "
                  "are random. Fine-tune with `python -m train.multitask` first (only sts with "
                  "the cosine head works zero-shot)", file=sys.stderr)
        outputs = model.raw_outputs(task, *columns)
        if args.output:
            out = Path(args.output)
            tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
            try:  # written whole, then renamed: a failure never leaves half a file
                out.parent.mkdir(parents=True, exist_ok=True)
                with open(tmp, "w", newline="") as f:
                    write_csv(f, id_name, ids, task, outputs)
                os.replace(tmp, out)
            except OSError as err:  # permissions, a full disk, a folder in the way
                raise InputError(f"--output {out}: cannot write it ({err.strerror})") from None
            finally:
                try:
                    tmp.unlink(missing_ok=True)
                except OSError:  # never created: a folder that cannot be written
                    pass
            print(f"wrote {len(ids)} predictions to {out.resolve()}", file=sys.stderr)
        else:
            write_csv(sys.stdout, id_name, ids, task, outputs)
    except BertJaxError as err:  # InputError, CheckpointError, MissingFileError, ...
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
