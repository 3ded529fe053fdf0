"""50 signed-in people over the page mix for 60 s against gunicorn on loopback: 45
operators (dashboard, VM list pages and filters, one VM's detail page) and 5 auditors (the
audit log), each waiting THINK seconds between requests as a person (or an open tab's
poll) does. Reports errors, p50/p99 and throughput; the ratio is p99 against the same
pages' single-user p99 measured in the same run (target: p99 <= 300 ms, 0 errors).

The host has 1,000 VM rows (as the state collector writes them) and one real domain for
the detail page, which reads its one VM live. Everything it creates (database rows, the
domain, its pool, the gunicorn processes) is removed at the end."""

from __future__ import annotations

import http.client
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

USERS, AUDITORS = 50, 5
DURATION = 60.0
THINK = 1.0
VMS = 1000
PORT = 18700 + os.getpid() % 200


def _session_cookie(user) -> str:
    """A real signed-in session for the user (what the login form would create)."""
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, load_backend
    from django.contrib.sessions.backends.db import SessionStore

    store = SessionStore()
    store[SESSION_KEY] = str(user.pk)
    # the backend a sign-in records: the first that loads users (django-axes' only counts failures)
    backends = settings.AUTHENTICATION_BACKENDS
    store[BACKEND_SESSION_KEY] = next(p for p in backends if hasattr(load_backend(p), "get_user"))
    store[HASH_SESSION_KEY] = user.get_session_auth_hash()
    store.create()
    return f"{settings.SESSION_COOKIE_NAME}={store.session_key}"


def _get(conn: http.client.HTTPConnection, path: str, cookie: str) -> tuple[int, float]:
    t = time.perf_counter()
    conn.request("GET", path, headers={"Cookie": cookie, "Host": "localhost"})
    response = conn.getresponse()
    response.read()
    return response.status, time.perf_counter() - t


def _person(paths: list[str], cookie: str, until: float, out: list, errors: list, think: float) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
    rng = random.Random()
    time.sleep(rng.random() * think)  # people do not all click at the same instant
    while time.monotonic() < until:
        path = rng.choice(paths)
        try:
            status, seconds = _get(conn, path, cookie)
        except (OSError, http.client.HTTPException) as exc:
            errors.append(f"{path}: {exc}")
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
            continue
        out.append(seconds)
        if status != 200:
            errors.append(f"{path}: HTTP {status}")
        time.sleep(think)
    conn.close()


def _p(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100)[q - 1] if len(samples) >= 2 else (samples or [0])[0]


def run(args) -> dict:
    import libvirt
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from apps.accounts.models import RoleAssignment
    from apps.core.gateways import libvirt as gw
    from apps.core.gateways.libvirt import domain_xml
    from apps.core.models import Host
    from apps.vms.models import VirtualMachine
    from apps.vms.services import inventory_sync
    from tests.bench._scratch import remove_scratch, scratch_pool

    duration = max(5.0, DURATION * args.scale)
    uri = settings.LIBVIRT_URI
    tag, pool_name, pool_dir = scratch_pool()
    conn = libvirt.open(uri)
    domain = f"bench-{tag}-detail"
    host = None
    users = []
    server = None
    try:
        disk = pool_dir / "detail.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True, timeout=60)
        conn.defineXML(domain_xml(name=domain, memory_mib=64, vcpus=1, disk_paths=[str(disk)], networks=[]))
        gw.pool_ensure_dir(uri, pool_name, str(pool_dir))
        host = Host.objects.create(name=f"bench-{tag}", uri=uri, collected_at=timezone.now())
        inventory_sync(host)  # the real domains (the detail page's among them), as the collector would
        VirtualMachine.objects.bulk_create(
            VirtualMachine(host=host, uuid=uuid.uuid4(), name=f"vm-{i:05d}", zone=f"z{i % 4}", last_state="running",
                           vcpus=1, memory_kib=65536, last_seen=timezone.now())
            for i in range(VMS)
        )  # fmt: skip
        model = get_user_model()
        for i in range(USERS):
            user = model.objects.create_user(f"bench-{tag}-{i:02d}")
            role = "auditor" if i < AUDITORS else "operator"
            scope = {"scope": "global"} if role == "auditor" else {"scope": "host", "host": host}
            RoleAssignment.objects.create(user=user, role=role, **scope)
            users.append((user, role, _session_cookie(user)))

        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "hypervisor_web.settings.test", "ALLOWED_HOSTS": "localhost"}
        log = Path(settings.VAR_DIR) / f"bench-gunicorn-{tag}.log"
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "hypervisor_web.wsgi:application", "--bind", f"127.0.0.1:{PORT}",
             "--workers", "4", "--timeout", "60", "--access-logfile", "-"],
            env={**env, "DJANGO_SETTINGS_MODULE": "hypervisor_web.settings.test"}, stdout=subprocess.DEVNULL,
            stderr=log.open("w"),
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=5)
                c.request("GET", "/accounts/login/", headers={"Host": "localhost"})
                c.getresponse().read()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"gunicorn did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.3)

        operator_paths = ["/", "/vms/", "/vms/?page=7", "/vms/?state=running&zone=z2&sort=-memory",
                          "/vms/?q=vm-004", f"/vms/{host.name}/{domain}/"]  # fmt: skip
        auditor_paths = ["/audit/", "/"]

        # single user, same mix, same server: the baseline, and each page's own median
        single: list[float] = []
        errors: list[str] = []
        per_page = {}
        for paths, (_u, _r, cookie) in ((operator_paths, users[-1]), (auditor_paths, users[0])):
            c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
            for path in paths:
                answers = [_get(c, path, cookie) for _ in range(5)]
                errors.extend(f"{path} (single user): HTTP {status}" for status, _s in answers if status != 200)
                times = [seconds for _status, seconds in answers]
                per_page[path] = round(statistics.median(times) * 1000)
                single.extend(times)
            c.close()

        samples: list[float] = []
        until = time.monotonic() + duration
        threads = [
            threading.Thread(target=_person, args=(auditor_paths if role == "auditor" else operator_paths, cookie,
                                                   until, samples, errors, THINK), daemon=True)
            for _u, role, cookie in users
        ]  # fmt: skip
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=duration + 60)
        elapsed = time.monotonic() - started
        p99 = _p(samples, 99)
        return {
            "name": f"{USERS} people, {duration:.0f} s, gunicorn x4",
            "target": "p99<=300ms",
            # any error fails the run outright: a fast error page is no answer
            "ratio": float("inf") if errors or not single else p99 / _p(single, 99),
            "requests": len(samples),
            "errors": len(errors),
            "first errors": errors[:3],
            "throughput (req/s)": round(len(samples) / elapsed, 1),
            "p50 / p99 (ms)": f"{_p(samples, 50) * 1000:.0f} / {p99 * 1000:.0f}",
            "single user p50 / p99 (ms)": f"{_p(single, 50) * 1000:.0f} / {_p(single, 99) * 1000:.0f}",
            "think time (s)": THINK,
            "single user median per page (ms)": per_page,
        }
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
        from django.contrib.sessions.models import Session

        Session.objects.all().delete()
        for user, _role, _cookie in users:
            user.delete()
        if host is not None:
            RoleAssignment.objects.filter(host=host).delete()
            VirtualMachine.objects.filter(host=host).delete()
            host.delete()
        remove_scratch(conn, pool_name, pool_dir, [domain])
