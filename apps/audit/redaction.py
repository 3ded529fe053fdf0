"""The one function every audit parameter passes through."""

import re

SECRET_KEY_RE = re.compile(r"pass(word|phrase)?|secret|token|key(?!_?(size|version|age|slot))|credential|pin", re.I)
REDACTED = "[redacted]"


def redact(value, key: str = ""):
    if key and SECRET_KEY_RE.search(key):
        return REDACTED
    if isinstance(value, dict):
        return {str(k): redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return REDACTED
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = str(value)
    return text if len(text) <= 500 else text[:500] + "..."
