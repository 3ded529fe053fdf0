"""VM images live where QEMU (libvirt-qemu) can reach them whatever the clone's path, and a
start-up check names, in one line, the directory that stops QEMU and the fix."""

import grp
import os
import pwd
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from django.conf import settings
from django.core.checks import run_checks
from django.test import override_settings

from apps.core.checks import image_dir_problem
from apps.core.gateways import host_paths
from apps.core.gateways import libvirt as gw

pytestmark = pytest.mark.libvirt
QEMU = pwd.getpwnam("libvirt-qemu")


def qemu_may_enter(path: Path) -> bool:
    """The brief's own check, independent of the code under test."""
    argv = ["runuser", "-u", "libvirt-qemu", "--", "test", "-x", str(path)]
    return subprocess.run(argv, timeout=10).returncode == 0


@pytest.fixture
def private_clone():
    """A directory like /root or a Debian 12 home: 0700."""
    with tempfile.TemporaryDirectory(prefix="clone-") as home:  # mkdtemp makes it 0700
        yield Path(home)


def test_the_host_reports_the_user_qemu_runs_as(libvirt_uri):
    assert gw.host_qemu_identity(libvirt_uri) == (QEMU.pw_uid, grp.getgrnam("libvirt-qemu").gr_gid)


@pytest.mark.parametrize("as_root", [True, False], ids=["kernel-as-qemu", "mode-bits"])
def test_a_private_directory_is_named_as_the_one_that_blocks_qemu(private_clone, as_root, monkeypatch):
    if not as_root:  # a portal that cannot switch user reads the mode bits
        monkeypatch.setattr(host_paths.os, "geteuid", lambda: 1000)
    images = private_clone / "p" / "var" / "images"
    images.mkdir(parents=True)
    assert not qemu_may_enter(images)
    blocked = host_paths.first_blocked(images, QEMU.pw_uid, QEMU.pw_gid)
    assert (blocked.path, blocked.mode) == (private_clone, 0o700)
    os.chmod(private_clone, 0o711)  # noqa: S103
    assert qemu_may_enter(images) and host_paths.first_blocked(images, QEMU.pw_uid, QEMU.pw_gid) is None


def test_the_start_check_says_in_one_line_what_blocks_qemu_and_how_to_fix_it(libvirt_uri, private_clone):
    images = private_clone / "p" / "var" / "images"
    with override_settings(IMAGE_DIR=images):
        errors = [e for e in run_checks(tags=["images"]) if e.id == "core.E002"]
    assert [e.msg for e in errors] == [
        f"QEMU (running as libvirt-qemu) cannot reach the VM image directory {images}: {private_clone} (mode 0700) "
        "does not let libvirt-qemu through; set PORTAL_IMAGE_DIR to a directory libvirt-qemu can traverse "
        "(the default, /var/lib/hypervisor-portal/images, is made by `make setup`)"
    ]
    assert image_dir_problem() is None  # this run's image directory is fine


def test_the_suite_keeps_its_images_in_its_own_run_directory_of_the_image_dir(test_pool, libvirt_uri):
    (pool,) = [p for p in gw.pool_list(libvirt_uri) if p.name == test_pool]
    assert Path(pool.path) == settings.IMAGE_DIR / "pools" / test_pool
    assert settings.IMAGE_DIR.parent == Path(os.environ.get("PORTAL_IMAGE_DIR", "/var/lib/hypervisor-portal/images"))
    assert settings.IMAGE_DIR.name == f"test-{settings.TEST_RUN}"
    assert qemu_may_enter(Path(pool.path))


def test_image_directories_are_made_traversable_whatever_the_umask(tmp_path):
    os.chmod(tmp_path, 0o711)  # noqa: S103
    old = os.umask(0o077)
    try:
        made = host_paths.make_traversable_dir(tmp_path / "a" / "b")
    finally:
        os.umask(old)
    assert [oct(p.stat().st_mode & 0o777) for p in (made.parent, made)] == ["0o711", "0o711"]


def test_the_suite_stops_with_that_one_line_when_qemu_cannot_reach_its_images(private_clone):
    env = {**os.environ, "PORTAL_IMAGE_DIR": str(private_clone / "images")}
    env.pop("PORTAL_TEST_RUN", None)  # a run of its own: its own database
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/integration/test_vm_lifecycle.py", "-q"],
        cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 4, result.stdout[-2000:]
    lines = [line for line in result.stdout.splitlines() if "cannot reach the VM image directory" in line]
    assert len(lines) == 1 and "set PORTAL_IMAGE_DIR to a directory libvirt-qemu can traverse" in lines[0]
    assert " passed" not in result.stdout and " error" not in result.stdout
