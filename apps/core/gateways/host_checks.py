"""Reads of the machine the portal runs on, for the security posture checks: kernel
settings under /proc/sys, LSM state under /sys and /proc, and a few read-only commands
(`sshd -T`, `auditctl -l`, `apt-get -s upgrade`).

Commands are argv lists run by the runner with a timeout; a command that hangs is stopped
after `timeout` seconds (SIGTERM, then SIGKILL a second later) and reported as
GatewayTimeout, so no check can stall the others. Binaries are looked up only in
settings.HOST_CHECK_PATH (never a user's PATH). Nothing here touches the database.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from apps.core import runner
from apps.core.errors import GatewayError, GatewayTimeout

PROC = Path("/proc")
SYS = Path("/sys")


class CommandMissing(GatewayError):
    """The command is not installed on this machine."""


@dataclass(frozen=True)
class CommandOutput:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def read_text(path: Path | str) -> str | None:
    """A small kernel file's contents (stripped), None when it does not exist. Other errors
    (no permission, EINVAL on an LSM attribute with no LSM) are GatewayError."""
    try:
        return Path(path).read_text(errors="replace").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise GatewayError(f"cannot read {path}: {exc.strerror or exc}") from None


def sysctl(name: str) -> str | None:
    """A kernel parameter by its sysctl name (kernel.kptr_restrict), None when the kernel
    has no such parameter."""
    if not name or ".." in name or name.startswith(".") or "/" in name:
        raise ValueError(f"not a sysctl name: {name!r}")
    return read_text(PROC / "sys" / name.replace(".", "/"))


def which(command: str) -> str | None:
    return shutil.which(command, path=settings.HOST_CHECK_PATH)


def run(argv: list[str], *, timeout: float | None = None) -> CommandOutput:
    """Run a read-only command found in HOST_CHECK_PATH. Raises CommandMissing when it is not
    installed and GatewayTimeout when it outlives `timeout` (settings.POSTURE_COMMAND_TIMEOUT)."""
    path = which(argv[0])
    if path is None:
        raise CommandMissing(f"{argv[0]} is not installed on this host")
    limit = settings.POSTURE_COMMAND_TIMEOUT if timeout is None else timeout
    env = {"PATH": settings.HOST_CHECK_PATH, "LC_ALL": "C", "LANG": "C"}
    try:
        result = runner.run([path, *argv[1:]], timeout=limit, check=False, env=env, kill_grace=1)
    except GatewayTimeout:
        raise GatewayTimeout(f"{argv[0]} timed out after {limit:g} seconds") from None
    return CommandOutput(tuple(argv), result.returncode, result.stdout, result.stderr)


def processes_named(prefix: str) -> list[tuple[int, str]]:
    """(pid, command name) of the processes whose name starts with `prefix`."""
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:  # ended meanwhile, or not ours to read
            continue
        if comm.startswith(prefix):
            found.append((int(entry.name), comm))
    return sorted(found)


def process_security_label(pid: int) -> str | None:
    """The LSM label of a process (AppArmor profile or SELinux context), None when the
    kernel runs no LSM that labels processes."""
    for path in (PROC / str(pid) / "attr" / "apparmor" / "current", PROC / str(pid) / "attr" / "current"):
        try:
            value = read_text(path)
        except GatewayError:
            continue  # EINVAL: no LSM behind this attribute
        if value:
            return value.rstrip("\x00")
    return None


def is_root() -> bool:
    return os.geteuid() == 0


LYNIS_TEST_ID = re.compile(r"^[A-Z]{2,8}-[0-9]{4}$")


def lynis_audit(*, timeout: float, tests: list[str] | tuple[str, ...] = ()) -> tuple[str, str]:
    """Run `lynis audit system` (Debian's lynis; read-only) with its report and log in a
    private temporary directory; returns (report .dat text, the command's last output
    lines). `tests` (lynis test ids such as KRNL-6000) runs only those (`--tests`), else
    every test. GatewayTimeout past `timeout`, CommandMissing when lynis is not installed."""
    import tempfile

    bad = [t for t in tests if not LYNIS_TEST_ID.match(t)]
    if bad:
        raise GatewayError(f"Not lynis test ids: {', '.join(map(repr, bad))} (expected e.g. KRNL-6000).")
    with tempfile.TemporaryDirectory(prefix="portal-lynis-") as tmp:
        report = Path(tmp) / "report.dat"
        argv = ["lynis", "audit", "system", "--quick", "--no-colors", "--quiet",
                "--report-file", str(report), "--logfile", str(Path(tmp) / "lynis.log")]  # fmt: skip
        if tests:
            argv += ["--tests", " ".join(tests)]
        out = run(argv, timeout=timeout)
        text = read_text(report)
    tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-5:])
    if out.returncode != 0 or not text:
        raise GatewayError(f"lynis failed (exit status {out.returncode}): {tail or 'no report written'}")
    return text, tail


def install_file(path: Path | str, text: str, *, mode: int = 0o640) -> None:
    """Write a configuration file atomically (a temporary file beside it, then a rename):
    the one write this module makes, for the audit rules the portal installs."""
    import tempfile

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise GatewayError(f"cannot write {path}: {exc.strerror or exc}") from None
