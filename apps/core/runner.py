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
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .errors import GatewayError, GatewayTimeout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def _start(argv, stdin, *, env, pass_fds, cwd) -> subprocess.Popen:
    """The one way a command starts: an argv list of strings (never a shell), its output piped."""
    if not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError("argv must be a non-empty list of strings")
    log.debug("run %s", argv[0])
    try:
        return subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                pass_fds=pass_fds, cwd=cwd)  # fmt: skip
    except FileNotFoundError:
        raise GatewayError(f"{argv[0]} is not installed on this host") from None


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
    proc = _start(argv, subprocess.PIPE, env=env, pass_fds=pass_fds, cwd=cwd)
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


def stream(
    argv: list[str],
    *,
    on_line: Callable[[str], None],
    timeout: float,
    env: dict[str, str] | None = None,
    pass_fds: tuple[int, ...] = (),
    cwd: str | None = None,
    kill_grace: float | None = None,
) -> Result:
    """Run argv, handing each line of its standard output to `on_line` as it comes (progress
    of a long command, e.g. `restic backup --json`). Same rules as `run`: argv list, stdin
    closed, SIGTERM then SIGKILL after `timeout`; returns the Result (stdout holds the last
    line only), never raises for a non-zero exit (the caller reads the code and stderr)."""
    proc = _start(argv, subprocess.DEVNULL, env=env, pass_fds=pass_fds, cwd=cwd)
    stderr_chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: stderr_chunks.append(proc.stderr.read()), daemon=True)
    reader.start()
    timed_out = threading.Event()

    def expire() -> None:
        timed_out.set()
        proc.send_signal(signal.SIGTERM)

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    last = ""
    try:
        for raw in proc.stdout:
            last = raw.decode(errors="replace").rstrip("\n")
            if last:
                on_line(last)
        proc.wait()
    except BaseException:  # the caller was interrupted, or on_line failed: stop the command cleanly
        timer.cancel()
        _stop(proc, _grace(kill_grace))
        raise
    finally:
        timer.cancel()
    reader.join(timeout=10)
    if timed_out.is_set():
        raise GatewayTimeout(f"{argv[0]} did not finish within {timeout:g} seconds (stopped with SIGTERM)")
    return Result(tuple(argv), proc.returncode, last, b"".join(stderr_chunks).decode(errors="replace"))
