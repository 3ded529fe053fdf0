"""Cells a spreadsheet would run as a formula are neutralised before they reach a CSV export.

A cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return is a formula to Excel,
LibreOffice and Google Sheets (CSV injection, OWASP): a user name or a comment such as
`=HYPERLINK(...)` would run on the auditor's machine. Such a cell gets a leading `'`, which
spreadsheets show as text and a reader of the raw file sees plainly."""

from __future__ import annotations

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value) -> str:
    """The value as CSV cell text, prefixed with ' when a spreadsheet would run it."""
    text = "" if value is None else str(value)
    if text.startswith(FORMULA_STARTS):
        return "'" + text
    return text


def safe_row(values) -> list[str]:
    return [safe_cell(v) for v in values]
