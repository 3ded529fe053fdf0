"""Sizes for people, in binary units everywhere (pages, commands, messages): 196 KiB,
64 MiB, 12.5 GiB, 2 TiB. libvirt, qemu-img and LUKS count in powers of two, and a page that
said "1.0 GB" next to "64 MiB" mixed two systems."""

from __future__ import annotations

UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def format_bytes(n: int | float) -> str:
    """Bytes -> the largest binary unit that keeps the number at 1 or more: whole bytes;
    KiB and MiB with one decimal, GiB and up with two (trailing zeros dropped)."""
    n = float(n or 0)
    sign, value = ("-" if n < 0 else ""), abs(n)
    if value < 1024:
        return f"{sign}{value:.0f} B"
    exponent = 0
    while value >= 1024 and exponent < len(UNITS) - 1:
        value /= 1024
        exponent += 1
    decimals = 1 if exponent <= 2 else 2
    text = f"{value:.{decimals}f}"
    if float(text) >= 1024 and exponent < len(UNITS) - 1:  # 1023.96 MiB rounds to 1024 MiB: say 1 GiB
        exponent += 1
        decimals = 1 if exponent <= 2 else 2
        text = f"{float(text) / 1024:.{decimals}f}"
    return f"{sign}{text.rstrip('0').rstrip('.')} {UNITS[exponent]}"
