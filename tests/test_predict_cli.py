"""`python -m bert_jax.predict`: CS224N files, plain lines, stdin, --output, errors, and any task
of the run (a user's string classes, a cross-encoded pair, an unknown name)."""
from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from user_tasks import PAIRS, TEXTS, export_user_model

from bert_jax.api import MultitaskModel
from bert_jax.predict import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(varied_run):
    """The API on the run whose predictions vary from row to row (see conftest.varied_run)."""
    return MultitaskModel.load(varied_run)


def head(src: Path, dst: Path, lines: int) -> Path:
    with src.open(newline="") as f:
        dst.write_text("".join(f.readline() for _ in range(lines)))
    return dst


def run(argv, capsys, stdin: str | None = None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_cs224n_tsv_sst(varied_run, data_dir, tmp_path, capsys, model):
    path = head(data_dir / "ids-sst-dev.csv", tmp_path / "sst.csv", 21)  # header + 20 rows
    code, out, _ = run([varied_run, "--task", "sst", "--input", path], capsys)
    assert code == 0
    table = rows(out)
    assert table[0] == ["id", "prediction", "p0", "p1", "p2", "p3", "p4"]
    with path.open() as f:
        records = list(csv.DictReader(f, delimiter="\t"))
    assert [r[0] for r in table[1:]] == [r["id"] for r in records]
    labels, probs = model.sentiment([r["sentence"] for r in records])
    assert len(set(labels.tolist())) >= 3  # predictions that vary: a mixed-up row shows
    assert [int(r[1]) for r in table[1:]] == labels.tolist()
    np.testing.assert_allclose([[float(x) for x in r[2:]] for r in table[1:]], probs, atol=1e-5)


def test_cs224n_test_file_with_odd_header_and_comma_csv(tiny_run, data_dir, tmp_path, capsys):
    path = head(data_dir / "ids-sst-test-student.csv", tmp_path / "test.csv", 4)
    code, out, _ = run([tiny_run, "--task", "sst", "--input", path], capsys)
    assert code == 0 and len(rows(out)) == 4
    comma = tmp_path / "pairs.csv"
    comma.write_text('id,sentence1,sentence2\na1,"hi, there",hello there\na2,one,two\n')
    code, out, _ = run([tiny_run, "--task", "para", "--input", comma], capsys)
    assert code == 0
    table = rows(out)
    assert table[0] == ["id", "prediction", "probability"]
    assert [r[0] for r in table[1:]] == ["a1", "a2"]
    assert all(r[1] == str(int(float(r[2]) > 0.5)) for r in table[1:])


def test_plain_lines_and_output_file(varied_run, tmp_path, capsys, model):
    path = tmp_path / "pairs.txt"
    path.write_text("a man plays a guitar\ta man is playing the guitar\n\ncats\tdogs\n")
    out_file = tmp_path / "out" / "sts.csv"
    code, out, err = run([varied_run, "--task", "sts", "--input", path, "--output", out_file],
                         capsys)
    assert code == 0 and out == "" and "wrote 2 predictions" in err
    table = rows(out_file.read_text())
    assert table[0] == ["line", "prediction"]
    assert [r[0] for r in table[1:]] == ["1", "3"]  # input line numbers, blank line skipped
    expected = model.similarity(["a man plays a guitar", "cats"],
                                ["a man is playing the guitar", "dogs"])
    assert abs(expected[0] - expected[1]) > 0.1  # two different scores: their order shows
    np.testing.assert_allclose([float(r[1]) for r in table[1:]], expected, atol=1e-5)
    sst = tmp_path / "sst.txt"
    sst.write_text("great fun\nawful , tedious mess\n")
    code, out, _ = run([varied_run, "--task", "sst", "--input", sst], capsys)
    assert code == 0 and [r[0] for r in rows(out)[1:]] == ["1", "2"]


def test_stdin_in_process(tiny_run, capsys, monkeypatch):
    code, out, _ = run([tiny_run, "--task", "para", "--input", "-"], capsys,
                       stdin="how do i learn python?\twhat is the best way to learn python?\n",
                       monkeypatch=monkeypatch)
    assert code == 0 and rows(out)[1][0] == "1"


@pytest.mark.slow
def test_stdin_subprocess_and_help(tiny_run):
    cmd = [sys.executable, "-m", "bert_jax.predict", str(tiny_run), "--task", "sst",
           "--input", "-"]
    done = subprocess.run(cmd, input="good\nbad\n", capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert len(rows(done.stdout)) == 3
    done = subprocess.run([sys.executable, "-m", "bert_jax.predict", "--help"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0
    for word in ("--task", "--input", "--output", "plain lines", "stdin", "any task of the run",
                 "--tasks-file"):
        assert word in done.stdout


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file"),
    ("columns", "the header has no column sentence"),
    ("one_field", "line 2: 1 tab-separated field"),
    ("empty", "empty input"),
    ("no_ckpt", "no such run folder"),
    ("not_run", "not a training run folder"),
])
def test_errors_exit_2_with_a_message(case, message, tiny_run, data_dir, tmp_path, capsys):
    ckpt, task, path = tiny_run, "sst", tmp_path / "in.txt"
    path.write_text("fine sentence\n")
    if case == "missing":
        path = tmp_path / "nope.txt"
    elif case == "columns":
        path = head(data_dir / "sts-dev.csv", tmp_path / "sts.csv", 3)
    elif case == "one_field":
        task = "para"
        path.write_text("a\tb\nonly one sentence\n")
    elif case == "empty":
        path.write_text("\n\n")
    elif case == "no_ckpt":
        ckpt = tmp_path / "no_run"
    elif case == "not_run":
        ckpt = tmp_path / "fake"
        ckpt.mkdir()
        (ckpt / "train_config.json").write_text("{}")
    code, out, err = run([ckpt, "--task", task, "--input", path], capsys)
    assert code == 2 and out == ""
    assert message in err and err.startswith("error: ")


@pytest.mark.slow
def test_error_has_no_traceback_in_a_subprocess(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bert_jax.predict", str(tmp_path), "--task",
                           "sst", "--input", str(tmp_path / "missing.txt")],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "no such file" in done.stderr


@pytest.mark.slow
def test_pretrained_name_warns_about_untrained_heads(tmp_path, capsys):
    path = tmp_path / "pairs.txt"
    path.write_text("a man plays a guitar\ta man is playing the guitar\n")
    code, out, err = run(["all-MiniLM-L6-v2", "--task", "sts", "--input", path], capsys)
    assert code == 0 and "warning" not in err  # the cosine STS head works zero-shot
    assert float(rows(out)[1][1]) > 3.5
    code, out, err = run(["all-MiniLM-L6-v2", "--task", "para", "--input", path], capsys)
    assert code == 0 and "untrained para head" in err


def test_output_equal_to_input_is_refused_and_the_input_kept(tiny_run, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("good\nbad\n")
    for output in (src, tmp_path / "." / "in.txt"):
        code, out, err = run([tiny_run, "--task", "sst", "--input", src, "--output", output],
                             capsys)
        assert code == 2 and "is the input file" in err
    assert src.read_text() == "good\nbad\n"


def test_unicode_line_separators_never_shift_ids(varied_run, tmp_path, capsys, model):
    """One prediction per input line: \\u2028, \\x85 and form feeds inside a line stay in it."""
    lines = ["a fine\u2028film", "dull\x85and slow", "ok\x0cfine", "great"]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, out, _ = run([varied_run, "--task", "sst", "--input", src], capsys)
    got = rows(out)[1:]
    assert code == 0 and [r[0] for r in got] == ["1", "2", "3", "4"]
    labels, _ = model.sentiment(lines)
    assert [int(r[1]) for r in got] == labels.tolist()


@pytest.mark.slow
def test_stdin_that_is_not_utf8_is_one_clear_error(tiny_run):
    cmd = [sys.executable, "-m", "bert_jax.predict", str(tiny_run), "--task", "sst",
           "--input", "-"]
    done = subprocess.run(cmd, input=b"caf\xe9 au lait\n", capture_output=True, cwd=ROOT,
                          timeout=300)
    err = done.stderr.decode()
    assert done.returncode == 2 and "stdin: not UTF-8 text" in err and "Traceback" not in err


def test_bad_numbers_refused_by_the_parser(tiny_run, capsys):
    with pytest.raises(SystemExit) as info:
        main([str(tiny_run), "--task", "sst", "--input", "-", "--batch-size", "0"])
    assert info.value.code == 2 and "--batch-size: 0 is not allowed" in capsys.readouterr().err


def test_output_never_lands_on_a_file_it_did_not_write(tiny_run, tmp_path, capsys):
    """--output inside a run folder (its train_config.json, or a new file) is refused even with
    --overwrite; another existing file only with --overwrite; an earlier prediction file of
    this tool is replaced."""
    src = tmp_path / "in.txt"
    src.write_text("good\nbad\n")
    config = tiny_run / "train_config.json"
    before = config.read_bytes()
    for output, extra in ((config, []), (config, ["--overwrite"]), (tiny_run / "new.csv", [])):
        code, _, err = run([tiny_run, "--task", "sst", "--input", src, "--output", output,
                            *extra], capsys)
        assert code == 2 and "inside a training run folder" in err and str(tiny_run) in err
    assert config.read_bytes() == before and not (tiny_run / "new.csv").exists()
    mine = tmp_path / "mine.csv"
    mine.write_text("my notes\n")
    code, _, err = run([tiny_run, "--task", "sst", "--input", src, "--output", mine], capsys)
    assert code == 2 and "--overwrite" in err and mine.read_text() == "my notes\n"
    out = tmp_path / "preds.csv"
    for target, extra in ((out, []), (out, []), (mine, ["--overwrite"])):
        code, _, err = run([tiny_run, "--task", "sst", "--input", src, "--output", target,
                            *extra], capsys)
        assert code == 0, err
        assert target.read_text().startswith("line,prediction")


@pytest.mark.parametrize("text, message", [
    # a quote opened in the first row and closed in the third: 3 ids, never 1 merged row
    ('id\tsentence\na\t"one\nb\ttwo\nc\tthree"\n', "line 2: an unbalanced double quote"),
    ('id,sentence\na,"one\nb,two\n', "line 2: an unbalanced double quote"),
    # an extra tab-separated field in a pair row: never dropped without a word
    ("id\tsentence1\tsentence2\na\tone\ttwo\tthree\n", "line 2: 4 fields, the header has 3"),
])
def test_rows_are_never_merged_or_cut_short(text, message, tiny_run, tmp_path, capsys):
    src = tmp_path / "in.tsv"
    src.write_text(text)
    task = "sst" if "sentence1" not in text else "para"
    code, out, err = run([tiny_run, "--task", task, "--input", src], capsys)
    assert code == 2 and message in err and out == ""


@pytest.mark.parametrize("text, form, ids, sentences", [
    # one field on the first line: a sentence, even the word `sentence` (auto)
    ("sentence\nhello there\n", "auto", ["1", "2"], ["sentence", "hello there"]),
    ("id\tsentence\nx7\thello\n", "auto", ["x7"], ["hello"]),
    ("id,sentence\nx7,hello\n", "auto", ["x7"], ["hello"]),
    # --format lines: a first line that looks like a header is a sentence
    ("id\tsentence\nx7\thello\n", "lines", ["1", "2"], ["id\tsentence", "x7\thello"]),
    ("x,id,sentence\n0,x7,hello\n", "table", ["x7"], ["hello"]),
])
def test_the_input_form_rule(text, form, ids, sentences):
    from bert_jax.predict import parse_input
    assert parse_input(text, "sst", "in", form) == (
        "id" if form != "lines" and ids != ["1", "2"] else "line", ids, [sentences])


@pytest.mark.parametrize("text, form, message", [
    ("sentence1\tsentence2\na\tb\n", "auto", "in: the header has no column id (task 'sts' "
     "needs id, sentence1, sentence2; the header has 'sentence1', 'sentence2'). Use the CS224N "
     "file of this task, or pass --format lines if that first line is a sentence"),
    ("a fine film\n", "table", "in: the header has no columns id, sentence1, sentence2"),
])
def test_a_header_that_is_not_one_names_format_lines(text, form, message):
    from bert_jax.predict import InputError, parse_input
    with pytest.raises(InputError) as err:
        parse_input(text, "sts", "in", form)
    assert str(err.value).startswith(message)


def test_a_plain_input_whose_first_line_is_sentence(tiny_run, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("sentence\nsentence1\tsentence2\n")
    code, out, err = run([tiny_run, "--task", "sst", "--input", src], capsys)
    assert code == 0, err
    assert [r[0] for r in rows(out)] == ["line", "1", "2"]


def test_output_under_a_file_is_one_parser_line(tiny_run, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("good\n")
    with pytest.raises(SystemExit) as exit_:
        run([tiny_run, "--task", "sst", "--input", src, "--output", src / "x.csv"], capsys)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith(f"error: argument --output: {src / 'x.csv'}: a part of the path is a "
                        "file, not a folder")


def test_a_row_over_the_csv_field_limit_is_a_row_not_the_file(tiny_run, tmp_path, capsys):
    """A 150,000-character field (csv's default limit: 131,072): one row named by its line in
    a table; a plain line is a sentence like another (truncated to max_length tokens)."""
    src = tmp_path / "in.tsv"
    src.write_text("id\tsentence\na\tgood\nb\t" + "x" * 150_000 + "\nc\tbad\n")
    code, out, err = run([tiny_run, "--task", "sst", "--input", src], capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"error: {src}, line 3: cannot parse the row (field larger than "
                          "field limit (131072)): a field longer than")
    src.write_text("x" * 150_000 + "\ngood\n")
    code, out, err = run([tiny_run, "--task", "sst", "--input", src], capsys)
    assert code == 0, err
    assert [r[0] for r in rows(out)] == ["line", "1", "2"]


# ------------------------------------------------------------------ any task of the run

@pytest.fixture(scope="module")
def user_export(user_model, tmp_path_factory) -> Path:
    """`user_model` exported: a folder `bert_jax.predict` reads as a run's."""
    out = tmp_path_factory.mktemp("user_export") / "export"
    export_user_model(user_model, out)
    return out


def test_a_users_classification_task(user_export, user_model, tmp_path, capsys):
    """Three string classes: the class and a p_<class> column per class; a table of the task's
    own columns, numbered by line (the task has no id column), or plain lines."""
    values, probs = user_model.predict("mood", TEXTS)
    assert len(set(values.tolist())) >= 2
    src = tmp_path / "reviews.csv"
    src.write_text("stars,review\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(TEXTS)))
    lines = tmp_path / "reviews.txt"
    lines.write_text("\n".join(TEXTS) + "\n")
    for path, ids in ((src, range(2, len(TEXTS) + 2)), (lines, range(1, len(TEXTS) + 1))):
        code, out, err = run([user_export, "--task", "mood", "--input", path], capsys)
        assert code == 0, err
        table = rows(out)
        assert table[0] == ["line", "prediction", "p_sad", "p_meh", "p_happy"]
        assert [r[0] for r in table[1:]] == [str(i) for i in ids]
        assert [r[1] for r in table[1:]] == values.tolist()
        np.testing.assert_allclose([[float(x) for x in r[2:]] for r in table[1:]], probs,
                                   atol=1e-5)
    code, out, _ = run([user_export, "--task", "spam", "--input", lines], capsys)
    values, probs = user_model.predict("spam", TEXTS)
    table = rows(out)
    assert code == 0 and table[0] == ["line", "prediction", "probability"]
    assert [r[1] for r in table[1:]] == values.tolist() and set(values.tolist()) == {"ham", "spam"}
    np.testing.assert_allclose([float(r[2]) for r in table[1:]], probs[:, 1], atol=1e-5)


def test_a_cross_encoded_pair_task_and_the_cross_encoded_paraphrase(user_export, user_model,
                                                                     tmp_path, capsys):
    a, b = PAIRS
    src = tmp_path / "pairs.tsv"
    src.write_text("id\tleft\tright\tscore\n"
                   + "".join(f"p{i}\t{x}\t{y}\t1.0\n" for i, (x, y) in enumerate(zip(a, b))))
    code, out, err = run([user_export, "--task", "related", "--input", src], capsys)
    assert code == 0, err
    table = rows(out)
    assert table[0] == ["id", "prediction"] and [r[0] for r in table[1:]] == [
        f"p{i}" for i in range(len(a))]
    scores = user_model.predict("related", a, b)
    assert np.std(scores) > 0.1
    np.testing.assert_allclose([float(r[1]) for r in table[1:]], scores, atol=1e-5)
    lines = tmp_path / "pairs.txt"
    lines.write_text("".join(f"{x}\t{y}\n" for x, y in zip(a, b)))
    code, out, err = run([user_export, "--task", "para", "--input", lines], capsys)
    assert code == 0, err
    np.testing.assert_allclose([float(r[2]) for r in rows(out)[1:]],
                               user_model.paraphrase(a, b), atol=1e-5)


@pytest.mark.parametrize("task, text, message", [
    ("nli", "a\tb\n", "error: --task nli: {ckpt} has no such task; its tasks are sst, para, "
     "sts, mood, spam, related"),
    ("related", "left\tright\na\tb\n", "the header has no column id (task 'related' needs id, "
     "left, right; the header has 'left', 'right'). Use the data file of this task"),
    ("related", "only one sentence\n", "line 1: 1 tab-separated field; task 'related' takes two"),
])
def test_a_task_the_run_lacks_or_an_input_it_cannot_read(task, text, message, user_export,
                                                        tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text(text)
    code, out, err = run([user_export, "--task", task, "--input", src], capsys)
    assert code == 2 and out == "" and message.format(ckpt=user_export) in err
