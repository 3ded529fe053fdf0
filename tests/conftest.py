"""Shared fixtures: role personas, real libvirt objects with unique names and guaranteed
clean-up, and a real Celery worker on the real Redis."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from apps.accounts.models import Role, RoleAssignment
from apps.core.checks import image_dir_problem
from apps.core.gateways import libvirt as gw
from apps.core.gateways.libvirt import domain_xml, network_remove
from apps.core.models import Host, Job

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct-horse-battery-staple"


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def totp_code(user) -> str:
    """A fresh code of the user's authenticator, as their app would show it. The device
    forgets the last time step it accepted first: a test that signs in or re-authenticates
    several times within 30 s stands for a user who waited for the next code (replays are
    tested without this, in tests/unit/test_two_factor.py)."""
    from django_otp.oath import TOTP
    from django_otp.plugins.otp_totp.models import TOTPDevice

    device = TOTPDevice.objects.get(user_id=user.pk, confirmed=True)
    TOTPDevice.objects.filter(pk=device.pk).update(last_t=-1, drift=0, throttling_failure_count=0)
    return f"{TOTP(device.bin_key, device.step, device.t0, device.digits).token():0{device.digits}d}"


def give_mfa(user):
    """Turn two-factor sign-in on for `user` (a confirmed TOTP device), as enrolment does."""
    from django_otp.plugins.otp_totp.models import TOTPDevice

    return TOTPDevice.objects.create(user=user, name="authenticator", confirmed=True)


def reauthenticate(client, password: str = PASSWORD) -> None:
    """Type the password again (the sudo mode that REAUTH_POLICY's actions ask for), and a
    code for a user with two-factor sign-in."""
    from django.contrib.auth import get_user_model
    from django.urls import reverse

    from apps.accounts.mfa_status import mfa_enabled

    user = get_user_model().objects.get(pk=client.session["_auth_user_id"])
    data = {"password": password, "next": "/"}
    if mfa_enabled(user):
        data["code"] = totp_code(user)
    response = client.post(reverse("accounts:reauth"), data)
    assert response.status_code == 302, "the re-authentication was refused"


@pytest.fixture(autouse=True)
def _force_login_gives_the_second_factor(monkeypatch):
    """`client.force_login(user)` stands for a finished sign-in: for a user with two-factor
    sign-in that includes the code, so the session is marked verified by their device, as
    the code step would. The policy itself stays as in production (admins must have a
    device; make_user gives admins one); tests/unit/test_two_factor.py signs in for real."""
    from django.test.client import ClientMixin

    original = ClientMixin._login

    def _login(self, user, backend=None):
        original(self, user, backend)
        from django_otp import DEVICE_ID_SESSION_KEY
        from django_otp.plugins.otp_totp.models import TOTPDevice

        device = TOTPDevice.objects.filter(user_id=user.pk, confirmed=True).first()
        if device is not None:
            session = self.session
            session[DEVICE_ID_SESSION_KEY] = device.persistent_id
            session.save()

    monkeypatch.setattr(ClientMixin, "_login", _login)


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Login throttling counters and other cached values never leak between tests."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def make_user(django_user_model):
    def make(username: str | None = None, role: str | None = None, mfa: bool | None = None, **scope):
        """mfa: give the user two-factor sign-in; by default admins have it (the policy
        requires it of them: settings.MFA_REQUIRED_ROLES) and nobody else does."""
        user = django_user_model.objects.create_user(username=username or unique("u"), password=PASSWORD)
        if role:
            RoleAssignment.objects.create(user=user, role=role, scope=scope.pop("scope", "global"), **scope)
        if mfa if mfa is not None else role in settings.MFA_REQUIRED_ROLES:
            give_mfa(user)
        return user

    return make


@pytest.fixture
def admin(make_user):
    return make_user("alice-admin", Role.ADMIN)


@pytest.fixture
def operator(make_user):
    return make_user("oscar-operator", Role.OPERATOR)


@pytest.fixture
def auditor(make_user):
    return make_user("audrey-auditor", Role.AUDITOR)


@pytest.fixture
def viewer(make_user):
    return make_user("victor-viewer", Role.VIEWER)


@pytest.fixture
def outsider(make_user):
    return make_user("olga-outsider")


@pytest.fixture
def personas(admin, operator, auditor, viewer, outsider):
    return {"admin": admin, "operator": operator, "auditor": auditor, "viewer": viewer, "outsider": outsider}


# ------------------------------------------------------------------ markers

# A test that makes real libvirt objects or starts a real worker through a fixture carries the marker,
# whether or not its module says so: scripts/test.sh selects on them (the second database's
# run is the database-facing part of the suite; see the README's "Tests").
_FIXTURE_MARKERS = {
    "make_domain": "libvirt",
    "test_pool": "libvirt",
    "test_network": "libvirt",
    "celery_worker_process": "worker",
}


def pytest_collection_modifyitems(items):
    for item in items:
        for fixture, marker in _FIXTURE_MARKERS.items():
            if fixture in getattr(item, "fixturenames", ()) and not item.get_closest_marker(marker):
                item.add_marker(getattr(pytest.mark, marker))


# ------------------------------------------------------------------ libvirt


@pytest.fixture(scope="session", autouse=True)
def _image_dir_removed_at_the_end():
    """This run's VM images live in settings.IMAGE_DIR (PORTAL_IMAGE_DIR/test-<run>, where
    QEMU can reach them whatever the clone's path); the run removes it when it ends."""
    yield
    if settings.IMAGE_DIR.name.startswith("test-"):
        shutil.rmtree(settings.IMAGE_DIR, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _audit_chain_key_removed_at_the_end():
    """This run's audit chain key (settings.AUDIT_CHAIN_KEY_PATH, test-audit/<run>/) goes with the run."""
    yield
    if settings.AUDIT_CHAIN_KEY_PATH.parent.parent.name == "test-audit":
        shutil.rmtree(settings.AUDIT_CHAIN_KEY_PATH.parent, ignore_errors=True)
        with contextlib.suppress(OSError):  # the last run's: test-audit/ itself
            settings.AUDIT_CHAIN_KEY_PATH.parent.parent.rmdir()


@pytest.fixture(scope="session")
def libvirt_uri():
    uri = settings.LIBVIRT_URI
    try:
        gw.host_version(uri)
    except Exception as exc:  # the suite needs the real daemon: say so, loudly
        pytest.fail(f"libvirtd is not answering at {uri}: {exc}. Run `make test` (it starts it).")
    problem = image_dir_problem()
    if problem:  # one line instead of an error per test that boots a VM
        pytest.exit(problem, returncode=4)
    return uri


@pytest.fixture
def host(db, libvirt_uri):
    return Host.objects.get_or_create(name=settings.DEFAULT_HOST_NAME, defaults={"uri": libvirt_uri})[0]


@pytest.fixture(scope="session")
def test_pool(libvirt_uri):
    """A dir pool of our own for the whole session, removed at the end."""
    name = unique("tpool")
    path = settings.IMAGE_DIR / "pools" / name
    gw.pool_ensure_dir(libvirt_uri, name, str(path))
    yield name
    gw.pool_remove(libvirt_uri, name)


@pytest.fixture(scope="session")
def test_network(libvirt_uri):
    """An isolated network (no <forward>): nothing leaves the host."""
    name = unique("tnet")
    gw.network_ensure_isolated(libvirt_uri, name, f"vbr{uuid.uuid4().hex[:8]}")
    yield name
    network_remove(libvirt_uri, name)


@pytest.fixture
def make_domain(libvirt_uri, test_pool, test_network):
    """Define a real 64 MiB guest with an empty qcow2 disk; undefine it afterwards."""
    created: list[str] = []

    def make(name: str | None = None, running: bool = False, disk_gib: float = 1) -> str:
        name = name or unique("tvm")
        vol = gw.volume_create(libvirt_uri, test_pool, f"{name}.qcow2", int(disk_gib * (1 << 30)))
        gw.domain_define(
            libvirt_uri, domain_xml(name=name, memory_mib=64, vcpus=1, disk_paths=[vol.path], networks=[test_network])
        )
        created.append(name)
        if running:
            gw.domain_start(libvirt_uri, name)
        return name

    yield make
    for name in created:
        try:
            gw.domain_undefine(libvirt_uri, name)
        except Exception:  # already gone: the test removed it
            pass


@pytest.fixture
def vm(host, make_domain):
    """A running VM, synced into the portal."""
    from apps.vms.models import VirtualMachine
    from apps.vms.services import inventory_sync

    name = make_domain(running=True)
    inventory_sync(host)
    return VirtualMachine.objects.get(host=host, name=name)


@pytest.fixture(scope="module")
def console_proxy_url():
    """The VM console proxy (apps/vms/console_proxy.py), serving in a thread of this process
    on an ephemeral loopback port; its database work runs on connections of its own, so the
    tests that use it must be transactional."""
    import asyncio
    import threading

    from apps.vms import console_proxy

    loop = asyncio.new_event_loop()
    started, box = threading.Event(), {}
    stop = asyncio.Event()

    def ready(server):
        box["port"] = next(iter(server.sockets)).getsockname()[1]
        started.set()

    def run():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(console_proxy.serve(host="127.0.0.1", port=0, ready=ready, stop=stop))

    thread = threading.Thread(target=run, daemon=True, name="console-proxy")
    thread.start()
    assert started.wait(15), "the console proxy did not start"
    yield f"ws://127.0.0.1:{box['port']}/console"
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)


# ------------------------------------------------------------------ Celery worker


def start_worker(hostname: str, queue: str) -> subprocess.Popen:
    """Start a real Celery worker on `queue` reading the test database; wait until ready."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "hypervisor_web.settings.test",
        "PORTAL_USE_TEST_DB": "1",
        "CELERY_QUEUE": queue,
    }
    log = ROOT / "var" / f"test-{hostname.split('@')[0]}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "hypervisor_web", "worker", "--pool=solo", "-Q", queue,
             "-n", hostname, "--loglevel=INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while "ready." not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the Celery worker did not become ready: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    return proc


def stop_worker(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def celery_worker_process(django_db_setup, django_db_blocker):
    """A real Celery worker process on the real Redis, on a queue of this session only,
    reading the test database. Tests using it must be transactional."""
    queue = settings.CELERY_TASK_DEFAULT_QUEUE
    hostname = f"{unique('worker')}@localhost"
    proc = start_worker(hostname, queue)
    yield {
        "proc": proc,
        "hostname": hostname,
        "queue": queue,
        "log": str(ROOT / "var" / f"test-{hostname.split('@')[0]}.log"),
    }
    stop_worker(proc)


@pytest.fixture
def worker(celery_worker_process, transactional_db):
    return celery_worker_process


def wait_for_job(job_id: int, timeout: float = 60) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = Job.objects.get(pk=job_id)
        if job.finished:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish within {timeout}s: {Job.objects.get(pk=job_id).state}")
