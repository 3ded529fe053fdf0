"""System checks run at start (runserver, migrate, seed_demo, `manage.py check`; run.sh and
test.sh call them first). Each problem is one line: what is wrong and how to fix it."""

import pwd
import stat
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings
from django.core.checks import Error, register

from apps.core.errors import PortalError
from apps.core.gateways import host_paths
from apps.core.gateways import libvirt as gw


def _mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(path.lstat().st_mode)
    except FileNotFoundError:
        return None


def secret_paths() -> tuple[list[Path], list[Path]]:
    """The state that must stay private: (directories, files). Live session keys and password
    hashes are in the SQLite database; the demo passwords, the key store, the LUKS header
    backups, the logs and Celery beat's schedule sit beside it."""
    var = Path(settings.VAR_DIR)
    dirs = [var, var / "log", Path(settings.ENCRYPTION_KEY_DIR), Path(settings.ENCRYPTION_HEADER_BACKUP_DIR)]
    files = [var / "demo-credentials.txt", *var.glob("celerybeat-schedule*")]
    if (var / "log").is_dir():
        files += [p for p in (var / "log").iterdir() if p.is_file()]
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith(("sqlite3", "sqlite_test")) and str(db["NAME"]) != ":memory:":
        files += [Path(f"{db['NAME']}{suffix}") for suffix in ("", "-wal", "-shm", "-journal")]
    return dirs, files


def open_secret_paths() -> list[str]:
    """One line per secret path other local users may read or enter, with its fix."""
    dirs, files = secret_paths()
    problems = []
    for paths, fix in ((dirs, "chmod 700"), (files, "chmod 600")):
        for path in paths:
            mode = _mode(path)
            if mode is not None and mode & 0o077:
                problems.append(f"{path} is open to other local users (mode {mode:04o}): run `{fix} {path}`")
    return problems


@register("security")
def state_is_private(app_configs, **kwargs):
    return [Error(line, id="core.E001") for line in open_secret_paths()]


def _local_system_libvirt(uri: str) -> bool:
    """qemu:///system (or qemu+unix:///system): QEMU runs on this machine as its own user."""
    parts = urlsplit(uri)
    return parts.scheme.split("+")[0] == "qemu" and not parts.hostname and parts.path == "/system"


def qemu_blocked(path: str | Path) -> tuple[str, host_paths.Blocked] | None:
    """(QEMU's user, the directory that stops it) when QEMU on the local host cannot reach
    `path`; None when it can, or when that cannot be known (remote or silent libvirtd)."""
    uri = settings.LIBVIRT_URI
    if not _local_system_libvirt(uri):
        return None
    try:
        identity = gw.host_qemu_identity(uri)
    except PortalError:  # libvirtd does not answer: whatever needs it says so
        return None
    blocked = host_paths.first_blocked(path, *identity) if identity else None
    if blocked is None:
        return None
    try:
        return pwd.getpwuid(blocked.uid).pw_name, blocked
    except KeyError:
        return f"uid {blocked.uid}", blocked


def image_dir_problem() -> str | None:
    """One line when QEMU's user cannot reach settings.IMAGE_DIR, with the fix; else None."""
    found = qemu_blocked(settings.IMAGE_DIR)
    if found is None:
        return None
    user, blocked = found
    return (
        f"QEMU (running as {user}) cannot reach the VM image directory {settings.IMAGE_DIR}: "
        f"{blocked.path} (mode {blocked.mode:04o}) does not let {user} through; set PORTAL_IMAGE_DIR to a "
        f"directory {user} can traverse (the default, /var/lib/hypervisor-portal/images, is made by `make setup`)"
    )


@register("images")
def images_reachable_by_qemu(app_configs, **kwargs):
    problem = image_dir_problem()
    return [Error(problem, id="core.E002")] if problem else []
