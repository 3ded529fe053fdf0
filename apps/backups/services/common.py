"""Shared pieces of the backup services: destinations under the allowed roots, the
repository of a destination with its password from the key store (fail closed), checksums,
private directories."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

from django.conf import settings
from django.db import transaction

from apps.core.errors import Conflict, InvalidInput, NotFound
from apps.core.gateways import restic

from ..models import BackupRepository

REPOSITORY_BINDING = "backup-repository"  # the key file's "vm" binding: this key opens a repository
CHUNK = 4 << 20
RACY_SECONDS = 2  # file times move in coarse clock ticks: a file changed this recently is not vouched for


def allowed_roots() -> list[Path]:
    return [Path(os.path.realpath(r)) for r in settings.BACKUP_ALLOWED_ROOTS]


def validate_destination(destination: str) -> str:
    """The destination's real path when it lies inside an allowed root (not the root itself);
    InvalidInput otherwise. Nothing is created here."""
    if not isinstance(destination, str) or not destination.strip():
        raise InvalidInput("Give a destination directory for the backups.")
    if not os.path.isabs(destination) or "\x00" in destination or len(destination) > 400:
        raise InvalidInput(f"The destination {destination!r} must be an absolute path.")
    real = Path(os.path.realpath(destination))
    roots = allowed_roots()
    for root in roots:
        if real != root and os.path.commonpath([real, root]) == str(root):
            return str(real)
    shown = ", ".join(str(r) for r in roots) or "none configured (BACKUP_ALLOWED_ROOTS)"
    raise InvalidInput(f"The destination {destination} is outside the allowed backup roots ({shown}).")


def repository_for(destination: str, purpose: str = BackupRepository.Purpose.DISKS) -> BackupRepository:
    """The portal's repository row at `destination` (validated), made on first use. A
    directory that already holds a restic repository the portal did not make is refused:
    its password is not in the key store. A disk repository is never used for key material
    (nor the other way round): they stay apart."""
    path = validate_destination(destination)
    existing = BackupRepository.objects.filter(path=path).first()
    if existing is not None:
        if existing.purpose != purpose:
            raise Conflict(f"{path} holds the portal's {existing.get_purpose_display()}; it cannot also hold "
                           f"{BackupRepository.Purpose(purpose).label}. Choose another destination.")  # fmt: skip
        return existing
    if restic.is_repository(path):
        raise Conflict(f"{path} holds a restic repository the portal did not create; choose another destination.")
    if os.path.isdir(path) and any(os.scandir(path)):
        raise Conflict(f"{path} is not empty and holds no backup repository; choose an empty or new directory.")
    with transaction.atomic():
        repo, _ = BackupRepository.objects.get_or_create(path=path, defaults={"key_id": _new_key_id(),
                                                                              "purpose": purpose})  # fmt: skip
    return repo


def keys_destination(destination: str) -> str:
    """Where the key material of backups to `destination` goes: BACKUP_KEYS_DESTINATION, or
    `<destination>-keys` beside it (validated like any destination)."""
    configured = (settings.BACKUP_KEYS_DESTINATION or "").strip()
    return validate_destination(configured or f"{validate_destination(destination)}-keys")


def keys_repository_for(destination: str) -> BackupRepository:
    return repository_for(keys_destination(destination), BackupRepository.Purpose.KEYS)


def _new_key_id() -> str:
    import uuid

    return uuid.uuid4().hex


def _store():
    from apps.encryption.services import get_store

    return get_store()


def repository_password(repo: BackupRepository, *, create: bool = False) -> bytes:
    """The repository's password, from the key store (encrypted there under the KEK). A
    sealed store or a missing key raises: the run fails, nothing is written anywhere.
    With create=True a missing key is made (only for a repository not yet initialized)."""
    store = _store()
    store.require_unsealed()  # StoreSealed: fail closed
    try:
        key = store.get(key_id=repo.key_id, vm_uuid=REPOSITORY_BINDING, volume=repo.path)
    except NotFound:
        if not create:
            raise NotFound(
                f"The password of the backup repository {repo.path} is missing from the key store; "
                "the run was refused (it never writes an unprotected copy)."
            ) from None
        key = os.urandom(64)
        store.put(key_id=repo.key_id, vm_uuid=REPOSITORY_BINDING, volume=repo.path, key=key)
    return key.hex().encode()


def cache_dir() -> str:
    return str(private_dir(Path(settings.BACKUP_CACHE_DIR)))


def open_repository(repo: BackupRepository, *, initialize: bool = False) -> restic.Repository:
    """A handle on the repository with its password; with initialize, the destination
    directory (0700) and the repository are made if missing."""
    if initialize and not restic.is_repository(repo.path):
        password = repository_password(repo, create=True)
        handle = restic.Repository(repo.path, password, cache_dir())
        try:
            Path(repo.path).mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidInput(f"The destination {repo.path} cannot be created: {exc.strerror}.") from None
        if not os.access(repo.path, os.W_OK | os.X_OK):
            raise InvalidInput(f"The destination {repo.path} is not writable.")
        restic.init(handle)
        return handle
    if not restic.is_repository(repo.path):
        raise NotFound(f"The backup repository {repo.path} is gone (no restic repository there).")
    return restic.Repository(repo.path, repository_password(repo), cache_dir())


def with_stale_locks_removed(handle: restic.Repository, fn):
    """Run fn(); when a lock blocks it, remove stale locks (a killed run's: its process is
    gone) with `restic unlock` and try once more. A live run's lock still refuses."""
    try:
        return fn()
    except restic.RepositoryLocked:
        restic.unlock(handle)
        return fn()


def private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def sha256_file(path: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def file_identity(path: str) -> dict:
    """What changes whenever the file's bytes can have changed (restic's own test for an
    unchanged file, plus ctime, which no one can set back)."""
    st = os.stat(path)
    return {"dev": st.st_dev, "ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns}  # fmt: skip


def checksum(path: str, previous: dict | None = None) -> tuple[str, int, dict]:
    """(sha256, size, identity) of the file. When `previous` (a disk entry of an earlier good
    run: sha256, size, identity) has the file's current identity, its checksum is reused
    instead of reading the whole disk again; verification restores and re-checks it anyway."""
    identity = file_identity(path)
    if previous and previous.get("identity") == identity and previous.get("sha256"):
        return previous["sha256"], int(previous["size"]), identity
    digest, size = sha256_file(path)
    if file_identity(path) != identity or time.time_ns() - identity["ctime_ns"] < RACY_SECONDS * 10**9:
        identity = {}  # written while read, or so recently that a write in the same clock tick would not show
    return digest, size, identity
