"""Cells a spreadsheet would run as a formula are neutralised before they reach a CSV export.

A cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return is a formula to Excel,
LibreOffice and Google Sheets (CSV injection, OWASP): a user name or a comment such as
`=HYPERLINK(...)` would run on the auditor's machine. Such a cell gets a leading `'`, which
spreadsheets show as text and a reader of the raw file sees plainly. Every CSV the portal
offers goes through here: the access review's (safe_row) and the audit log's streamed
export (SafeWriter, stream_csv)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_FORMULA_FIRST = frozenset(FORMULA_STARTS)


def safe_cell(value) -> str:
    """The value as CSV cell text, prefixed with ' when a spreadsheet would run it."""
    text = "" if value is None else str(value)
    if text.startswith(FORMULA_STARTS):
        return "'" + text
    return text


def safe_row(values) -> list[str]:
    return [safe_cell(v) for v in values]


def _safe_text_cells(values: Iterable) -> list:
    """safe_row for a stream of a million rows: text cells are neutralised in one inlined
    test, numbers and times (which cannot hold a formula) pass as they are."""
    return [("'" + v) if isinstance(v, str) and v[:1] in _FORMULA_FIRST else v for v in values]


class SafeWriter:
    """csv.writer over `stream` whose every row is neutralised."""

    def __init__(self, stream):
        self._writer = csv.writer(stream)

    def writerow(self, values: Iterable) -> None:
        self._writer.writerow(_safe_text_cells(values))

    def writerows(self, rows: Iterable[Iterable]) -> None:
        self._writer.writerows(_safe_text_cells(r) for r in rows)


def stream_csv(header: Iterable[str], chunks: Iterable[Iterable[Iterable]]) -> Iterator[str]:
    """Text for a StreamingHttpResponse: the header, then one string per chunk of rows (a
    chunk at a time keeps memory constant and the number of writes to the socket small)."""
    buffer = io.StringIO()
    writer = SafeWriter(buffer)
    writer.writerow(header)
    for rows in chunks:
        writer.writerows(rows)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue()
