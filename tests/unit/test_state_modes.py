"""The state directory and its secrets (SQLite database with sessions and password hashes,
demo passwords, logs, Celery beat's schedule, key store) are private to the portal's user:
run.sh makes them so, and the start-up check refuses them open, one line per path."""

import os
import stat
import subprocess
from pathlib import Path

import pytest
from django.core.checks import run_checks
from django.test import override_settings

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")


def open_state(var: Path) -> list[Path]:
    """A state directory as earlier versions left it: 0755, files 0644."""
    for d in (var, var / "log", var / "keys"):
        d.mkdir()
        os.chmod(d, 0o755)  # noqa: S103  (the bug under test)
    files = [var / name for name in ("portal.sqlite3", "demo-credentials.txt", "celerybeat-schedule", "log/beat.log")]
    for f in files:
        f.write_text("secret")
        os.chmod(f, 0o644)
    return files


def state_settings(var: Path):
    return override_settings(
        VAR_DIR=var,
        ENCRYPTION_KEY_DIR=var / "keys",
        ENCRYPTION_HEADER_BACKUP_DIR=var / "luks-headers",
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(var / "portal.sqlite3")}},
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def state_errors():
    return [e for e in run_checks(tags=["security"]) if e.id == "core.E001"]


def test_the_start_check_refuses_open_state_one_line_per_path_with_its_fix(tmp_path):
    var = tmp_path / "var"
    files = open_state(var)
    with state_settings(var):
        errors = state_errors()
        lines = [e.msg for e in errors]
        assert all("\n" not in line for line in lines)
        for path in [var, var / "log", var / "keys"]:
            assert f"{path} is open to other local users (mode 0755): run `chmod 700 {path}`" in lines
        for path in files:
            assert f"{path} is open to other local users (mode 0644): run `chmod 600 {path}`" in lines
        for line in lines:  # the fix it names is the fix
            fix = line.split("run `")[1].rstrip("`").split()
            subprocess.run(fix, check=True, timeout=10)
        assert state_errors() == []


def test_run_sh_closes_an_open_state_dir_and_its_processes_create_private_files(tmp_path):
    var = tmp_path / "var"
    files = open_state(var)
    script = f'source "{ROOT}/scripts/private-state.sh"; make_state_private "$1"; echo >"$1/new.sqlite3"; mkdir "$1/d"'
    subprocess.run(["bash", "-euc", script, "bash", str(var)], check=True, timeout=30)
    assert mode(var) == mode(var / "log") == mode(var / "d") == 0o700
    assert {mode(f) for f in [*files, var / "new.sqlite3"]} == {0o600}
    with state_settings(var):
        assert state_errors() == []


def test_run_sh_uses_the_private_state_and_checks_before_it_starts():
    run = (ROOT / "scripts" / "run.sh").read_text()
    assert run.index("make_state_private") < run.index("manage.py check") < run.index("manage.py migrate")


def test_the_development_settings_create_a_private_state_dir(tmp_path):
    var = tmp_path / "fresh-var"
    env = {**os.environ, "PORTAL_VAR_DIR": str(var), "DJANGO_SETTINGS_MODULE": "hypervisor_web.settings.dev"}
    subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "-c", "import django; django.setup()"],
        cwd=ROOT, env=env, check=True, timeout=60,
    )  # fmt: skip
    assert mode(var) == 0o700
