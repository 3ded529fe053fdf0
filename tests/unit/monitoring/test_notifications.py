"""The notifications service: a signed webhook, Alertmanager's API and mail, each delivery
retried and audited once; a channel that is down fails in bounded time, audited, and
raises nothing. Servers are real ones on loopback."""

import hashlib
import hmac
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core import mail

from apps.audit.models import AuditEvent
from apps.monitoring import notifications, services
from apps.monitoring.models import Status
from apps.monitoring.posture import Finding

SECRET = "webhook-signing-secret-0123456789"


def notice(state="firing"):
    return notifications.Notice(
        source="posture", name="PortalPostureCheckFailing", subject="ssh.key_only", host="local",
        level="warning", state=state, message="SSH accepts keys only: no longer passes",
    )  # fmt: skip


@pytest.fixture
def receiver():
    """An HTTP server on loopback that records requests and answers the given codes in turn."""
    seen, codes = [], []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((self.path, dict(self.headers), body))
            self.send_response(codes.pop(0) if codes else 200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    server.seen, server.codes = seen, codes
    server.url = f"http://127.0.0.1:{server.server_port}"
    yield server
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deliveries():
    return list(AuditEvent.objects.filter(action=notifications.DELIVER_ACTION).order_by("id"))


@pytest.mark.django_db
def test_the_webhook_is_signed_with_hmac_sha256_and_audited(receiver, settings):
    settings.NOTIFY_WEBHOOK_URL = f"{receiver.url}/hook"
    settings.NOTIFY_WEBHOOK_SECRET = SECRET
    assert notifications.deliver("webhook", notifications.asdict(notice()), pause=0) is True
    ((path, headers, body),) = receiver.seen
    assert path == "/hook"
    expected = hmac.new(SECRET.encode(), headers["X-Portal-Timestamp"].encode() + b"." + body, hashlib.sha256)
    assert headers["X-Portal-Signature"] == f"sha256={expected.hexdigest()}"
    assert abs(int(headers["X-Portal-Timestamp"]) - time.time()) < 60
    assert json.loads(body)["subject"] == "ssh.key_only" and json.loads(body)["state"] == "firing"
    (event,) = deliveries()
    assert (event.outcome, event.params["channel"], event.params["attempts"]) == ("success", "webhook", 1)
    assert SECRET not in json.dumps(event.params) + event.error


@pytest.mark.django_db
def test_a_failing_webhook_is_retried_and_audited_once(receiver, settings):
    settings.NOTIFY_WEBHOOK_URL = f"{receiver.url}/hook"
    receiver.codes.extend([500, 503])
    assert notifications.deliver("webhook", notifications.asdict(notice()), attempts=3, pause=0) is True
    assert len(receiver.seen) == 3
    (event,) = deliveries()
    assert (event.outcome, event.params["attempts"]) == ("success", 3)


@pytest.mark.django_db
def test_an_unreachable_webhook_fails_in_bounded_time_audited_without_raising(settings):
    settings.NOTIFY_WEBHOOK_URL = f"http://127.0.0.1:{closed_port()}/hook?token=never-logged"
    settings.NOTIFY_TIMEOUT = 2
    started = time.monotonic()
    assert notifications.deliver("webhook", notifications.asdict(notice()), attempts=2, pause=0.1) is False
    assert time.monotonic() - started < 6
    (event,) = deliveries()
    assert (event.outcome, event.params["attempts"]) == ("failed", 2)
    assert "could not be reached" in event.error and "never-logged" not in event.error


@pytest.mark.django_db
def test_alertmanager_gets_the_alert_and_its_resolution(receiver, settings):
    settings.NOTIFY_ALERTMANAGER_URL = receiver.url + "/"
    notifications.deliver("alertmanager", notifications.asdict(notice("firing")), pause=0)
    notifications.deliver("alertmanager", notifications.asdict(notice("resolved")), pause=0)
    (path1, _, fired), (path2, _, resolved) = receiver.seen
    assert path1 == path2 == "/api/v2/alerts"
    (alert,) = json.loads(fired)
    assert alert["labels"] == {
        "alertname": "PortalPostureCheckFailing", "severity": "warning", "host": "local",
        "source": "posture", "subject": "ssh.key_only",
    }  # fmt: skip
    assert "endsAt" not in alert and "endsAt" in json.loads(resolved)[0]


@pytest.mark.django_db
def test_mail_goes_out_and_an_unreachable_mail_server_is_a_failed_delivery(settings):
    settings.NOTIFY_EMAIL_TO = ["ops@example.invalid"]
    assert notifications.deliver("email", notifications.asdict(notice()), pause=0) is True
    assert mail.outbox[-1].to == ["ops@example.invalid"] and "ssh.key_only" in mail.outbox[-1].subject
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", closed_port(), 2
    assert notifications.deliver("email", notifications.asdict(notice()), attempts=2, pause=0) is False
    assert [(e.outcome, e.params["attempts"]) for e in deliveries()] == [("success", 1), ("failed", 2)]
    assert "mail server" in deliveries()[-1].error


@pytest.mark.django_db
def test_a_posture_alert_is_sent_on_every_configured_channel_after_commit(host, settings,
                                                                           django_capture_on_commit_callbacks):
    settings.NOTIFY_WEBHOOK_URL = "http://127.0.0.1:9/hook"
    settings.NOTIFY_ALERTMANAGER_URL = "http://127.0.0.1:9"
    settings.NOTIFY_EMAIL_TO = []

    def finding(status):
        return Finding("ssh.key_only", "SSH accepts keys only", "access", status, "seen", "fix")

    services.posture_store(host, [finding(Status.PASS)])
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        report = services.posture_store(host, [finding(Status.FAIL)])
    assert report.notified == [("ssh.key_only", "firing", "webhook"), ("ssh.key_only", "firing", "alertmanager")]
    assert len(callbacks) == 2  # sent to the workers only once the alert is committed


@pytest.mark.django_db
def test_every_kind_of_alert_reaches_the_signed_webhook_and_alertmanager_through_one_service(
    receiver, host, settings, monkeypatch, django_capture_on_commit_callbacks
):
    """Storage, network (quarantine), backup, audit chain and posture alerts, each raised by
    its own app's code, leave through notifications.notify: one signed webhook POST and one
    Alertmanager alert per alert, one audit row per delivery. Deliveries run here, with the
    workers' own code (deliver). Raised for real: posture (pass -> fail), the audit chain
    (a broken head), a backup run failed by reconcile; storage and quarantine through their
    apps' notify functions (their real triggers, a pool filling and a VM quarantined, need
    libvirt: tests/integration/storage/test_monitoring.py, network/test_quarantine.py)."""
    import uuid

    from django.utils import timezone

    from apps.audit.models import AuditChainHead
    from apps.backups.models import BackupRepository, BackupRun
    from apps.core.models import Job
    from apps.network.models import Quarantine
    from apps.network.services import quarantine
    from apps.storage.models import StorageAlert
    from apps.storage.services import notify as storage_notify
    from apps.vms.models import VirtualMachine

    settings.NOTIFY_WEBHOOK_URL = f"{receiver.url}/hook"
    settings.NOTIFY_WEBHOOK_SECRET = SECRET
    settings.NOTIFY_ALERTMANAGER_URL = receiver.url
    settings.NOTIFY_EMAIL_TO = []
    monkeypatch.setattr(notifications, "_enqueue", lambda c, p: notifications.deliver(c, p, attempts=1, pause=0))
    vm = VirtualMachine.objects.create(host=host, uuid=uuid.uuid4(), name="web")
    now = timezone.now()

    def finding(status):
        return Finding("ssh.key_only", "SSH accepts keys only", "access", status, "seen", "fix")

    services.posture_store(host, [finding(Status.PASS)])
    services.audit_chain_check()
    with django_capture_on_commit_callbacks(execute=True):
        services.posture_store(host, [finding(Status.FAIL)])  # posture
    with django_capture_on_commit_callbacks(execute=True):
        AuditChainHead.objects.filter(id=1).update(last_hash="f" * 64)
        assert services.audit_chain_check() is False  # audit
    with django_capture_on_commit_callbacks(execute=True):
        repo = BackupRepository.objects.create(path="/var/backups/hypervisor-portal/n", key_id="n" * 16)
        job = Job.objects.create(kind="backups.vm.backup", target_type="vm", target_name="web", actor_name="system",
                                 state="failed", error="worker lost")  # fmt: skip
        BackupRun.objects.create(vm=vm, vm_name="web", vm_uuid=str(vm.uuid), host=host, repository=repo, job=job,
                                 state="running")  # fmt: skip
        from apps.backups.services import backup_runs_reconcile

        assert backup_runs_reconcile() == 1  # backup
    with django_capture_on_commit_callbacks(execute=True):
        alert = StorageAlert.objects.create(host=host, vm=vm, level="breach", usage=2, limit=1, percent=200,
                                            message="web is over its quota", raised_at=now, updated_at=now)  # fmt: skip
        storage_notify(alert, "raise")  # storage
    with django_capture_on_commit_callbacks(execute=True):
        q = Quarantine.objects.create(vm=vm, incident_id="incident-n", actor_name="admin")
        quarantine._notify(q, vm, "firing", "web was quarantined")  # network

    hooks = [(h, b, json.loads(b)) for p, h, b in receiver.seen if p == "/hook"]
    managed = [json.loads(b)[0]["labels"] for p, h, b in receiver.seen if p == "/api/v2/alerts"]
    sources = ["posture", "audit", "backup", "storage", "network"]
    assert [body["source"] for _, _, body in hooks] == sources
    assert [labels["source"] for labels in managed] == sources
    for headers, raw, _ in hooks:  # each body as it arrived, signed
        assert headers["X-Portal-Signature"] == notifications.sign(SECRET, headers["X-Portal-Timestamp"], raw)
    assert {labels["alertname"] for labels in managed} >= {"PortalBackupFailed", "PortalVmQuarantined"}
    rows = deliveries()
    assert len(rows) == 10 and {e.outcome for e in rows} == {"success"}
    assert sorted((e.params["source"], e.params["channel"]) for e in rows) == sorted(
        (s, c) for s in sources for c in ("webhook", "alertmanager")
    )


@pytest.mark.django_db
def test_a_delivery_that_failed_is_shown_on_the_security_page(client, host, operator, settings):
    from django.urls import reverse

    settings.NOTIFY_WEBHOOK_URL = f"http://127.0.0.1:{closed_port()}/hook"
    settings.NOTIFY_TIMEOUT = 2
    client.force_login(operator)
    assert 'data-testid="failed-deliveries"' not in client.get(reverse("monitoring:security")).content.decode()
    assert notifications.deliver("webhook", notifications.asdict(notice()), attempts=2, pause=0) is False
    page = client.get(reverse("monitoring:security")).content.decode()
    shown = page[page.index('data-testid="failed-deliveries"'):]
    shown = shown[: shown.index("</ul>")]
    assert "PortalPostureCheckFailing: ssh.key_only on local" in shown and "(2 attempts," in shown
    assert deliveries()[-1].error.split(":")[0] in shown  # the reason, as audited
