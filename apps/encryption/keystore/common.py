"""The key store's building blocks: sizes, atomic private files (0700 directories, 0400
files, written by temp file, fsync and link or rename), base64 and Argon2id."""

from __future__ import annotations

import base64
import logging
import os
import stat
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from apps.core.errors import NotFound

from ..errors import KeyFileRejected

log = logging.getLogger(__name__)

DISK_KEY_BYTES = 64
KEK_BYTES = 32
NONCE_BYTES = 12
FORMAT = 1
_CHECK_PLAINTEXT = b"hypervisor-portal key store check"
RESTORE_HINT = "Restore it from escrow: the disk's page, or `vm_encryption restore-key VM --escrow FILE`."


# ------------------------------------------------------------------ atomic files


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (0700) if missing; refuse one with another mode or owner."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise KeyFileRejected(f"{path} is not a directory; the key store refuses to use it.")
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) != 0o700:
        raise KeyFileRejected(
            f"The key directory {path} has mode {stat.S_IMODE(st.st_mode):04o} and owner {st.st_uid}; "
            f"it must be 0700 and owned by uid {os.geteuid()}. Fix it before using the key store."
        )
    return path


def write_private_file(path: Path, data: bytes, *, replace: bool = False) -> None:
    """Write `data` to `path` atomically, mode 0400, in its (0700) directory. Without
    `replace`, an existing file is never overwritten, even one created meanwhile: the new
    file is linked in (link fails if the name exists), not renamed over it."""
    directory = ensure_private_dir(path.parent)
    if path.exists() and not replace:
        raise KeyFileRejected(f"{path} already exists; refusing to overwrite a key file.")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o400)
        if replace:
            os.rename(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise KeyFileRejected(f"{path} already exists; refusing to overwrite a key file.") from None
            os.unlink(tmp)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_private_file(path: Path, what: str = "key file") -> bytes:
    """Read a 0400 file owned by us, refusing symlinks, other modes and other owners."""
    ensure_private_dir(path.parent)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise NotFound(f"The {what} {path.name} is missing from the key store.") from None
    except OSError:
        raise KeyFileRejected(f"The {what} {path.name} is not a regular file; refusing to use it.") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        mode = stat.S_IMODE(st.st_mode)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or mode != 0o400:
            raise KeyFileRejected(
                f"The {what} {path.name} has mode {mode:04o} (owner uid {st.st_uid}); it must be 0400 and "
                f"owned by uid {os.geteuid()}. It may have been tampered with: refusing to use it."
            )
        return fh.read()


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode(), validate=True)


def argon2id(passphrase: bytes, salt: bytes, *, memory_kib: int, iterations: int, length: int = 32) -> bytes:
    return Argon2id(salt=salt, length=length, iterations=iterations, lanes=4, memory_cost=memory_kib).derive(passphrase)


