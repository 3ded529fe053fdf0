"""The filtered audit log as a download, CSV or JSON Lines, streamed: rows are read by
keyset in chunks and written as they come, so memory stays flat at a million events.
Parameters are written as stored: record() redacted them on the way in (it is the only
writer, and the table is append-only). The export itself is audited (who exported which
filter, in which format)."""

from __future__ import annotations

import json
from collections.abc import Iterator

from apps.core.csvsafe import stream_csv

from . import selectors
from .services import audited

FORMATS = {"csv": ("text/csv; charset=utf-8", "csv"), "jsonl": ("application/x-ndjson", "jsonl")}
EXPORT_ACTION = "audit.events.export"


def _jsonl(chunks) -> Iterator[str]:
    """One JSON object a line; params spliced in as the stored JSON text (no decode and
    re-encode per row)."""
    names = selectors.EXPORT_COLUMNS[:-1]
    encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    for rows in chunks:
        lines = []
        for r in rows:
            item = dict(zip(names, r[:-1], strict=True))
            lines.append(f'{encode(item)[:-1]},"params":{r[-1] or "{}"}}}')
        lines.append("")
        yield "\n".join(lines)


def events_export(*, actor, filters: selectors.EventFilters, fmt: str) -> Iterator[str]:
    """The export's text, chunk by chunk. The permission is checked and the export recorded
    before the first row is read."""
    with audited(actor=actor, action=EXPORT_ACTION, perm="audit.view",
                 params={"format": fmt, "filters": filters.described()}):  # fmt: skip
        chunks = selectors.events_for_export(actor, filters)
    if fmt == "csv":
        return stream_csv(selectors.EXPORT_COLUMNS, chunks)
    return _jsonl(chunks)
