"""CSV a spreadsheet opens without running anything: a cell that starts with `=`, `+`, `-`,
`@`, a tab or a carriage return is read as a formula by Excel, LibreOffice and Sheets
(CSV injection), so every such cell is written with a leading single quote. Every CSV the
portal offers for download goes through here."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator

FORMULA_STARTS = frozenset("=+-@\t\r")


def neutralise(value):
    """The cell as a spreadsheet will show it, never as a formula it would run."""
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in FORMULA_STARTS:
        return "'" + value
    return value


def safe_row(values: Iterable) -> list:
    # neutralise() inlined: this runs for every cell of a million-row export
    return [("'" + v) if isinstance(v, str) and v[:1] in FORMULA_STARTS else v for v in values]


class SafeWriter:
    """csv.writer over `stream` whose every row is neutralised."""

    def __init__(self, stream):
        self._writer = csv.writer(stream)

    def writerow(self, values: Iterable) -> None:
        self._writer.writerow(safe_row(values))

    def writerows(self, rows: Iterable[Iterable]) -> None:
        self._writer.writerows(safe_row(r) for r in rows)


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
