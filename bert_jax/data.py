"""The three multitask splits: loading, validation, cached tokenization, length buckets, batches.

Knows nothing of models or JAX: numpy, `datasets` and the project's tokenizer only.

Pipeline: `load_split` (CSV -> `datasets.Dataset`, validated) -> `tokenize_split` (adds token ids,
cached on disk) -> `task_data` (numpy view) -> `epoch_order` + `make_batch` (padded batches).
`load_task` does the first three in one call.

Files are the Stanford CS224N minBERT ones: tab-separated, an unnamed row-index first column,
double-quote quoting, parsed exactly as `csv.DictReader(f, delimiter="\\t")` parses them.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import io
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Sequence

import datasets
import numpy as np

from bert_jax.errors import BertJaxError
from bert_jax.tokenizer import pad_ids

logger = logging.getLogger("bert_jax.data")

TASKS = ("sst", "para", "sts")
SPLITS = ("train", "dev", "test")

_DEFAULT_FILES = {
    ("sst", "train"): "ids-sst-train.csv",
    ("sst", "dev"): "ids-sst-dev.csv",
    ("sst", "test"): "ids-sst-test-student.csv",
    ("para", "train"): "quora-train.csv",
    ("para", "dev"): "quora-dev.csv",
    ("sts", "train"): "sts-train.csv",
    ("sts", "dev"): "sts-dev.csv",
    ("sts", "test"): "sts-test-student.csv",
}
# Columns by task: the sentence columns of the file and the label column.
_TEXT_COLUMNS = {"sst": ("sentence",), "para": ("sentence1", "sentence2"),
                 "sts": ("sentence1", "sentence2")}
_LABEL_COLUMN = {"sst": "sentiment", "para": "is_duplicate", "sts": "similarity"}
_SKIP_HINT = "Fix or delete the row, or pass skip_bad_rows=True (--skip-bad-rows) to skip bad rows"
_CACHE_VERSION = "1"


class DataError(BertJaxError, ValueError):
    """Bad input data. The message names the file, the line (1-based, header = line 1), the
    problem and what to do about it."""


def _err(path, line: int | None, problem: str, hint: str) -> DataError:
    where = f"{path}" if line is None else f"{path}, line {line}"
    return DataError(f"{where}: {problem}. {hint}")


def is_pair_task(task: str) -> bool:
    _check_task(task)
    return task != "sst"


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: expected one of {', '.join(TASKS)}")


def default_file(task: str, split: str) -> str | None:
    """The CS224N file name of `task`'s `split` ("train", "dev", "test"); None if there is none
    (para has no test file)."""
    _check_task(task)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    return _DEFAULT_FILES.get((task, split))


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
        raise _err(path, None, "no such file",
                   "Check the path, or pass --data-dir (data_dir=) the folder holding the CS224N files")
    if not path.is_file():
        raise _err(path, None, "not a file", "Pass the path of a .csv file")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise _err(path, None, f"cannot read the file ({err.strerror or err})",
                   "Check its permissions (e.g. `chmod a+r FILE`) or copy it somewhere readable"
                   ) from None
    if not raw:
        raise _err(path, None, "empty file (0 bytes): no header and no rows",
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


def _iter_records(path: Path, text: str):
    """(header, iterator of (first line of record, fields)), parsed as csv.DictReader does."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t")
    try:
        header = next(reader)
    except StopIteration:  # pragma: no cover - empty text is caught earlier
        header = None
    except csv.Error as e:
        raise _err(path, reader.line_num, f"cannot parse the header ({e})",
                   "Check the quoting of the header line") from None

    def records():
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise _err(path, start, f"cannot parse the row ({e})",
                           "Check the quoting: a field that starts with a double quote must end "
                           "with one, and quotes inside it are doubled") from None
            if row == []:  # DictReader skips blank lines
                continue
            yield start, reader.line_num, row

    return header, records()


_PLAIN_NUMBER = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?")


def _parse_label(task: str, value: str) -> tuple[Any, str | None]:
    """(label, None) or (None, what is wrong). A label is a plain decimal number (`3`, `1.0`,
    `4.25`; a sign and spaces around it allowed): no exponent, digit separator, `inf`/`nan` or
    non-ASCII digit, which `float()` would accept."""
    name = _LABEL_COLUMN[task]
    if value.strip() == "":
        return None, f"{name} is empty (the row has no label)"
    if not _PLAIN_NUMBER.fullmatch(value.strip(" ")):
        try:
            x = float(value)
        except ValueError:
            return None, f"{name} {value!r} is not a number"
        if not math.isfinite(x):
            return None, f"{name} is {value.strip()!r}: labels must be finite numbers"
        return None, f"{name} {value!r} is not a plain decimal number (like 3 or 1.0)"
    x = float(value)
    if not math.isfinite(x):
        return None, f"{name} is {value.strip()!r}: labels must be finite numbers"
    if task == "sst":
        if x != int(x) or not 0 <= x <= 4:
            return None, f"{name} {value!r} is not one of 0, 1, 2, 3, 4"
        return int(x), None
    if task == "para":
        if x not in (0.0, 1.0):
            return None, f"{name} {value!r} is not 0 or 1 (0.0 / 1.0)"
        return int(x), None
    if not 0.0 <= x <= 5.0:
        return None, f"{name} {value!r} is outside 0..5"
    return x, None


def load_split_with_report(path: str | os.PathLike, task: str, *, labeled: bool = True,
                           skip_bad_rows: bool = False
                           ) -> tuple[datasets.Dataset, list[tuple[int, str]]]:
    """Like `load_split`, and also the skipped rows as a list of (line, reason).

    Without `skip_bad_rows` the list is empty: the first bad row raises DataError.
    """
    _check_task(task)
    path = Path(path)
    text = _read_text(path)
    header, records = _iter_records(path, text)
    header = header or []
    bad = _bad_bytes(header)
    if bad:
        raise _err(path, 1, f"the header has bytes that are not UTF-8 (byte {bad})", _NOT_UTF8_HINT)
    if len(header) == 1 and "," in header[0]:
        raise _err(path, 1, "the file looks comma-separated; the CS224N files are tab-separated",
                   "Save it with tabs between the columns (e.g. pandas `to_csv(sep='\\t')`)")

    text_cols = _TEXT_COLUMNS[task]
    label_col = _LABEL_COLUMN[task] if labeled else None
    wanted = ("id",) + text_cols + ((label_col,) if label_col else ())
    missing = [c for c in wanted if c not in header]
    if missing:
        hint = "Check that the file belongs to this task and is tab-separated"
        if missing == [label_col]:
            hint = ("An unlabeled (test) file? Pass labeled=False (split 'test') to load it "
                    "without labels")
        raise _err(path, 1, f"missing column{'s' if len(missing) > 1 else ''} "
                   f"{', '.join(missing)} (task {task!r} expects {', '.join(wanted)}; "
                   f"the header has {', '.join(repr(h) for h in header) or 'no columns'})", hint)
    # DictReader maps each name to its last position when a name repeats.
    pos = {name: i for i, name in enumerate(header)}

    ids, lines, labels = [], [], []
    texts: list[list[str]] = [[] for _ in text_cols]
    skipped: list[tuple[int, str]] = []
    first_line_of: dict[str, int] = {}
    n_fields = len(header)
    for line, end, row in records:
        problem = None
        if end > line or any(ch in field for field in row for ch in "\t\r\n"):
            # csv joined physical lines into one record: a double quote opened and closed
            # lines later (or never), swallowing the rows in between. Every line is named.
            span = f"lines {line}-{end}" if end > line else f"line {line}"
            problem = (f"{span} were read as one row: a field holds a line break or tab, the "
                       "sign of an unbalanced double quote (a field that starts with \" must end "
                       "with one; quotes inside it are doubled)")
            if not skip_bad_rows:
                raise _err(path, line, problem, _SKIP_HINT)
            skipped.extend((n, problem) for n in range(line, end + 1))
            continue
        if len(row) < n_fields:
            problem = (f"{len(row)} field{'s' if len(row) != 1 else ''}, the header has "
                       f"{n_fields} ({', '.join(repr(h) for h in header)})")
        elif len(row) > n_fields:
            problem = (f"{len(row)} fields, the header has {n_fields}: an unquoted tab inside "
                       "a sentence?")
        elif (b := _bad_bytes(row)) is not None:
            problem = f"bytes that are not UTF-8 (byte {b})"
        if problem is None:
            ex_id = row[pos["id"]].strip()
            sents = [row[pos[c]].lower().strip() for c in text_cols]
            label = None
            if not ex_id:
                problem = "the id is empty"
            elif (empty := [c for c, s in zip(text_cols, sents) if not s]):
                problem = f"{' and '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty"
            elif ex_id in first_line_of:
                problem = f"duplicate id {ex_id!r} (first on line {first_line_of[ex_id]})"
            elif label_col is not None:
                label, problem = _parse_label(task, row[pos[label_col]])
        if problem is not None:
            if not skip_bad_rows:
                hint = _NOT_UTF8_HINT + " or pass skip_bad_rows=True (--skip-bad-rows)" \
                    if problem.startswith("bytes") else _SKIP_HINT
                raise _err(path, line, problem, hint)
            skipped.append((line, problem))
            continue
        ids.append(ex_id)
        first_line_of[ex_id] = line
        lines.append(line)
        for col, s in zip(texts, sents):
            col.append(s)
        if label_col is not None:
            labels.append(label)

    if not ids:
        if skipped:
            raise _err(path, None, f"no usable rows: all {len(skipped)} rows are bad (first: "
                       f"line {skipped[0][0]}: {skipped[0][1]})", "Check the file and its task")
        raise _err(path, None, "no rows (only a header)", "Pass a file with at least one row")

    columns: dict[str, list] = {"id": ids, "sentence1": texts[0]}
    features = {"id": datasets.Value("string"), "sentence1": datasets.Value("string")}
    if len(text_cols) == 2:
        columns["sentence2"] = texts[1]
        features["sentence2"] = datasets.Value("string")
    if label_col is not None:
        columns["label"] = labels
        features["label"] = datasets.Value("float32" if task == "sts" else "int64")
    columns["line"] = lines
    features["line"] = datasets.Value("int64")
    ds = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
    if skipped:
        shown = ", ".join(str(line) for line, _ in skipped[:10])
        logger.warning("%s: skipped %d bad row%s (line%s %s%s)", path, len(skipped),
                       "s" if len(skipped) > 1 else "", "s" if len(skipped) > 1 else "", shown,
                       ", ..." if len(skipped) > 10 else "")
    return ds, skipped


def load_split(path: str | os.PathLike, task: str, *, labeled: bool = True,
               skip_bad_rows: bool = False, cache_dir=None) -> datasets.Dataset:
    """One CS224N file as a `datasets.Dataset`, validated.

    Columns: `id` (str), `sentence1` (str, lowercased and stripped), `sentence2` (pair tasks),
    `label` (when `labeled`: int64 0..4 for sst, int64 0/1 for para, float32 0..5 for sts) and
    `line` (int64, the first line of the row in the file). Bad rows raise DataError, or are
    skipped and counted in a warning on the `bert_jax.data` logger with `skip_bad_rows=True`.
    `cache_dir` is accepted for symmetry with `tokenize_split`; parsing is not cached (it takes
    well under a second per file).
    """
    return load_split_with_report(path, task, labeled=labeled, skip_bad_rows=skip_bad_rows)[0]


# ------------------------------------------------------------------------------ tokenization

def default_cache_dir() -> Path:
    """`$BERT_JAX_CACHE/datasets`, or `~/.cache/bert_jax/datasets`."""
    root = os.environ.get("BERT_JAX_CACHE") or Path.home() / ".cache" / "bert_jax"
    return Path(root) / "datasets"


def _tokenizer_digest(tokenizer) -> str:
    h = hashlib.sha256()
    vocab_file = getattr(tokenizer, "vocab_file", None)
    if vocab_file is not None:
        h.update(Path(vocab_file).read_bytes())
    inner = getattr(tokenizer, "_tok", None)  # full tokenizers config: normaliser, model, template
    if inner is not None and hasattr(inner, "to_str"):
        config = json.loads(inner.to_str())
        for state in ("truncation", "padding"):  # per-call settings, not the tokenizer's identity
            config.pop(state, None)
        h.update(json.dumps(config, sort_keys=True).encode("utf-8"))
    if vocab_file is None and inner is None:
        raise ValueError("tokenize_split needs the project's Tokenizer (with vocab_file)")
    return h.hexdigest()


def _dataset_digest(ds: datasets.Dataset) -> str:
    h = hashlib.sha256()
    table = ds.with_format("arrow")[:]
    for name in sorted(table.column_names):
        h.update(name.encode() + b"\0")
        h.update(json.dumps(table.column(name).to_pylist(), ensure_ascii=False).encode(
            "utf-8", "surrogatepass"))
    return h.hexdigest()


def cache_key(ds: datasets.Dataset, tokenizer, max_length: int) -> str:
    """Hex digest of the dataset's content (all columns: what the source file and task gave),
    the tokenizer (vocab file bytes and settings) and `max_length`."""
    h = hashlib.sha256()
    for part in (_CACHE_VERSION, _dataset_digest(ds), _tokenizer_digest(tokenizer), str(max_length)):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


def _truncate(row: np.ndarray, max_length: int) -> np.ndarray:
    # Same as the tokenizer's own truncation of one sentence: keep [CLS] and the final [SEP].
    if len(row) <= max_length:
        return row
    return np.concatenate([row[:max_length - 1], row[-1:]])


def tokenize_split(ds: datasets.Dataset, tokenizer, max_length: int, *,
                   cache_dir: str | os.PathLike | None | bool = None) -> datasets.Dataset:
    """`ds` with token ids added via `Dataset.map(batched=True)`, cached on disk.

    Adds `ids1` (list of int32: [CLS] sentence1 [SEP], truncated to `max_length`) and `len1`
    (int32, the untruncated length); `ids2`/`len2` too for pair tasks. Each sentence is encoded
    on its own. The cache file `tokens-<key>.arrow` lives in `cache_dir` (default
    `default_cache_dir()`; False: no disk cache); the key hashes the dataset's content, the
    tokenizer and `max_length`, so a second call with the same inputs reuses it. Logs how many
    sentences were truncated (see `count_truncated`).
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 ([CLS] and [SEP]), not {max_length}")
    pair = "sentence2" in ds.column_names
    in_cols = ["sentence1", "sentence2"] if pair else ["sentence1"]
    features = ds.features.copy()
    for k in ("1", "2") if pair else ("1",):
        features["ids" + k] = datasets.List(datasets.Value("int32"))
        features["len" + k] = datasets.Value("int32")

    def encode(*cols):
        out = {}
        for k, texts in zip(("1", "2"), cols):
            full = tokenizer.encode_ids(list(texts), max_length=1_000_000)
            out["ids" + k] = [_truncate(r, max_length) for r in full]
            out["len" + k] = np.asarray([len(r) for r in full], np.int32)
        return out

    key = cache_key(ds, tokenizer, max_length)
    run = functools.partial(ds.map, encode, batched=True, input_columns=in_cols,
                            features=features, new_fingerprint=key[:40], desc="tokenizing")
    cache_file = None
    if cache_dir is not False:
        folder = Path(cache_dir) if cache_dir not in (None, True) else default_cache_dir()
        cache_file = _writable_cache_file(folder, f"tokens-{key[:40]}.arrow")
    if cache_file is None:
        out = run(keep_in_memory=True)
    else:
        try:
            out = run(cache_file_name=str(cache_file), load_from_cache_file=True)
            out.with_format("arrow")[:1]  # a damaged file fails here, not later in training
        except Exception as err:  # noqa: BLE001 - any unreadable cache: rebuild it once
            if not cache_file.exists():
                raise
            logger.warning("%s: the token cache is damaged (%s: %s); rebuilding it", cache_file,
                           type(err).__name__, str(err)[:200])
            cache_file.unlink()
            out = run(cache_file_name=str(cache_file), load_from_cache_file=False)
    n = count_truncated(out, max_length)
    if n:
        logger.warning("%d sentence%s longer than max_length=%d tokens truncated (of %d)", n,
                       "s" if n > 1 else "", max_length, len(out) * (2 if pair else 1))
    return out


def _writable_cache_file(folder: Path, name: str) -> Path | None:
    """`folder / name` when the folder can hold a cache file; else None (tokenize in memory)
    after a warning naming the folder and the fix (`BERT_JAX_CACHE`)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return folder / name
    except OSError as err:
        logger.warning("%s: cannot write the token cache there (%s); tokenizing in memory. Set "
                       "BERT_JAX_CACHE to a writable folder to cache it", folder,
                       err.strerror or err)
        return None


def count_truncated(ds: datasets.Dataset, max_length: int) -> int:
    """How many sentences of a tokenized dataset were longer than `max_length` tokens."""
    table = ds.with_format("arrow")[:]
    return int(sum((table.column(c).to_numpy() > max_length).sum()
                   for c in ("len1", "len2") if c in table.column_names))


# ------------------------------------------------------------------------------- numpy view

@dataclasses.dataclass
class TaskData:
    """A tokenized split as numpy, for the batcher.

    `ids1`/`ids2`: per example an unpadded int32 array of token ids; `labels`: [n] int32 (sst,
    para) or float32 (sts), None when unlabeled; `example_ids`: the file's ids; `truncated`:
    sentences cut to max_length.
    """

    task: str
    ids1: list[np.ndarray]
    ids2: list[np.ndarray] | None
    labels: np.ndarray | None
    example_ids: list[str]
    truncated: int = 0
    source: str = ""

    def __len__(self) -> int:
        return len(self.ids1)

    @functools.cached_property
    def lengths(self) -> np.ndarray:
        """[n] int32: token length of each example (the longer of the pair)."""
        n1 = np.fromiter((len(r) for r in self.ids1), np.int32, len(self.ids1))
        if self.ids2 is None:
            return n1
        return np.maximum(n1, np.fromiter((len(r) for r in self.ids2), np.int32, len(self.ids2)))

    @property
    def is_pair(self) -> bool:
        return self.ids2 is not None


def _ragged(column) -> list[np.ndarray]:
    arr = column.combine_chunks()
    offsets = arr.offsets.to_numpy()
    values = np.array(arr.values.to_numpy(zero_copy_only=False), np.int32)  # one writable copy
    return [values[offsets[i]:offsets[i + 1]] for i in range(len(arr))]


def task_data(ds: datasets.Dataset, task: str) -> TaskData:
    """Numpy view of a tokenized dataset (see `tokenize_split`)."""
    _check_task(task)
    table = ds.with_format("arrow")[:]
    if "ids1" not in table.column_names:
        raise ValueError("task_data needs a tokenized dataset: call tokenize_split first")
    pair = is_pair_task(task)
    if pair and "ids2" not in table.column_names:
        raise ValueError(f"task {task!r} is a pair task but the dataset has no ids2 column")
    labels = None
    if "label" in table.column_names:
        labels = table.column("label").to_numpy().astype(np.float32 if task == "sts" else np.int32)
    return TaskData(task=task, ids1=_ragged(table.column("ids1")),
                    ids2=_ragged(table.column("ids2")) if pair else None, labels=labels,
                    example_ids=table.column("id").to_pylist())


def load_task(data_dir_or_file: str | os.PathLike | None, task: str, split: str, tokenizer,
              max_length: int = 128, limit: int | None = None, skip_bad_rows: bool = False,
              cache_dir: str | os.PathLike | None | bool = None) -> TaskData:
    """Load, validate, tokenize (cached) and view one split in one call.

    `data_dir_or_file`: a CSV file, or a folder holding the CS224N file of (`task`, `split`), or
    None for `find_data_dir()`. The test split is loaded without labels. `limit`: keep the first
    `limit` rows.
    """
    _check_task(task)
    name = default_file(task, split)
    path = Path(data_dir_or_file) if data_dir_or_file is not None else find_data_dir()
    if path.is_dir():
        if name is None:
            raise DataError(f"{path}: task {task!r} has no {split} file (the CS224N data has no "
                            "Quora test split). Pass a file path instead")
        path = path / name
    ds, skipped = load_split_with_report(path, task, labeled=split != "test",
                                         skip_bad_rows=skip_bad_rows)
    if limit is not None and limit < len(ds):
        ds = ds.select(range(limit))
    tok = tokenize_split(ds, tokenizer, max_length, cache_dir=cache_dir)
    tok = _drop_empty_after_normalising(tok, path, skip_bad_rows)
    data = task_data(tok, task)
    data.truncated = count_truncated(tok, max_length)
    data.source = str(path)
    return data


def _drop_empty_after_normalising(tok: datasets.Dataset, path: Path, skip_bad_rows: bool
                                  ) -> datasets.Dataset:
    """Rows with a sentence that the tokenizer's normaliser empties (only control, format or
    combining characters: [CLS] [SEP] and nothing between) are bad rows: DataError naming the
    first, or skipped and listed with `skip_bad_rows`."""
    table = tok.with_format("arrow")[:]
    empty = np.zeros(len(tok), bool)
    for col in ("len1", "len2"):
        if col in table.column_names:
            empty |= table.column(col).to_numpy() <= 2
    if not empty.any():
        return tok
    lines = table.column("line").to_numpy()[empty].tolist()
    problem = "a sentence is empty once normalised (only control, format or accent characters)"
    if not skip_bad_rows:
        raise _err(path, lines[0], problem, _SKIP_HINT)
    if empty.all():
        raise _err(path, None, f"no usable rows: every sentence is empty once normalised "
                   f"(first: line {lines[0]})", "Check the file and its task")
    logger.warning("%s: skipped %d row%s whose sentence is empty once normalised (line%s %s)",
                   path, len(lines), "s" if len(lines) > 1 else "", "s" if len(lines) > 1 else "",
                   ", ".join(map(str, lines[:10])) + (", ..." if len(lines) > 10 else ""))
    return tok.select(np.flatnonzero(~empty))


# ----------------------------------------------------------------------------------- buckets

def _round_up(n: int, multiple: int) -> int:
    return -(-int(n) // multiple) * multiple


def choose_buckets(lengths, max_length: int, num_buckets: int = 4, multiple: int = 8
                   ) -> tuple[int, ...]:
    """At most `num_buckets` padded lengths, increasing multiples of `multiple`, the last >= the
    longest of `lengths` and <= `max_length` (it is `max_length` itself when rounding up would
    pass it). Chosen by dynamic programming to minimise the padding when each example is padded
    to its bucket (optimal, so at least as good as picking from length quantiles).
    """
    lengths = np.asarray(lengths, np.int64)
    if lengths.size == 0:
        raise ValueError("choose_buckets needs at least one length")
    if num_buckets < 1 or multiple < 1:
        raise ValueError("num_buckets and multiple must be positive")
    longest = int(lengths.max())
    if longest > max_length:
        raise ValueError(f"a length of {longest} is over max_length={max_length}: truncate first")
    top = min(_round_up(longest, multiple), max_length)
    cands = [c for c in range(multiple, top, multiple)] + [top]
    counts = np.bincount(np.searchsorted(cands, lengths), minlength=len(cands)).astype(np.int64)
    m = len(cands)
    prefix = np.concatenate([[0], np.cumsum(counts)])
    inf = np.iinfo(np.int64).max // 4
    # best[b][j]: least padded positions covering candidate intervals 0..j with b buckets, the
    # last of them at cands[j]; choice[b][j]: the start i of that last bucket's intervals.
    best = np.full((num_buckets + 1, m), inf, np.int64)
    choice = np.zeros((num_buckets + 1, m), np.int64)
    for j in range(m):
        best[1, j] = cands[j] * prefix[j + 1]
    for b in range(2, num_buckets + 1):
        for j in range(m):
            best[b, j], choice[b, j] = best[1, j], 0
            for i in range(1, j + 1):
                cost = best[b - 1, i - 1] + cands[j] * (prefix[j + 1] - prefix[i])
                if cost < best[b, j]:
                    best[b, j], choice[b, j] = cost, i
    b = int(np.argmin(best[1:, m - 1])) + 1  # fewest buckets reaching the least padding
    out, j = [], m - 1
    while b >= 1 and j >= 0:
        out.append(cands[j])
        i = int(choice[b, j]) if b > 1 else 0
        j, b = i - 1, b - 1
    used = [c for c in reversed(out)]
    # Drop buckets that no example lands in (they cost nothing but a compile), keep the top.
    idx = np.searchsorted(used, lengths)
    kept = [c for k, c in enumerate(used) if c == top or np.any(idx == k)]
    return tuple(int(c) for c in kept)


def bucket_length(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= n; ValueError when n is longer than every bucket."""
    for b in sorted(buckets):
        if b >= n:
            return int(b)
    raise ValueError(f"length {n} is longer than the largest bucket {max(buckets)}")


def padding_waste(lengths, buckets: Sequence[int]) -> float:
    """Fraction of padded positions when each example is padded to its bucket."""
    lengths = np.asarray(lengths, np.int64)
    b = np.asarray(sorted(buckets), np.int64)
    idx = np.searchsorted(b, lengths)
    if lengths.size and idx.max() >= len(b):
        raise ValueError(f"a length of {lengths.max()} is longer than the largest bucket {b[-1]}")
    padded = b[idx]
    total = padded.sum()
    return float((padded - lengths).sum() / total) if total else 0.0


# ----------------------------------------------------------------------------------- batches

def epoch_order(num_examples: int, batch_size: int, *, seed: int, epoch: int, lengths=None,
                drop_last: bool = True, sort_window: int = 0) -> np.ndarray:
    """Example indices of one epoch's batches: int64 [num_batches, batch_size].

    A permutation from `np.random.default_rng([seed, epoch])`, so deterministic in
    (seed, epoch). With `lengths` and `sort_window > 0`, examples are sorted by length within
    windows of `sort_window` batches and the batches are then shuffled, so each batch holds
    similar lengths. `drop_last=True` drops the remainder (chosen at random) so every batch is
    full; `drop_last=False` keeps it and fills the last batch's empty slots with -1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, not {batch_size}")
    rng = np.random.default_rng([int(seed), int(epoch)])
    perm = rng.permutation(num_examples)
    if drop_last:
        perm = perm[:(num_examples // batch_size) * batch_size]
    if lengths is not None and sort_window > 0:
        lengths = np.asarray(lengths)
        if len(lengths) != num_examples:
            raise ValueError(f"{len(lengths)} lengths for {num_examples} examples")
        w = sort_window * batch_size
        perm = np.concatenate([c[np.argsort(lengths[c], kind="stable")]
                               for c in np.split(perm, range(w, len(perm), w))]
                              ) if len(perm) else perm
    num_batches = -(-len(perm) // batch_size)
    out = np.full(num_batches * batch_size, -1, np.int64)
    out[:len(perm)] = perm
    out = out.reshape(num_batches, batch_size)
    if lengths is not None and sort_window > 0 and num_batches > 1:
        out = out[rng.permutation(num_batches)]
    return out


def batch_labels(data: TaskData, indices) -> np.ndarray:
    """The labels of examples `indices` ([B]): int32 for sst/para, float32 for sts."""
    return data.labels[np.asarray(indices)].astype(np.float32 if data.task == "sts" else np.int32)


def make_batch(data: TaskData, indices, length: int, pad_id: int = 0) -> dict[str, np.ndarray]:
    """Padded arrays for the examples `indices` ([B]): `input_ids_1`, `attention_mask_1` int32
    [B, length] (and `_2` for pair tasks); `labels` [B] (int32 for sst/para, float32 for sts)
    when labeled. Indices of -1 (the empty slots `epoch_order(drop_last=False)` leaves) repeat
    the batch's first example and add `valid` [B] bool, False there.
    """
    indices = np.asarray(indices, np.int64)
    valid = indices >= 0
    if not valid.any():
        raise ValueError("make_batch got no valid index")
    if np.any(indices >= len(data)):
        raise IndexError(f"index {indices.max()} out of range for {len(data)} examples")
    idx = np.where(valid, indices, indices[valid][0])
    batch = {}
    ids, mask = pad_ids([data.ids1[i] for i in idx], length, pad_id)
    batch["input_ids_1"], batch["attention_mask_1"] = ids, mask
    if data.ids2 is not None:
        ids, mask = pad_ids([data.ids2[i] for i in idx], length, pad_id)
        batch["input_ids_2"], batch["attention_mask_2"] = ids, mask
    if data.labels is not None:
        batch["labels"] = batch_labels(data, idx)
    if not valid.all():
        batch["valid"] = valid
    return batch
