"""The lines the design draws, checked on the source: libvirt only in its one gateway, commands
only through the runner, no shell, no connection opened at import time."""

import ast
import os
import subprocess
import sys
from pathlib import Path

APPS = Path(__file__).resolve().parents[2] / "apps"
LIBVIRT = APPS / "core" / "gateways" / "libvirt"


def modules():
    for path in APPS.rglob("*.py"):
        if "migrations" not in path.parts:
            yield path, ast.parse(path.read_text(), filename=str(path))


def imported(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module.split(".")[0]


def is_gateway(path: Path) -> bool:
    return "gateways" in path.parts or path.name == "gateway.py"


def test_libvirt_is_imported_only_by_the_libvirt_gateway():
    """One libvirt gateway, the package apps/core/gateways/libvirt/: no other module (another
    app's gateway included) imports libvirt."""
    offenders = [
        str(p.relative_to(APPS)) for p, tree in modules() if "libvirt" in imported(tree) and LIBVIRT not in p.parents
    ]
    assert not offenders, f"libvirt imported outside apps/core/gateways/libvirt/: {offenders}"
    assert any("libvirt" in imported(tree) for p, tree in modules() if LIBVIRT in p.parents)


def test_subprocess_is_used_only_by_the_runner_and_gateways():
    offenders = [
        str(p.relative_to(APPS))
        for p, tree in modules()
        if "subprocess" in imported(tree) and not (is_gateway(p) or p.name == "runner.py")
    ]
    assert not offenders, f"subprocess used outside the runner and gateways: {offenders}"


def test_no_shell_anywhere():
    for path, tree in modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "shell":
                assert not (isinstance(node.value, ast.Constant) and node.value.value), f"shell=True in {path}"
            if (
                isinstance(node, ast.Attribute)
                and node.attr in {"system", "popen"}
                and getattr(node.value, "id", "") == "os"
            ):
                raise AssertionError(f"os.{node.attr} in {path}")


def test_views_do_not_reach_the_outside_world():
    for path, tree in modules():
        if path.name != "views.py":
            continue
        names = set(imported(tree))
        assert not names & {"libvirt", "subprocess"}, f"{path} reaches the outside world directly"
        source = path.read_text()
        assert "gateways" not in source, f"{path} calls a gateway; views call services"


def test_no_libvirt_connection_is_opened_at_import_time():
    """Load every app and URL in a fresh interpreter: no libvirt connection may exist yet."""
    code = (
        "import django; django.setup(); from django.urls import get_resolver; get_resolver().url_patterns; "
        "from apps.core.gateways.libvirt import connection; import sys; sys.exit(len(connection._connections))"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "hypervisor_web.settings.test"}
    result = subprocess.run([sys.executable, "-c", code], cwd=APPS.parent, env=env, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
