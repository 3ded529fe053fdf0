"""The one way this project runs a command: an argv list, a timeout, secrets on stdin or a
file descriptor, never in argv, never through a shell.

A command that outlives its timeout (or whose caller is interrupted, e.g. by a job's soft
time limit) is asked to stop with SIGTERM first: cryptsetup and qemu-img then finish the
block they are writing and leave a consistent state. Only a command still running after
the grace period (settings.COMMAND_KILL_GRACE) is killed with SIGKILL."""

from __future__ import annotations

import logging
import signal
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
    kill_grace: float | None = None,
) -> Result:
    """Run argv and return its output. `stdin` carries secrets; it is never logged.

    `pass_fds` hands open descriptors (e.g. the read end of a pipe holding a second secret,
    named as /dev/fd/N in argv) to the command.

    After `timeout` seconds the command gets SIGTERM, and SIGKILL only if it is still running
    `kill_grace` seconds later (default settings.COMMAND_KILL_GRACE); then GatewayTimeout.
    Raises GatewayError when `check` is set and the command exits non-zero, with the
    command's own (last) error line for people.
    """
    if not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError("argv must be a non-empty list of strings")
    log.debug("run %s", argv[0])
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            pass_fds=pass_fds,
            cwd=cwd,
        )
    except FileNotFoundError:
        raise GatewayError(f"{argv[0]} is not installed on this host") from None
    try:
        stdout, stderr = proc.communicate(stdin if stdin is not None else b"", timeout=timeout)
    except subprocess.TimeoutExpired:
        how = _stop(proc, _grace(kill_grace))
        raise GatewayTimeout(f"{argv[0]} did not finish within {timeout:g} seconds ({how})") from None
    except BaseException:  # the caller was interrupted (soft time limit, Ctrl-C): stop it cleanly too
        _stop(proc, _grace(kill_grace))
        raise
    result = Result(
        tuple(argv),
        proc.returncode,
        stdout.decode(errors="replace"),
        stderr.decode(errors="replace"),
    )
    if check and proc.returncode != 0:
        lines = [ln.strip() for ln in result.stderr.splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit status {proc.returncode}"
        raise GatewayError(f"{argv[0]} failed: {reason}")
    return result


def _grace(kill_grace: float | None) -> float:
    if kill_grace is not None:
        return kill_grace
    from django.conf import settings

    return float(getattr(settings, "COMMAND_KILL_GRACE", 60))


def _stop(proc: subprocess.Popen, grace: float) -> str:
    """SIGTERM, then SIGKILL if the command is still running `grace` seconds later; reaps
    it. Says which it took."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.communicate(timeout=grace)
        how = "stopped with SIGTERM"
    except subprocess.TimeoutExpired:
        log.warning("%s ignored SIGTERM for %g seconds: killing it", proc.args[0], grace)
        proc.kill()
        proc.communicate()
        how = f"killed after ignoring SIGTERM for {grace:g} seconds"
    return how
