import re

from .errors import InvalidInput

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def validate_name(value: str, what: str = "name") -> str:
    """Names of VMs, pools, volumes, snapshots, networks: letters, digits, '.', '_', '-'."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value) or ".." in value:
        raise InvalidInput(
            f"Invalid {what} {value!r}: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit."
        )
    return value
