"""restic, the engine of the portal's backups: encrypted (AES-256 + Poly1305) and
deduplicated before anything reaches the repository.

Argv lists with timeouts through apps.core.runner. The repository password never appears
in argv, in the environment or in an error: it is written into a pipe whose read end restic
gets as `--password-file /dev/fd/N` (nothing on disk). restic runs with an environment of
our own (no RESTIC_PASSWORD or RESTIC_REPOSITORY inherited from the caller). Output is read
as JSON (`--json`) where restic offers it. restic's errors become the project's, with a
message for people: a wrong password, a lock held by another (or a killed) run, a missing
repository, a full destination.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from .. import runner
from ..errors import Conflict, GatewayError, NotFound

RESTIC = "restic"
COMPRESSION_MODES = ("auto", "off", "max")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class WrongPassword(GatewayError):
    """The password from the key store does not open the repository."""


class RepositoryLocked(Conflict):
    """Another restic process holds the repository's lock (or a killed one left it)."""


class RepositoryMissing(NotFound):
    """There is no restic repository at that path."""


class DestinationFull(GatewayError):
    """The destination ran out of space."""


@dataclass(frozen=True)
class Repository:
    path: str
    password: bytes = field(repr=False)
    cache_dir: str = ""


@dataclass(frozen=True)
class Progress:
    bytes_done: int
    bytes_total: int
    seconds_elapsed: int
    seconds_remaining: int
    percent: float


@dataclass(frozen=True)
class BackupSummary:
    snapshot_id: str
    bytes_processed: int
    data_added: int
    files: int


@dataclass(frozen=True)
class Snapshot:
    id: str
    short_id: str
    time: str
    hostname: str
    paths: tuple[str, ...]
    tags: tuple[str, ...]


@contextmanager
def _password_fd(password: bytes) -> Iterator[int]:
    """A pipe holding the password, read end open for the child; nothing touches disk."""
    if not password:
        raise GatewayError("No repository password was given; restic was not run.")
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, password)  # far below the pipe's 64 KiB buffer: never blocks
        os.close(write_end)
        write_end = -1
        yield read_end
    finally:
        if write_end >= 0:
            os.close(write_end)
        os.close(read_end)


def _env(repo: Repository) -> dict[str, str]:
    cache = repo.cache_dir or os.path.join(repo.path, ".portal-cache-unused")
    return {"PATH": PATH, "HOME": cache, "RESTIC_CACHE_DIR": cache, "RESTIC_PROGRESS_FPS": "1", "LANG": "C"}


def _argv(repo: Repository, fd: int, *args: str) -> list[str]:
    argv = [RESTIC, "--repo", repo.path, "--password-file", f"/dev/fd/{fd}"]
    if not repo.cache_dir:
        argv.append("--no-cache")
    return [*argv, *args]


def _error(repo: Repository, stderr: str, returncode: int, what: str) -> GatewayError | Conflict | NotFound:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    text = " ".join(lines).lower()
    if "wrong password" in text or "no key found" in text:
        return WrongPassword(
            f"The key store's password does not open the backup repository {repo.path}: it was replaced or "
            "re-keyed outside the portal. Nothing was written."
        )
    if "already locked" in text or "unable to create lock" in text:
        holder = next((ln for ln in lines if "locked" in ln.lower()), "")
        return RepositoryLocked(f"The backup repository {repo.path} is locked by another run ({holder}).")
    if "unable to open config file" in text or "is there a repository" in text:
        return RepositoryMissing(f"There is no backup repository at {repo.path}.")
    if "no space left on device" in text:
        return DestinationFull(f"The backup destination {repo.path} is full; restic stopped while {what}.")
    if "permission denied" in text or "read-only file system" in text:
        return GatewayError(f"The backup destination {repo.path} is not writable ({lines[-1] if lines else ''}).")
    reason = lines[-1] if lines else f"exit status {returncode}"
    return GatewayError(f"restic failed while {what}: {reason}")


def _run(repo: Repository, *args: str, what: str, timeout: float) -> runner.Result:
    with _password_fd(repo.password) as fd:
        result = runner.run(_argv(repo, fd, *args), timeout=timeout, check=False, env=_env(repo), pass_fds=(fd,))
    if result.returncode != 0:
        raise _error(repo, result.stderr, result.returncode, what)
    return result


def version(*, timeout: float = 30) -> str:
    return runner.run([RESTIC, "version"], timeout=timeout, env={"PATH": PATH}).stdout.strip()


def is_repository(path: str) -> bool:
    """True when `path` holds a restic repository (its config file), read without the password."""
    return os.path.isfile(os.path.join(path, "config"))


def init(repo: Repository, *, timeout: float = 120) -> None:
    """Create the repository (its master key encrypted with the password)."""
    _run(repo, "init", what="creating the repository", timeout=timeout)


def backup(
    repo: Repository,
    paths: list[str],
    *,
    tags: list[str],
    host: str,
    timeout: float,
    on_progress: Callable[[Progress], None] | None = None,
    compression: str = "auto",
) -> BackupSummary:
    """Back up files (each read whole: restic deduplicates unchanged chunks against earlier
    snapshots). `on_progress` gets restic's status about once a second. `compression`:
    restic's auto (zstd, fastest level), off (saves ~20% of restic's CPU on incompressible
    data, e.g. images of encrypted disks) or max."""
    if not paths or not all(os.path.isabs(p) for p in paths):
        raise ValueError("backup paths must be absolute")
    if compression not in COMPRESSION_MODES:
        raise ValueError(f"compression must be one of {COMPRESSION_MODES}")
    args = ["backup", "--json", "--host", host]
    if compression != "auto":  # restic's default; the flag is refused by format-1 repositories
        args += ["--compression", compression]
    for tag in tags:
        if "," in tag:
            raise ValueError("a restic tag cannot hold a comma")
        args += ["--tag", tag]
    args += ["--", *paths]
    summary: dict = {}

    def line(text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            return
        kind = message.get("message_type")
        if kind == "summary":
            summary.update(message)
        elif kind == "status" and on_progress is not None:
            on_progress(
                Progress(
                    bytes_done=int(message.get("bytes_done", 0)),
                    bytes_total=int(message.get("total_bytes", 0)),
                    seconds_elapsed=int(message.get("seconds_elapsed", 0)),
                    seconds_remaining=int(message.get("seconds_remaining", 0)),
                    percent=float(message.get("percent_done", 0.0)),
                )
            )

    with _password_fd(repo.password) as fd:
        result = runner.stream(
            _argv(repo, fd, *args), on_line=line, timeout=timeout, env=_env(repo), pass_fds=(fd,)
        )
    if result.returncode != 0 or not summary.get("snapshot_id"):
        if result.returncode == 3:  # restic: "snapshot created but some files could not be read"
            raise GatewayError("restic could not read every disk file; the partial snapshot is not counted.")
        raise _error(repo, result.stderr, result.returncode, "backing up")
    return BackupSummary(
        snapshot_id=summary["snapshot_id"],
        bytes_processed=int(summary.get("total_bytes_processed", 0)),
        data_added=int(summary.get("data_added", 0)),
        files=int(summary.get("total_files_processed", 0)),
    )


def snapshots(repo: Repository, *, tags: list[str] | None = None, timeout: float = 300) -> list[Snapshot]:
    args = ["snapshots", "--json"]
    for tag in tags or ():
        args += ["--tag", tag]
    raw = _run(repo, *args, what="listing snapshots", timeout=timeout).stdout
    try:
        items = json.loads(raw or "[]") or []
    except ValueError:
        raise GatewayError("restic gave no readable list of snapshots.") from None
    return [
        Snapshot(
            id=s["id"],
            short_id=s.get("short_id", s["id"][:8]),
            time=s.get("time", ""),
            hostname=s.get("hostname", ""),
            paths=tuple(s.get("paths") or ()),
            tags=tuple(s.get("tags") or ()),
        )
        for s in items
    ]


def restore(repo: Repository, snapshot_id: str, target: str, *, timeout: float) -> None:
    """Restore the snapshot's files under `target` (absolute paths kept below it)."""
    if not snapshot_id.isalnum():
        raise ValueError("malformed snapshot id")
    _run(repo, "restore", snapshot_id, "--target", target, what="restoring", timeout=timeout)


def check(repo: Repository, *, read_data: bool = False, timeout: float) -> str:
    """restic's own consistency check of the repository (structure; with read_data, every
    pack's bytes too). Raises GatewayError with restic's reason when it finds damage."""
    args = ["check", *(["--read-data"] if read_data else [])]
    return _run(repo, *args, what="checking the repository", timeout=timeout).stdout


def forget(
    repo: Repository,
    *,
    tags: list[str],
    keep_last: int = 0,
    keep_daily: int = 0,
    keep_weekly: int = 0,
    keep_monthly: int = 0,
    prune: bool = True,
    timeout: float,
) -> list[str]:
    """Apply a retention policy to the snapshots carrying `tags` (grouped by tags); returns
    the ids of the snapshots removed. With prune, their data no longer needed is deleted."""
    keep = {"--keep-last": keep_last, "--keep-daily": keep_daily, "--keep-weekly": keep_weekly,
            "--keep-monthly": keep_monthly}  # fmt: skip
    if not any(keep.values()):
        raise ValueError("a retention policy must keep something")
    args = ["forget", "--json", "--group-by", "tags"]
    for tag in tags:
        args += ["--tag", tag]
    for flag, count in keep.items():
        if count:
            args += [flag, str(int(count))]
    if prune:
        args.append("--prune")
    raw = _run(repo, *args, what="applying the retention policy", timeout=timeout).stdout
    removed: list[str] = []
    for text in raw.splitlines():  # --prune appends text after the JSON line
        text = text.strip()
        if not text.startswith("["):
            continue
        try:
            groups = json.loads(text) or []
        except ValueError:
            continue
        for group in groups:
            removed += [s["id"] for s in group.get("remove") or ()]
    return removed


def unlock(repo: Repository, *, timeout: float = 120) -> None:
    """Remove stale locks (left by a killed run: its process is gone or the lock is old);
    a live run's lock stays."""
    _run(repo, "unlock", what="removing stale locks", timeout=timeout)
