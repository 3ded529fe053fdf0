"""System checks run at start (runserver, migrate, seed_demo, `manage.py check`; run.sh and
test.sh call them first). Each problem is one line: what is wrong and how to fix it."""

import stat
from pathlib import Path

from django.conf import settings
from django.core.checks import Error, register


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
