"""Paths as another local user sees them: QEMU runs as its own user (libvirt-qemu) and
reaches a VM's image only if it may enter every directory on the way (libvirt hands it the
image file itself, never the directories). A clone under /root or a 0700 home is such a
dead end, hence the image directory (settings.IMAGE_DIR) and this check."""

from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from apps.core import runner

TRAVERSABLE = 0o711  # like /var/lib/libvirt/images: others may enter, not list


@dataclass(frozen=True)
class Blocked:
    path: Path  # the first directory on the way that the user may not enter
    mode: int
    uid: int


def make_traversable_dir(path: str | Path) -> Path:
    """Create `path` and its missing parents 0711 (whatever the umask), so QEMU's user may
    enter them; existing directories are left as they are."""
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:  # made meanwhile by another process
            continue
        os.chmod(directory, TRAVERSABLE)  # noqa: S103  (enter, not list: what QEMU needs)
    return path


def _groups(uid: int, gid: int) -> list[int]:
    try:
        return os.getgrouplist(pwd.getpwuid(uid).pw_name, gid)
    except KeyError:
        return [gid]


def _may_enter(directory: Path, uid: int, gid: int, groups: list[int]) -> bool:
    if os.geteuid() == 0:  # ask the kernel, as that user (ACLs included)
        argv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", f"--groups={','.join(map(str, groups))}"]
        return runner.run([*argv, "test", "-x", str(directory)], check=False, timeout=10).returncode == 0
    st = directory.stat()  # not root: we cannot switch user, read the mode bits
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in groups:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def first_blocked(path: str | Path, uid: int, gid: int) -> Blocked | None:
    """The first directory from / down to `path` (or to its nearest existing parent, which
    make_traversable_dir would extend) that uid:gid, with that user's groups, may not
    enter; None when it reaches `path`."""
    path = Path(path).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    groups = _groups(uid, gid)
    if os.geteuid() == 0 and _may_enter(existing, uid, gid, groups):  # one kernel check for the whole way
        return None
    for directory in (*reversed(existing.parents), existing):
        if not _may_enter(directory, uid, gid, groups):
            return Blocked(directory, stat.S_IMODE(directory.stat().st_mode), uid)
    return None
