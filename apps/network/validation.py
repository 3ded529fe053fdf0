"""Strict checks of everything a firewall rule or a zone is made of. They raise
django.core.exceptions.ValidationError (for forms and Model.clean) with a message for people;
nothing that fails them ever reaches nft."""

from __future__ import annotations

import ipaddress
import re

from django.core.exceptions import ValidationError

from apps.core.validators import NAME_RE

IFACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")  # Linux: at most 15 bytes
PROTOCOLS = ("any", "tcp", "udp", "icmp", "icmpv6")
PORT_PROTOCOLS = ("tcp", "udp")
_FORBIDDEN = {"'": "quotes", '"': "quotes", "`": "quotes", ";": "semicolons", "\\": "backslashes"}


def _forbidden_chars(value: str, what: str) -> None:
    for ch, label in _FORBIDDEN.items():
        if ch in value:
            raise ValidationError(f"The {what} must not contain {label} ({ch!r}).")
    if any(ch in value for ch in "\r\n\t\0"):
        raise ValidationError(f"The {what} must be a single line (no newlines or tabs).")
    if not value.isascii():
        raise ValidationError(f"The {what} must be plain ASCII (no accented letters or symbols).")
    if any(not ch.isprintable() for ch in value):
        raise ValidationError(f"The {what} contains control characters.")


def check_name(value: str, what: str = "name") -> str:
    if not isinstance(value, str) or not value:
        raise ValidationError(f"The {what} is required.")
    _forbidden_chars(value, what)
    if not NAME_RE.fullmatch(value) or ".." in value:
        raise ValidationError(
            f"Invalid {what} {value!r}: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit."
        )
    return value


def check_iface(value: str, what: str = "interface name") -> str:
    _forbidden_chars(value, what)
    if not IFACE_RE.fullmatch(value):
        raise ValidationError(
            f"Invalid {what} {value!r}: 1-15 letters, digits, '.', '_' or '-', starting with a letter or digit."
        )
    return value


def check_text(value: str, what: str = "comment", max_length: int = 200) -> str:
    """Free text that ends up in nft (a rule's comment) or on pages: one line of printable
    ASCII without quotes or semicolons."""
    if len(value) > max_length:
        raise ValidationError(f"The {what} is limited to {max_length} characters.")
    _forbidden_chars(value, what)
    return value


def check_protocol(value: str) -> str:
    if value not in PROTOCOLS:
        raise ValidationError(f"Unknown protocol {value!r}: choose one of {', '.join(PROTOCOLS)}.")
    return value


def parse_ports(value: str) -> tuple[int, int] | None:
    """'' -> None (all ports); '22' -> (22, 22); '8000-8080' -> (8000, 8080)."""
    value = (value or "").strip()
    if not value:
        return None
    _forbidden_chars(value, "port")
    parts = value.split("-")
    if len(parts) > 2 or not all(p.strip().isdigit() for p in parts):
        raise ValidationError(f"Invalid port {value!r}: give a port (22) or a range (8000-8080).")
    low, high = (int(parts[0]), int(parts[-1]))
    for port in (low, high):
        if not 1 <= port <= 65535:
            raise ValidationError(f"Port {port} is out of range: ports are 1 to 65535.")
    if low > high:
        raise ValidationError(f"The range {low}-{high} is inverted: give the lower port first.")
    return low, high


def parse_cidr(value: str, what: str = "address") -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    value = (value or "").strip()
    if not value:
        return None
    _forbidden_chars(value, what)
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            raise ValidationError(f"The {what} {value!r} has host bits set: did you mean "
                                  f"{ipaddress.ip_network(value, strict=False)}?") from None  # fmt: skip
        raise ValidationError(f"The {what} {value!r} is not an IPv4 or IPv6 address or CIDR (e.g. 10.0.0.0/24, "
                              f"2001:db8::/64).") from None  # fmt: skip
