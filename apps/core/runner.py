"""The one way this project runs a command: an argv list, a timeout, secrets on stdin or a
file descriptor, never in argv, never through a shell."""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass

from .errors import GatewayError, GatewayTimeout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def run(
    argv: list[str],
    *,
    stdin: bytes | None = None,
    timeout: float = 60,
    check: bool = True,
    env: dict[str, str] | None = None,
    pass_fds: tuple[int, ...] = (),
    cwd: str | None = None,
) -> Result:
    """Run argv and return its output. `stdin` carries secrets; it is never logged.

    `pass_fds` hands open descriptors (e.g. the read end of a pipe holding a second secret,
    named as /dev/fd/N in argv) to the command.

    Raises GatewayTimeout after `timeout` seconds and GatewayError when `check` is set and
    the command exits non-zero, with the command's own (last) error line for people.
    """
    if not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError("argv must be a non-empty list of strings")
    log.debug("run %s", argv[0])
    try:
        proc = subprocess.run(
            argv,
            input=stdin if stdin is not None else b"",
            capture_output=True,
            timeout=timeout,
            check=False,
            env=env,
            pass_fds=pass_fds,
            cwd=cwd,
        )
    except subprocess.TimeoutExpired:
        raise GatewayTimeout(f"{argv[0]} did not finish within {timeout:g} seconds") from None
    except FileNotFoundError:
        raise GatewayError(f"{argv[0]} is not installed on this host") from None
    result = Result(
        tuple(argv),
        proc.returncode,
        proc.stdout.decode(errors="replace"),
        proc.stderr.decode(errors="replace"),
    )
    if check and proc.returncode != 0:
        lines = [ln.strip() for ln in result.stderr.splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit status {proc.returncode}"
        raise GatewayError(f"{argv[0]} failed: {reason}")
    return result
