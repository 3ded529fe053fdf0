"""Sizes are shown in binary units everywhere: one formatter (apps.core.units), one
template filter (`size`), and no template uses Django's decimal filesizeformat."""

import re
from pathlib import Path

import pytest
from django.template import engines

from apps.core.units import format_bytes
from apps.storage.quota_rules import fmt_bytes

ROOT = Path(__file__).resolve().parents[2]
KIB, MIB, GIB, TIB = 1 << 10, 1 << 20, 1 << 30, 1 << 40


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (None, "0 B"),
        (1023, "1023 B"),
        (1024, "1 KiB"),
        (196 * KIB, "196 KiB"),  # a fresh thin qcow2 (was "196.0 KB")
        (1536 * KIB, "1.5 MiB"),
        (64 * MIB, "64 MiB"),
        (MIB - 1, "1 MiB"),  # rounds up into the next unit, never "1024 KiB"
        (GIB, "1 GiB"),  # was "1.0 GB"
        (12 * GIB + GIB // 2, "12.5 GiB"),
        (2 * TIB, "2 TiB"),
        (-300 * MIB, "-300 MiB"),
    ],
)
def test_format_bytes_uses_binary_units(n, text):
    assert format_bytes(n) == text


def test_the_size_filter_and_the_commands_use_the_same_formatter():
    render = engines["django"].from_string
    page = render('{% load portal storage %}{{ b|size }}|{{ kib|size:"KiB" }}|{{ b|gib }}|{{ x|size:"furlong" }}')
    assert page.render({"b": 196 * KIB, "kib": 65536, "x": 1}) == "196 KiB|64 MiB|196 KiB|"
    assert fmt_bytes(196 * KIB) == "196 KiB" and fmt_bytes(20 * GIB) == "20 GiB"  # storage_quota's output


def test_no_template_uses_decimal_units():
    offenders = []
    for path in sorted((ROOT / "templates").rglob("*.html")) + sorted((ROOT / "apps").rglob("templates/**/*.html")):
        text = path.read_text()
        if "filesizeformat" in text or re.search(r"\b\d+(\.\d+)?\s?[KMGT]B\b", text):
            offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"use the binary `size` filter (apps/core/templatetags/portal.py) in: {offenders}"
