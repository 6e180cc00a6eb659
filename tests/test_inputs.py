"""kdfast.serve.inputs: the sentences ``kdfast predict`` reads from its arguments, a file or standard input; blank
lines of plain text skipped and counted (the first five line numbers kept); every mistake an error naming it."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from kdfast.errors import KdfastError
from kdfast.serve.inputs import Skipped, iter_texts, lines_of


def test_plain_text_lines_keep_their_spaces_and_blank_ones_are_counted() -> None:
    lines = ["one  \r\n", "\n", "  two\n", " \t\n", "\r\n", "\n", "\n", "\n", "\n", "TAX\n", "three"]
    skipped = Skipped()
    assert list(lines_of(io.StringIO("".join(lines), newline=""), skipped)) == ["one  ", "  two", "TAX", "three"]
    assert skipped.blank == 7 and skipped.lines == [2, 4, 5, 6, 7]  # line numbers from 1, the first five


def test_arguments_file_and_standard_input(tmp_path: Path) -> None:
    assert list(iter_texts(["a", "b"], None)) == ["a", "b"]
    plain = tmp_path / "in.txt"
    plain.write_text("first\n\nsecond\n", encoding="utf-8")
    skipped = Skipped()
    assert list(iter_texts(None, plain, skipped=skipped)) == ["first", "second"]
    assert skipped.blank == 1 and skipped.lines == [2]
    assert list(iter_texts([], None, stdin=io.StringIO("x\n\ny\n"))) == ["x", "y"]  # no arguments: stdin
    skipped = Skipped()
    assert list(iter_texts(None, None, stdin=io.StringIO("\nz\n"), skipped=skipped)) == ["z"]
    assert skipped.blank == 1


def test_a_table_file_gives_its_text_column_and_needs_no_label(tmp_path: Path) -> None:
    table = tmp_path / "in.csv"
    table.write_text("id,sentence\n1,Hello there.\n2,Books.\n", encoding="utf-8")
    assert list(iter_texts(None, table)) == ["Hello there.", "Books."]
    table.write_text("id,body,text\n1,a,b\n", encoding="utf-8")
    assert list(iter_texts(None, table, text_column="body")) == ["a"]


@pytest.mark.parametrize(("texts", "name", "content", "text_column", "message"), [
    (["a"], "in.txt", "x\n", None, "give sentences as arguments or --file, not both"),
    (None, "missing.txt", None, None, "--file {path}: no such file"),
    (None, "in.txt", "x\n", "text", "--text-column: {path} is plain text (one sentence per line); --text-column is "
                                    "for .csv, .tsv and .jsonl files"),
    (None, "in.txt", b"ok\n\xff\xfe\n", None, "{path}: not valid UTF-8 (invalid start byte)"),
])
def test_mistakes_are_errors_naming_them(tmp_path: Path, texts: list[str] | None, name: str,
                                         content: str | bytes | None, text_column: str | None, message: str) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(KdfastError) as e:
        list(iter_texts(texts, path, text_column))
    assert str(e.value) == message.format(path=path)


def test_without_arguments_or_a_file_the_process_standard_input_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("from stdin\n\n"))
    skipped = Skipped()
    assert list(iter_texts(None, None, skipped=skipped)) == ["from stdin"] and skipped.blank == 1
