"""bert_jax.cs224n: the real CS224N files load as csv.DictReader reads them and as their README
counts; each bad input raises DataError naming the file, the line and a fix, or is skipped and
listed with skip_bad_rows=True; a property test on random rows."""
from __future__ import annotations

import csv
import io
import logging
import math
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bert_jax import cs224n
from bert_jax.tasks import BUILTINS
from csv_files import HEADERS, SKIP_HINT, good_sst, raises, sst_file, write_tsv


# (file, task, labeled, rows in the README)
FILES = [
    ("ids-sst-train.csv", "sst", True, 8544),
    ("ids-sst-dev.csv", "sst", True, 1101),
    ("ids-sst-test-student.csv", "sst", False, 2210),
    ("quora-train.csv", "para", True, 13507),
    ("quora-dev.csv", "para", True, 20214),
    ("sts-train.csv", "sts", True, 6040),
    ("sts-dev.csv", "sts", True, 863),
    ("sts-test-student.csv", "sts", False, 1725),
]


# quora-dev.csv has two rows the loader rejects: no label (and, in the second, no sentence2).
KNOWN_BAD = {"quora-dev.csv": [2577, 14222]}


def _dictreader(path):
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        for row in reader:
            yield reader.line_num, row


@pytest.mark.parametrize("name,task,labeled,count", FILES, ids=[f[0] for f in FILES])
def test_load_matches_readme_and_dictreader(data_dir, name, task, labeled, count):
    ds, skipped = cs224n.load_split_with_report(data_dir / name, task, labeled=labeled,
                                                skip_bad_rows=True)
    assert [line for line, _ in skipped] == KNOWN_BAD.get(name, [])
    assert len(ds) + len(skipped) == count
    got = ds[:]
    expected = [(line, row) for line, row in _dictreader(data_dir / name)]
    assert len(expected) == count
    expected = [(line, row) for line, row in expected if line not in KNOWN_BAD.get(name, [])]
    assert got["line"] == [line for line, _ in expected]
    assert got["id"] == [row["id"].strip() for _, row in expected]
    text_cols = ["sentence"] if task == "sst" else ["sentence1", "sentence2"]
    for col, key in zip(text_cols, ["sentence1", "sentence2"]):
        assert got[key] == [row[col].lower().strip() for _, row in expected]
    if task == "sst":
        assert "sentence2" not in got
    if not labeled:
        assert "label" not in got
        return
    raw = [row[BUILTINS[task].label] for _, row in expected]
    if task == "sst":
        assert ds.features["label"].dtype == "int64"
        assert got["label"] == [int(x) for x in raw]
        assert set(got["label"]) == {0, 1, 2, 3, 4}
    elif task == "para":
        assert ds.features["label"].dtype == "int64"
        assert got["label"] == [int(float(x)) for x in raw]
        assert set(got["label"]) == {0, 1}
    else:
        assert ds.features["label"].dtype == "float32"
        np.testing.assert_array_equal(np.asarray(got["label"], np.float32),
                                      np.asarray([float(x) for x in raw], np.float32))
        assert 0 <= min(got["label"]) and max(got["label"]) <= 5


def test_quora_dev_strict_load_names_the_first_bad_row(data_dir):
    with pytest.raises(cs224n.DataError,
                       match=r"quora-dev\.csv, line 2577: is_duplicate is empty.*skip_bad_rows"):
        cs224n.load_split(data_dir / "quora-dev.csv", "para")


def test_sst_test_student_malformed_header(data_dir):
    with open(data_dir / "ids-sst-test-student.csv", encoding="utf-8") as f:
        assert f.readline().rstrip("\n").split("\t") == ["0", "", "id", "sentence"]
    ds = cs224n.load_split(data_dir / "ids-sst-test-student.csv", "sst", labeled=False)
    assert ds.column_names == ["id", "sentence1", "line"]
    assert ds[0] == {"id": "b7573736a6ddf7be102b7fee0",
                     "sentence1": "effective but too-tepid biopic", "line": 2}
    assert all(re.fullmatch(r"[0-9a-f]{25}", i) for i in ds["id"])
    assert not any(re.fullmatch(r"\d+(\.0)?", s) for s in ds["sentence1"])
    # labeled=True on a test file: the error says what to do
    with pytest.raises(cs224n.DataError, match=r"line 1: missing column sentiment.*labeled=False"):
        cs224n.load_split(data_dir / "ids-sst-test-student.csv", "sst")


def test_default_files():
    assert cs224n.default_file("sst", "test") == "ids-sst-test-student.csv"
    assert cs224n.default_file("para", "dev") == "quora-dev.csv"
    assert cs224n.default_file("para", "test") is None
    assert cs224n.default_file("sts", "train") == "sts-train.csv"
    with pytest.raises(ValueError):
        cs224n.default_file("nli", "train")
    with pytest.raises(ValueError):
        cs224n.default_file("sst", "validation")


def test_find_data_dir(tmp_path, monkeypatch):
    assert cs224n.find_data_dir(tmp_path) == tmp_path
    with pytest.raises(cs224n.DataError, match="--data-dir"):
        cs224n.find_data_dir(tmp_path / "nope")
    work = tmp_path / "repo"
    work.mkdir()
    monkeypatch.chdir(work)
    with pytest.raises(cs224n.DataError, match="--data-dir"):
        cs224n.find_data_dir()
    (tmp_path / "shared" / "data").mkdir(parents=True)
    assert cs224n.find_data_dir().resolve() == (tmp_path / "shared" / "data").resolve()
    (work / "data").mkdir()
    assert cs224n.find_data_dir() == Path("data")


def test_skipped_rows_are_logged(data_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="bert_jax.data"):
        cs224n.load_split(data_dir / "quora-dev.csv", "para", skip_bad_rows=True)
    assert "skipped 2 bad rows (lines 2577, 14222)" in caplog.text


def test_missing_file(tmp_path):
    raises(tmp_path / "nope.csv", match="no such file", hint="--data-dir")
    raises(tmp_path, match="not a file", hint=".csv")


def test_missing_columns(tmp_path):
    p = write_tsv(tmp_path / "cols.csv", ["", "id", "text", "sentiment"], [("a", "x", "1")])
    msg = raises(p, line=1, match="missing column sentence",
                 hint="Check that the file belongs to this task")
    assert "'text'" in msg and "expects id, sentence, sentiment" in msg
    p = write_tsv(tmp_path / "sts-test.csv", ["", "id", "sentence1", "sentence2"],
                  [("a", "x", "y")])
    raises(p, "sts", line=1, match="missing column similarity", hint="labeled=False")
    assert len(cs224n.load_split(p, "sts", labeled=False)) == 1
    p = write_tsv(tmp_path / "pair.csv", HEADERS["sst"], good_sst())
    raises(p, "para", line=1, match="missing columns sentence1, sentence2, is_duplicate",
           hint="belongs to this task")


def test_comma_separated(tmp_path):
    p = tmp_path / "commas.csv"
    p.write_text(",id,sentence,sentiment\n0,a,hello there,3\n", encoding="utf-8")
    raises(p, line=1, match="looks comma-separated; the CS224N files are tab-separated",
           hint="tabs")


def test_empty_sentence(tmp_path):
    rows = good_sst()
    rows[1] = ("id1", "   ", "2")
    raises(sst_file(tmp_path, rows), line=3, match="sentence is empty")
    p = write_tsv(tmp_path / "pair.csv", HEADERS["para"],
                  [("a", "q one", "q two", "1.0"), ("b", "q", "", "0.0")])
    raises(p, "para", line=3, match="sentence2 is empty")
    p = write_tsv(tmp_path / "noid.csv", HEADERS["sst"], [("a", "x", "1"), (" ", "y", "2")])
    raises(p, line=3, match="the id is empty")


@pytest.mark.parametrize("task,label,match", [
    ("sst", "5", "not one of 0, 1, 2, 3, 4"),
    ("sst", "-1", "not one of"),
    ("sst", "2.5", "not one of"),
    ("sst", "positive", "is not a number"),
    ("sst", "", "sentiment is empty"),
    ("para", "2.0", "not 0 or 1"),
    ("para", "yes", "is not a number"),
    ("sts", "5.5", "outside 0..5"),
    ("sts", "-0.1", "outside 0..5"),
    ("sts", "nan", "must be finite"),
    ("sts", "inf", "must be finite"),
    ("sts", "-Infinity", "must be finite"),
    ("sst", "NaN", "must be finite"),
    # spellings float() accepts that are no plain number
    ("sst", "1e0", "not a plain decimal number"),
    ("sst", "1_0", "not a plain decimal number"),
    ("para", "\uff11", "not a plain decimal number"),          # fullwidth 1
    ("sts", "\u0663", "not a plain decimal number"),           # Arabic-Indic 3
    ("sts", "0x1", "is not a number"),
])
def test_bad_labels(tmp_path, task, label, match):
    good = {"sst": ("a", "fine .", "3"), "para": ("a", "q1", "q2", "1.0"),
            "sts": ("a", "s1", "s2", "4.2")}[task]
    rows = [(f"g{i}",) + good[1:] for i in range(3)] + [good[:-1] + (label,)]
    p = write_tsv(tmp_path / f"{task}-labels.csv", HEADERS[task], rows)
    raises(p, task, line=5, match=match)


def test_not_utf8(tmp_path):
    p = tmp_path / "latin1.csv"
    text = "\tid\tsentence\tsentiment\n0\ta\tfine\t1\n1\tb\tok\t2\n2\tc\tcaf\xe9 cr\xe8me\t3\n"
    p.write_bytes(text.encode("latin-1"))
    msg = raises(p, line=4, match="bytes that are not UTF-8 (byte 0xe9)", hint="iconv")
    assert SKIP_HINT in msg
    ds, skipped = cs224n.load_split_with_report(p, "sst", skip_bad_rows=True)
    assert len(ds) == 2 and [line for line, _ in skipped] == [4]
    h = tmp_path / "header.csv"
    h.write_bytes("\tid\tsent\xe9nce\tsentiment\n0\ta\tfine\t1\n".encode("latin-1"))
    raises(h, line=1, match="header has bytes that are not UTF-8", hint="UTF-8")


def test_utf8_bom_is_ignored(tmp_path):
    p = tmp_path / "bom.csv"
    p.write_bytes(b"\xef\xbb\xbfid\tsentence\tsentiment\na\tfine\t1\n")
    assert cs224n.load_split(p, "sst")[0] == {"id": "a", "sentence1": "fine", "label": 1,
                                              "line": 2}


def test_empty_files(tmp_path):
    p = tmp_path / "empty.csv"
    p.write_bytes(b"")
    raises(p, match="empty file (0 bytes)", hint="header")
    p = sst_file(tmp_path, [], "header-only.csv")
    raises(p, match="no rows (only a header)", hint="at least one row")


def test_wrong_number_of_fields(tmp_path):
    p = tmp_path / "short.csv"
    p.write_text("\tid\tsentence\tsentiment\n0\ta\tfine\t1\n1\tb\tno label\n", encoding="utf-8")
    raises(p, line=3, match="3 fields, the header has 4")
    p = tmp_path / "long.csv"
    p.write_text("\tid\tsentence\tsentiment\n0\ta\tfine\tand tab\t1\n", encoding="utf-8")
    raises(p, line=2, match="5 fields, the header has 4: an unquoted tab")


def test_line_numbers_follow_multiline_records(tmp_path):
    # A quoted field spanning lines is the sign of an unbalanced quote: its first line is a bad
    # row, each line after it is read as its own row, and the line numbers after it stay right.
    rows = [("a", "one\nline two\nline three", "1"), ("b", "fine", "2"), ("c", "", "3")]
    p = sst_file(tmp_path, rows)
    raises(p, line=2, match="an unbalanced double quote")  # header 1, a 2-4, b 5, c 6
    ds, skipped = cs224n.load_split_with_report(p, "sst", skip_bad_rows=True)
    assert ds["line"][:] == [5] and ds["id"][:] == ["b"]
    assert [line for line, _ in skipped] == [2, 3, 4, 6]
    p = tmp_path / "blank.csv"  # blank lines are skipped, as csv.DictReader does
    p.write_text("\tid\tsentence\tsentiment\n\n0\ta\tfine\t1\n\n1\tb\t\t1\n", encoding="utf-8")
    raises(p, line=5, match="sentence is empty")


@pytest.mark.parametrize("opened_at", [3, 20])
def test_an_unbalanced_quote_swallows_no_row(tmp_path, caplog, opened_at):
    """A quote opened in one row and closed rows later (or never) would merge those rows into
    one sentence: the row that opens it is a bad row, named and counted; every row after it is
    read as its own row (ids, sentences, labels as written), and `read_ids` has every id."""
    n = 25
    lines = ["\tid\tsentence\tsentiment"]
    expected = []
    for i in range(n):
        text = f"sentence {i}" if i != opened_at - 2 else f'"sentence {i} with an open quote'
        if i == opened_at + 1 and opened_at == 3:
            text = f'sentence {i} closes it"'  # closed three rows later
        lines.append(f"{i}\tid{i}\t{text}\t{i % 5}")
        if i != opened_at - 2:
            expected.append((f"id{i}", text.lower(), i % 5, i + 2))
    p = tmp_path / "quotes.csv"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    raises(p, line=opened_at, match="an unbalanced double quote")
    with caplog.at_level(logging.WARNING, logger="bert_jax.data"):
        ds, skipped = cs224n.load_split_with_report(p, "sst", skip_bad_rows=True)
    assert [line for line, _ in skipped] == [opened_at]
    got = list(zip(ds["id"][:], ds["sentence1"][:], ds["label"][:], ds["line"][:]))
    assert got == expected
    assert "skipped 1 bad row (line " + str(opened_at) + ")" in caplog.text
    assert cs224n.read_ids(p) == [f"id{i}" for i in range(n)]


def test_a_quote_that_spans_the_header_is_one_error(tmp_path):
    p = tmp_path / "header.csv"
    p.write_text('\tid\t"sentence\tsentiment\n0\ta\tfine"\t1\n', encoding="utf-8")
    raises(p, line=1, match="the header line an unbalanced double quote", hint="header")


def test_duplicate_ids_are_bad_rows(tmp_path):
    p = sst_file(tmp_path, [("a", "one", "1"), ("b", "two", "2"), ("a", "three", "3")])
    raises(p, line=4, match="duplicate id 'a' (first on line 2)")
    ds, skipped = cs224n.load_split_with_report(p, "sst", skip_bad_rows=True)
    assert ds["id"][:] == ["a", "b"] and [line for line, _ in skipped] == [4]


def test_skip_bad_rows_skips_and_counts(tmp_path, caplog):
    p = tmp_path / "mixed.csv"
    p.write_bytes(
        b"\tid\tsentence\tsentiment\n"
        b"0\ta\tgood one\t0\n"          # 2 ok
        b"1\tb\t \t1\n"                 # 3 empty sentence
        b"2\tc\tbad label\t7\n"         # 4 out of range
        b"3\td\tnot a number\tx\n"      # 5 not a number
        b"4\te\tshort\n"                # 6 too few fields
        b"5\tf\tcaf\xe9\t2\n"           # 7 not UTF-8
        b"6\tg\tnan label\tnan\n"       # 8 nan
        b"7\th\tGood Two \t4\n")        # 9 ok
    raises(p, line=3)
    with caplog.at_level(logging.WARNING, logger="bert_jax.data"):
        ds, skipped = cs224n.load_split_with_report(p, "sst", skip_bad_rows=True)
    assert ds[:] == {"id": ["a", "h"], "sentence1": ["good one", "good two"], "label": [0, 4],
                     "line": [2, 9]}
    assert [line for line, _ in skipped] == [3, 4, 5, 6, 7, 8]
    assert [r.split(" ")[0] for _, r in skipped] == ["sentence", "sentiment", "sentiment", "3",
                                                     "bytes", "sentiment"]
    assert "mixed.csv: skipped 6 bad rows (lines 3, 4, 5, 6, 7, 8)" in caplog.text
    assert len(cs224n.load_split(p, "sst", skip_bad_rows=True)) == 2
    # every row bad: still an error
    p = sst_file(tmp_path, [("a", "", "1"), ("b", "x", "9")], "allbad.csv")
    raises(p, match="no usable rows: all 2 rows are bad", hint=None, skip_bad_rows=True)


def test_unreadable_file_is_named(tmp_path, monkeypatch):
    p = sst_file(tmp_path, good_sst())
    real = Path.read_bytes

    def denied(self):
        if self == p:
            raise PermissionError(13, "Permission denied")
        return real(self)
    monkeypatch.setattr(Path, "read_bytes", denied)
    raises(p, match="cannot read the file (Permission denied)", hint="chmod")


_CHARS = st.one_of(st.sampled_from(['"', "'", "\t", "\n", "\r", " ", ",", "a", "B", "\u00e9",
                                    "\u4e2d", "\U0001f600", "\x00", "\u2028", "\x85", "\ufeff",
                                    "\u00a0", "\\"]),
                   st.characters(blacklist_categories=("Cs",)))


_TEXT = st.text(_CHARS, max_size=12)


_LABELS = st.one_of(
    st.sampled_from(["0", "1", "2", "3", "4", "0.0", "1.0", "4.6", "5", "5.0", "2.5", "-1",
                     "nan", "inf", "-inf", "", " 3 ", "abc", "1e400", "\t", '"1"']),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(_CHARS, max_size=4))


def _expected_label(task, value):
    """The label the loader must give, or None when it must reject it: a plain decimal number
    (ASCII digits, optional sign and fraction, spaces around) in the task's range."""
    if not re.fullmatch(r"[+-]?[0-9]+(\.[0-9]+)?", value.strip(" ")):
        return None
    x = float(value)
    if not math.isfinite(x):
        return None
    if task == "sst":
        return int(x) if x == int(x) and 0 <= x <= 4 else None
    if task == "para":
        return int(x) if x in (0.0, 1.0) else None
    return float(np.float32(x)) if 0 <= x <= 5 else None


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(task=st.sampled_from(cs224n.TASKS), labeled=st.booleans(),
       rows=st.lists(st.tuples(_TEXT, _TEXT, _TEXT, _LABELS), min_size=1, max_size=6))
def test_random_rows_load_exactly_or_raise_data_error(task, labeled, rows):
    header = HEADERS[task] if labeled else HEADERS[task][:-1]
    pair = task != "sst"
    written = []
    for ex_id, s1, s2, label in rows:
        row = (ex_id, s1) + ((s2,) if pair else ()) + ((label,) if labeled else ())
        written.append(row)
    expected, accepted_ids = [], set()
    for row, (ex_id, s1, s2, label) in zip(written, rows):
        sents = [s1.lower().strip()] + ([s2.lower().strip()] if pair else [])
        lab = _expected_label(task, label) if labeled else 0
        merged = any(ch in field for field in row for ch in "\t\r\n")
        ok = (not merged and ex_id.strip() != "" and all(sents) and lab is not None
              and ex_id.strip() not in accepted_ids)
        if ok:
            accepted_ids.add(ex_id.strip())
        expected.append((ok, ex_id.strip(), sents, lab))
    with tempfile.TemporaryDirectory() as tmp:
        path = write_tsv(Path(tmp) / "random.csv", header, written)
        for skip in (False, True):
            good = [e for e in expected if e[0]]
            must_fail = not good if skip else not all(e[0] for e in expected)
            try:
                ds = cs224n.load_split(path, task, labeled=labeled, skip_bad_rows=skip)
            except cs224n.DataError as e:
                event(f"skip={skip}: DataError")
                assert must_fail, f"unexpected DataError: {e}"
                assert "random.csv" in str(e)
                continue
            assert not must_fail, "bad rows loaded without DataError"
            event(f"skip={skip}: loaded")
            got = ds[:]
            assert got["id"] == [e[1] for e in good]
            assert got["sentence1"] == [e[2][0] for e in good]
            if pair:
                assert got["sentence2"] == [e[2][1] for e in good]
            if labeled:
                assert got["label"] == [e[3] for e in good]
            # line numbers point at each record's first line in the file
            text = path.read_text(encoding="utf-8")
            reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t")
            next(reader)
            starts = []
            while True:
                start = reader.line_num + 1
                try:
                    next(reader)
                except StopIteration:
                    break
                starts.append(start)
            assert got["line"] == [s for s, e in zip(starts, expected) if e[0]]


@pytest.mark.parametrize("quoted", [False, True])
def test_a_field_over_the_csv_limit_is_one_bad_row(tmp_path, caplog, quoted):
    """A 150,000-character sentence (csv's field limit is 131,072) is a bad row named by its
    line, like any other: the rows around it load, and `read_ids` still has its id."""
    assert csv.field_size_limit() < 150_000
    rows = good_sst(4)
    long = "x" * 150_000
    rows[1] = ("id1", f'"{long}"' if quoted else long, "2")
    p = tmp_path / "long.csv"
    p.write_text("\tid\tsentence\tsentiment\n"
                 + "".join(f"{i}\t{a}\t{b}\t{c}\n" for i, (a, b, c) in enumerate(rows)))
    raises(p, line=3, match="cannot parse the row (field larger than field limit (131072)): "
                            "a field longer than 131072 characters")
    with caplog.at_level(logging.WARNING, logger="bert_jax.data"):
        ds, skipped = cs224n.load_split_with_report(p, "sst", skip_bad_rows=True)
    assert [line for line, _ in skipped] == [3]
    assert list(ds["id"][:]) == ["id0", "id2", "id3"] and list(ds["line"][:]) == [2, 4, 5]
    assert "skipped 1 bad row (line 3)" in caplog.text
    assert cs224n.read_ids(p) == ["id0", "id1", "id2", "id3"]
