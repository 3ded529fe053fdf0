"""Plain file operations on disk images (no subprocess): free space, growing an image,
saving its head before in-place encryption."""

from __future__ import annotations

import os

from apps.core.errors import Conflict

CHUNK = 4 << 20


def free_bytes(directory: str) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def allocated_bytes(path: str) -> int:
    """Bytes the file really occupies (a sparse image less than its size)."""
    return os.stat(path).st_blocks * 512


def fsync(path: str) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def rename(source: str, destination: str) -> None:
    """Atomic rename within one directory, flushed to disk (the directory entry too)."""
    os.rename(source, destination)
    _fsync_dir(os.path.dirname(destination))


def copy_owner_and_mode(source: str, destination: str) -> None:
    """Give `destination` the owner, group and mode of `source` (a copy replacing it)."""
    st = os.stat(source)
    os.chown(destination, st.st_uid, st.st_gid)
    os.chmod(destination, st.st_mode & 0o7777)


def grow(path: str, size: int) -> None:
    """Extend the image to `size` bytes (sparse zeros at the end) and flush it."""
    with open(path, "r+b") as fh:
        if os.fstat(fh.fileno()).st_size > size:
            raise Conflict(f"{path} is larger than expected; refusing to shrink it.")
        fh.truncate(size)
        os.fsync(fh.fileno())


def copy_head(path: str, destination: str, nbytes: int) -> None:
    """Save the first `nbytes` of `path` to a new 0400 file (written atomically)."""
    tmp = f"{destination}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)
    try:
        with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
            left = nbytes
            while left > 0:
                chunk = src.read(min(CHUNK, left))
                if not chunk:
                    break
                out.write(chunk)
                left -= len(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.rename(tmp, destination)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _fsync_dir(os.path.dirname(destination))


def _fsync_dir(directory: str) -> None:
    dir_fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def destroy(path: str) -> bool:
    """Overwrite the file with random bytes, flush, then remove it (False if it was gone).
    On copy-on-write or journalled-data file systems old blocks may survive: keep header
    backups on a plain file system, or encrypted."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    except PermissionError:  # 0400 and not root: make it writable for the overwrite
        os.chmod(path, 0o600)
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    with os.fdopen(fd, "r+b") as fh:
        left = os.fstat(fh.fileno()).st_size
        while left > 0:
            n = min(CHUNK, left)
            fh.write(os.urandom(n))
            left -= n
        fh.flush()
        os.fsync(fh.fileno())
    os.unlink(path)
    dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return True
