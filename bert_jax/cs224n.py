"""A task's files: parsing and validation, for the CS224N files and a user task's own.

The CS224N files are tab-separated, an unnamed row-index first column, double-quote quoting,
parsed exactly as `csv.DictReader(f, delimiter="\\t")` parses them; a user task's `.csv` (comma),
`.tsv` (tab) or `.jsonl` (one JSON object a line) are read the same way, their columns named by
the task's definition (`bert_jax.tasks.Task`). `load_split` returns a validated
`datasets.Dataset`. Bad rows raise `DataError` naming the file, the line and the fix, or are
skipped and listed (`skip_bad_rows=True`). Knows nothing of tokenizers, models or JAX.
"""
from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from bert_jax.errors import BertJaxError
from bert_jax.json_rows import iter_json_records
from bert_jax.labels import parse_label
from bert_jax.tasks import BUILTIN_NAMES, BUILTINS, SPLITS, Task, as_task

if TYPE_CHECKING:  # imported where a file is read: the task names need no `datasets` (1 s)
    import datasets

logger = logging.getLogger("bert_jax.data")

TASKS = BUILTIN_NAMES
_DEFAULT_FILES = {(t.name, split): name for t in BUILTINS.values() for split, name in t.files}
SKIP_HINT = "Fix or delete the row, or pass skip_bad_rows=True (--skip-bad-rows) to skip bad rows"


class DataError(BertJaxError, ValueError):
    """Bad input data. The message names the file, the line (1-based, header = line 1), the
    problem and what to do about it."""


def data_error(path, line: int | None, problem: str, hint: str) -> DataError:
    where = f"{path}" if line is None else f"{path}, line {line}"
    return DataError(f"{where}: {problem}. {hint}")


def default_file(task: Task | str, split: str) -> str | None:
    """The file of `task`'s `split` ("train", "dev", "test"): a built-in's CS224N file name, a
    user task's path; None if there is none (para has no test file)."""
    task = as_task(task)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    return task.file(split)


def find_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data folder: `data_dir` if given; else `data/` if it exists, else `../shared/data`
    (both relative to the current working directory)."""
    if data_dir is not None:
        folder = Path(data_dir)
        if not folder.is_dir():
            raise DataError(f"{folder}: no such folder. Pass --data-dir (data_dir=) a folder "
                            f"holding the CS224N files ({', '.join(sorted(set(_DEFAULT_FILES.values())))})")
        return folder
    for folder in (Path("data"), Path("..") / "shared" / "data"):
        if folder.is_dir():
            return folder
    raise DataError(f"no data folder: neither data/ nor ../shared/data exists under {Path.cwd()}. "
                    "Pass --data-dir (data_dir=) the folder holding the CS224N files "
                    "(ids-sst-train.csv, quora-train.csv, sts-train.csv, ...)")



# ----------------------------------------------------------------------------------- loading

def _read_text(path: Path) -> str:
    """The file decoded as UTF-8 (a leading BOM dropped); bytes that are not UTF-8 become lone
    surrogates (surrogateescape) so that the row holding them can be named or skipped."""
    if not path.exists():
        raise data_error(path, None, "no such file",
                   "Check the path, or pass --data-dir (data_dir=) the folder holding the CS224N files")
    if not path.is_file():
        raise data_error(path, None, "not a file", "Pass the path of a .csv file")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise data_error(path, None, f"cannot read the file ({err.strerror or err})",
                   "Check its permissions (e.g. `chmod a+r FILE`) or copy it somewhere readable"
                   ) from None
    if not raw:
        raise data_error(path, None, "empty file (0 bytes): no header and no rows",
                   "Pass a non-empty tab-separated file with a header line")
    text = raw.decode("utf-8", errors="surrogateescape")
    return text[1:] if text.startswith("\ufeff") else text


def _bad_bytes(fields: Sequence[str]) -> str | None:
    for field in fields:
        for ch in field:
            if "\udc80" <= ch <= "\udcff":
                return f"0x{ord(ch) - 0xdc00:02x}"
    return None


_NOT_UTF8_HINT = ("Re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv`)")


class _Lines:
    """The physical lines of a text (each with its line break) for `csv.reader`, with the
    number of the line read last and a way to go back: after a record that swallowed lines,
    reading resumes at the line after the one that opened it."""

    def __init__(self, text: str):
        self.lines = io.StringIO(text, newline="").readlines()
        self.pos = 0  # lines handed out so far = the 1-based number of the last one

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if self.pos >= len(self.lines):
            raise StopIteration
        self.pos += 1
        return self.lines[self.pos - 1]


_QUOTE_PROBLEM = ("an unbalanced double quote: a field starts with \" and does not end with one "
                  "on this line (quotes inside a field are doubled)")


def iter_records(path: Path, text: str, delimiter: str = "\t"):
    """(header, iterator of (line, end, fields, problem)), parsed as csv.DictReader does, one
    physical line per record: a record that would span lines (a double quote opened and closed
    lines later, or never; a field holding a line break or a tab) is an unbalanced quote. Its
    first line comes back alone with the quote read as a plain character and `problem` set; the
    lines it would have swallowed are read again as rows of their own. `end` is the last line
    of the record (= line but for a record csv itself reads over several lines, which never
    comes back: reading restarts after `line`)."""
    lines = _Lines(text)
    reader = csv.reader(lines, delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:  # pragma: no cover - empty text is caught earlier
        header = None
    except csv.Error as e:
        raise data_error(path, lines.pos, f"cannot parse the header ({e})",
                   "Check the quoting of the header line") from None
    if header is not None and (lines.pos > 1 or _holds_break(header, delimiter)):
        raise data_error(path, 1, f"the header line {_QUOTE_PROBLEM}",
                         "Fix the quoting of the header line")

    def records():
        while True:
            start = lines.pos + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:  # a field over csv's size limit: one bad row, not the file
                lines.pos = start
                raw = lines.lines[start - 1].rstrip("\r\n")
                yield start, start, raw.split(delimiter), (
                    f"cannot parse the row ({e}): a field longer than "
                    f"{csv.field_size_limit()} characters, or a double quote never closed")
                continue
            if row == []:  # DictReader skips blank lines
                continue
            if lines.pos > start or _holds_break(row, delimiter):
                lines.pos = start  # read the swallowed lines again, as rows of their own
                raw = lines.lines[start - 1].rstrip("\r\n")
                yield start, start, next(csv.reader([raw], delimiter=delimiter,
                                                    quoting=csv.QUOTE_NONE)), _QUOTE_PROBLEM
                continue
            yield start, lines.pos, row, None

    return header, records()


def _holds_break(fields: Sequence[str], delimiter: str) -> bool:
    """A field holding a line break, or a tab in a tab-separated file: only a quote opened
    where it should not be puts one there (a quoted comma in a comma-separated file is fine)."""
    breaks = "\r\n\t" if delimiter == "\t" else "\r\n"
    return any(ch in field for field in fields for ch in breaks)


def _check_header(path: Path, header: list[str], task: Task, labeled: bool) -> dict[str, int]:
    """{column name: position} of a header that has the task's columns; else DataError. As
    DictReader does, a name that repeats maps to its last position."""
    bad = _bad_bytes(header)
    if bad:
        raise data_error(path, 1, f"the header has bytes that are not UTF-8 (byte {bad})",
                         _NOT_UTF8_HINT)
    if len(header) == 1 and "," in header[0] and task.name in BUILTINS:
        raise data_error(path, 1, "the file looks comma-separated; the CS224N files are "
                         "tab-separated",
                         "Save it with tabs between the columns (e.g. pandas `to_csv(sep='\\t')`)")
    label_col = task.label if labeled else None
    wanted = ((task.id,) if task.id else ()) + task.text + ((label_col,) if label_col else ())
    missing = [c for c in wanted if c not in header]
    if missing:
        hint = "Check that the file belongs to this task and is tab-separated"
        if task.name not in BUILTINS:
            hint = (f"Check the column names of task {task.name!r} in the task file (keys "
                    "text, label, id) and the file's separator")
        if missing == [label_col]:
            hint = ("An unlabeled (test) file? Pass labeled=False (split 'test') to load it "
                    "without labels")
        raise data_error(path, 1, f"missing column{'s' if len(missing) > 1 else ''} "
                   f"{', '.join(missing)} (task {task.name!r} expects {', '.join(wanted)}; "
                   f"the header has {', '.join(repr(h) for h in header) or 'no columns'})", hint)
    return {name: i for i, name in enumerate(header)}


def _row_shape_problem(row: list[str], header: list[str]) -> str | None:
    """What is wrong with a row's fields as such (their count, their bytes), or None."""
    n = len(header)
    if len(row) < n:
        return (f"{len(row)} field{'s' if len(row) != 1 else ''}, the header has {n} "
                f"({', '.join(repr(h) for h in header)})")
    if len(row) > n:
        return f"{len(row)} fields, the header has {n}: an unquoted tab inside a sentence?"
    if (b := _bad_bytes(row)) is not None:
        return f"bytes that are not UTF-8 (byte {b})"
    return None


def _parse_row(row: list[str], pos: dict[str, int], task: Task, first_line_of: dict[str, int],
               line: int) -> tuple[str, list[str], str | None]:
    """(id, sentences lowercased and stripped, problem or None) of a row whose fields have the
    header's shape (its label is read apart). A task without an id column takes the line
    number."""
    ex_id = row[pos[task.id]].strip() if task.id else str(line)
    sents = [row[pos[c]].lower().strip() for c in task.text]
    if not ex_id:
        return ex_id, sents, "the id is empty"
    if (empty := [c for c, s in zip(task.text, sents) if not s]):
        return ex_id, sents, f"{' and '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty"
    if ex_id in first_line_of:
        return ex_id, sents, f"duplicate id {ex_id!r} (first on line {first_line_of[ex_id]})"
    return ex_id, sents, None


def _to_dataset(task: Task, labeled: bool, ids, texts, labels, lines) -> datasets.Dataset:
    import datasets  # here, not at the top: `import bert_jax.api` needs no `datasets`
    columns: dict[str, list] = {"id": ids, "sentence1": texts[0]}
    features = {"id": datasets.Value("string"), "sentence1": datasets.Value("string")}
    if len(texts) == 2:
        columns["sentence2"] = texts[1]
        features["sentence2"] = datasets.Value("string")
    if labeled:
        columns["label"] = labels
        features["label"] = datasets.Value("int64" if task.is_classification else "float32")
    columns["line"] = lines
    features["line"] = datasets.Value("int64")
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def _delimiter(path: Path, task: Task) -> str:
    if task.delimiter:
        return task.delimiter
    return "," if path.suffix.lower() == ".csv" else "\t"  # the built-ins set their tab


def load_split_with_report(path: str | os.PathLike, task: Task | str, *, labeled: bool = True,
                           skip_bad_rows: bool = False
                           ) -> tuple[datasets.Dataset, list[tuple[int, str]]]:
    """Like `load_split`, and also the skipped rows as a list of (line, reason).

    Without `skip_bad_rows` the list is empty: the first bad row raises DataError.
    """
    task = as_task(task)
    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        header, records = iter_json_records(path, _read_text(path), task, labeled)
    else:
        header, records = iter_records(path, _read_text(path), _delimiter(path, task))
    header = header or []
    pos = _check_header(path, header, task, labeled)
    ids, lines, labels = [], [], []
    texts: list[list[str]] = [[] for _ in task.text]
    skipped: list[tuple[int, str]] = []
    first_line_of: dict[str, int] = {}
    for line, _, row, problem in records:
        problem = problem or _row_shape_problem(row, header)
        label, label_problem = None, False
        if problem is None:
            ex_id, sents, problem = _parse_row(row, pos, task, first_line_of, line)
        if problem is None and labeled:
            label, problem = parse_label(task, row[pos[task.label]])
            # A user task's label outside its classes or range is a mistake in its definition
            # as often as in the row: it stops even where bad rows are skipped.
            label_problem = problem is not None and task.name not in BUILTINS
        if problem is not None:
            if not skip_bad_rows or label_problem:
                hint = (_NOT_UTF8_HINT + " or pass skip_bad_rows=True (--skip-bad-rows)"
                        if problem.startswith("bytes") else SKIP_HINT)
                if label_problem:
                    hint = (f"Fix the row, or the classes or range of task {task.name!r} in its "
                            "task file")
                if task.name not in BUILTINS:
                    problem = f"task {task.name!r}: {problem}"
                raise data_error(path, line, problem, hint)
            skipped.append((line, problem))
            continue
        ids.append(ex_id)
        first_line_of[ex_id] = line
        lines.append(line)
        for col, s in zip(texts, sents):
            col.append(s)
        labels.append(label)
    if not ids:
        if skipped:
            raise data_error(path, None, f"no usable rows: all {len(skipped)} rows are bad (first: "
                       f"line {skipped[0][0]}: {skipped[0][1]})", "Check the file and its task")
        raise data_error(path, None, "no rows (only a header)", "Pass a file with at least one row")
    if skipped:
        shown = ", ".join(str(line) for line, _ in skipped[:10])
        logger.warning("%s: skipped %d bad row%s (line%s %s%s)", path, len(skipped),
                       "s" if len(skipped) > 1 else "", "s" if len(skipped) > 1 else "", shown,
                       ", ..." if len(skipped) > 10 else "")
    return _to_dataset(task, labeled, ids, texts, labels, lines), skipped


def load_split(path: str | os.PathLike, task: Task | str, *, labeled: bool = True,
               skip_bad_rows: bool = False, cache_dir=None) -> datasets.Dataset:
    """One task file as a `datasets.Dataset`, validated (`task`: a definition or a built-in name).

    Columns: `id` (str), `sentence1` (str, lowercased and stripped), `sentence2` (pair tasks),
    `label` (when `labeled`: int64 class index, float32 score) and
    `line` (int64, the first line of the row in the file). Bad rows raise DataError, or are
    skipped and counted in a warning on the `bert_jax.data` logger with `skip_bad_rows=True`.
    `cache_dir` is accepted for symmetry with `tokenize_split`; parsing is not cached (it takes
    well under a second per file).
    """
    return load_split_with_report(path, task, labeled=labeled, skip_bad_rows=skip_bad_rows)[0]



def read_id_lines(path: str | os.PathLike, task: Task | str | None = None
                  ) -> list[tuple[int, str]]:
    """(line, id) of every row, in file order, one per line as `load_split` reads it (a row
    with an unbalanced quote is its own row; no other validation): what a prediction file
    must account for, bad rows included. `task`: read as its definition says (separator,
    JSON lines, id column; no id column: the line number); default a CS224N file."""
    path = Path(path)
    task = as_task(task) if task is not None else None
    id_col = task.id if task is not None else "id"
    if task is not None and path.suffix.lower() == ".jsonl":
        header, records = iter_json_records(path, _read_text(path), task, False)
    else:
        header, records = iter_records(path, _read_text(path),
                                       _delimiter(path, task) if task is not None else "\t")
    if not id_col:
        return [(line, str(line)) for line, _, _, _ in records]
    pos = {name: i for i, name in enumerate(header or [])}
    if id_col not in pos:
        raise data_error(path, 1, f"no {id_col} column", "Pass a file of this task")
    return [(line, row[pos[id_col]].strip() if len(row) > pos[id_col] else "")
            for line, _, row, _ in records]


def read_ids(path: str | os.PathLike) -> list[str]:
    """Every row's id, in file order (see `read_id_lines`)."""
    return [ex_id for _, ex_id in read_id_lines(path)]
