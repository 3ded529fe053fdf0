"""/metrics: who may read it, what it says (read from the database and one libvirt bulk
call per host per scrape), and that Prometheus' own linter accepts it."""

import json
import shutil
import subprocess
import uuid
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from apps.audit.models import AuditEvent
from apps.core.models import Host, Job
from apps.monitoring import metrics, services
from apps.storage.models import PoolState, StorageAlert, VmQuota
from apps.vms.models import VirtualMachine

TOKEN = "s3cret-metrics-token-0123456789"
URL = "/metrics"


@pytest.fixture(autouse=True)
def _fresh_stats_cache():
    metrics.libvirt_stats.clear()
    yield
    metrics.libvirt_stats.clear()


@pytest.fixture
def token(settings):
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ALLOW_LOOPBACK = False
    return TOKEN


def samples(body: bytes) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found, name, **labels):
    return found[(name, tuple(sorted(labels.items())))]


def scrape(client) -> bytes:
    response = client.get(URL, HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    assert response["Cache-Control"] == "no-store"
    return response.content


# ------------------------------------------------------------------ access


@pytest.mark.django_db
def test_a_wrong_token_is_refused_and_audited_without_the_token(client, token):
    response = client.get(URL, HTTP_AUTHORIZATION="Bearer guessed-token-value")
    assert response.status_code == 403
    event = AuditEvent.objects.get(action="monitoring.metrics.scrape")
    assert (event.outcome, event.source_ip, event.actor_name) == ("denied", "127.0.0.1", "anonymous")
    assert event.error == "wrong metrics token"
    row = json.dumps({f.name: str(getattr(event, f.name)) for f in AuditEvent._meta.fields})
    assert "guessed-token-value" not in row and TOKEN not in row


@pytest.mark.django_db
def test_no_token_from_the_network_is_401_even_with_loopback_access_on(client, settings):
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ALLOW_LOOPBACK = True
    response = client.get(URL, REMOTE_ADDR="203.0.113.7")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    event = AuditEvent.objects.get(action="monitoring.metrics.scrape")
    assert (event.outcome, event.source_ip, event.error) == ("denied", "203.0.113.7", "no metrics token")


@pytest.mark.django_db
def test_loopback_is_let_in_only_when_allowed_and_not_forwarded_by_a_proxy(client, settings, host):
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOW_LOOPBACK = False
    assert client.get(URL).status_code == 401
    settings.METRICS_ALLOW_LOOPBACK = True
    assert client.get(URL).status_code == 200
    assert client.get(URL, REMOTE_ADDR="::1").status_code == 200
    # a reverse proxy on this machine forwards network clients from 127.0.0.1
    assert client.get(URL, HTTP_X_FORWARDED_FOR="198.51.100.4").status_code == 401
    assert AuditEvent.objects.filter(action="monitoring.metrics.scrape", outcome="denied").count() == 2


@pytest.mark.django_db
def test_a_token_sent_when_none_is_configured_is_refused(client, settings):
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOW_LOOPBACK = True
    assert client.get(URL, HTTP_AUTHORIZATION="Bearer anything").status_code == 403
    assert client.get(URL, HTTP_AUTHORIZATION="Basic dXNlcjpwYXNz").status_code == 401


# ------------------------------------------------------------------ content


@pytest.fixture
def estate(db):
    """A host on libvirt's in-process test driver (its one running domain "test"), VMs,
    a pool, a quota, jobs, an alert and failed sign-ins, all in the database."""
    host = Host.objects.create(name="mon-host", uri="test:///default", collected_at=timezone.now())
    web = VirtualMachine.objects.create(
        host=host, uuid=uuid.uuid4(), name="web", zone="dmz", last_state="running", vcpus=2,
        memory_kib=1 << 20, disk_capacity=10 << 30, disk_allocation=3 << 30,
    )  # fmt: skip
    VirtualMachine.objects.create(host=host, uuid=uuid.uuid4(), name="db", last_state="shut off", vcpus=1)
    VmQuota.objects.create(vm=web, limit_bytes=20 << 30, alert_percent=70)
    PoolState.objects.create(
        host=host, name="images", capacity=100 << 30, allocation=60 << 30, available=40 << 30,
        provisioned=150 << 30, volume_count=3, collected_at=timezone.now(),
    )  # fmt: skip
    now = timezone.now()
    for seconds, state in ((2, "succeeded"), (4, "succeeded"), (1, "failed")):
        Job.objects.create(
            kind="vms.vm.start", target_type="vm", target_name="web", actor_name="system", state=state,
            started_at=now - timedelta(seconds=seconds), finished_at=now,
        )  # fmt: skip
    Job.objects.create(kind="vms.vm.stop", target_type="vm", target_name="web", actor_name="system")
    StorageAlert.objects.create(
        host=host, vm=web, level="warning", usage=1, limit=2, percent=75, message="m", raised_at=now, updated_at=now
    )
    return host


@pytest.mark.django_db
def test_the_scrape_reports_the_database_and_libvirt(client, token, estate):
    from apps.audit.services import record

    record(actor=None, actor_name="mallory", action="auth.login", outcome="failed", target=("user", "", "mallory"))
    assert services.audit_chain_check() is True
    found = samples(scrape(client))

    vm = {"host": "mon-host", "vm": "web", "zone": "dmz"}
    assert value(found, "portal_vm_state", state="running", **vm) == 1
    assert value(found, "portal_vm_state", state="shut off", host="mon-host", vm="db", zone="default") == 1
    assert value(found, "portal_vm_vcpus", **vm) == 2
    assert value(found, "portal_vm_memory_bytes", **vm) == 1 << 30
    assert value(found, "portal_vm_disk_allocated_bytes", **vm) == 3 << 30
    assert value(found, "portal_vm_quota_limit_bytes", **vm) == 20 << 30
    assert value(found, "portal_vm_quota_alert_threshold_ratio", **vm) == pytest.approx(0.7)
    assert value(found, "portal_vm_encrypted_disks", **vm) == 0
    pool = {"host": "mon-host", "pool": "images"}
    assert value(found, "portal_pool_capacity_bytes", **pool) == 100 << 30
    assert value(found, "portal_pool_provisioned_bytes", **pool) == 150 << 30
    assert value(found, "portal_pool_reserve_ratio", **pool) == pytest.approx(0.10)  # the default
    assert value(found, "portal_jobs", kind="vms.vm.start", state="succeeded") == 2
    assert value(found, "portal_jobs", kind="vms.vm.stop", state="queued") == 1
    assert value(found, "portal_job_duration_seconds_count", kind="vms.vm.start", outcome="succeeded") == 2
    assert value(found, "portal_job_duration_seconds_sum", kind="vms.vm.start", outcome="succeeded") == (
        pytest.approx(6, abs=0.01)
    )
    assert ("portal_jobs_oldest_queued_timestamp_seconds", ()) in found
    assert value(found, "portal_alerts_open", source="storage", level="warning") == 1
    assert value(found, "portal_alerts_open", source="posture", level="warning") == 0
    assert value(found, "portal_auth_failures_total", kind="login") == 1
    assert value(found, "portal_audit_chain_intact") == 1
    assert value(found, "portal_audit_chain_verified_timestamp_seconds") == pytest.approx(
        timezone.now().timestamp(), abs=60
    )
    # libvirt's test driver: one running domain, counters at zero
    assert value(found, "portal_libvirt_up", host="mon-host") == 1
    assert value(found, "portal_vm_cpu_seconds_total", host="mon-host", vm="test") == 0
    assert value(found, "portal_host_up", host="mon-host") == 1


@pytest.mark.django_db
def test_one_libvirt_call_per_host_per_scrape_interval(client, token, estate, settings):
    settings.METRICS_LIBVIRT_CACHE_SECONDS = 60
    first = value(samples(scrape(client)), "portal_libvirt_stats_reads_total", host="mon-host")
    for _ in range(3):
        again = value(samples(scrape(client)), "portal_libvirt_stats_reads_total", host="mon-host")
    assert again == first  # cached: the same read served four scrapes
    settings.METRICS_LIBVIRT_CACHE_SECONDS = 0
    after = [value(samples(scrape(client)), "portal_libvirt_stats_reads_total", host="mon-host") for _ in range(2)]
    assert after == [first + 1, first + 2]  # past the interval: exactly one call per scrape


@pytest.mark.django_db
def test_an_unreachable_host_is_reported_not_a_500(client, token, estate):
    Host.objects.create(name="gone", uri="qemu+unix:///system?socket=/nonexistent/libvirt-sock")
    found = samples(scrape(client))
    assert value(found, "portal_libvirt_up", host="gone") == 0
    assert value(found, "portal_libvirt_up", host="mon-host") == 1


@pytest.mark.django_db
def test_a_broken_audit_chain_shows_in_the_metrics_and_is_notified(client, token, estate, settings,
                                                                  django_capture_on_commit_callbacks):
    from apps.audit.models import AuditChainHead

    settings.NOTIFY_WEBHOOK_URL = "http://127.0.0.1:9/hook"
    services.audit_chain_check()
    AuditChainHead.objects.filter(id=1).update(last_hash="f" * 64)  # the newest event "removed"
    with django_capture_on_commit_callbacks(execute=False) as sent:
        assert services.audit_chain_check() is False
    assert len(sent) == 1  # one notification, on the one configured channel
    found = samples(scrape(client))
    assert value(found, "portal_audit_chain_intact") == 0


@pytest.mark.django_db
def test_promtool_accepts_the_scrape(client, token, estate, tmp_path):
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is missing: `make setup` installs it (Debian prometheus)"
    body = scrape(client)
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    assert not (result.stdout + result.stderr).strip(), (result.stdout + result.stderr).decode()  # no lint either


@pytest.mark.django_db
def test_render_writes_what_generate_latest_writes(token, estate, settings):
    """The scrape's own writer (fast for 1,000 VMs) against prometheus-client's, on the same
    families: the same samples, the same HELP and TYPE lines, escaping included."""
    from prometheus_client import generate_latest

    Job.objects.create(kind='odd"kind\\with\nbreaks', target_type="vm", target_name="x", actor_name="system")
    settings.METRICS_LIBVIRT_CACHE_SECONDS = 60  # both read the same libvirt result
    ours, theirs = metrics.render(metrics._registry), generate_latest(metrics._registry)
    assert samples(ours) == samples(theirs)
    assert value(samples(ours), "portal_jobs", kind='odd"kind\\with\nbreaks', state="queued") == 1
    comments = [[line for line in body.splitlines() if line.startswith(b"#")] for body in (ours, theirs)]
    assert comments[0] == comments[1] and len(comments[0]) > 40


def test_the_metrics_url_is_slash_metrics():
    assert reverse("metrics") == URL


@pytest.mark.django_db
def test_quarantine_and_backup_metrics_feed_the_shipped_alert_rules(client, token, estate):
    from apps.backups.models import BackupRepository, BackupRun, BackupVerification
    from apps.network.models import Quarantine

    web, db = VirtualMachine.objects.get(name="web"), VirtualMachine.objects.get(name="db")
    Quarantine.objects.create(vm=web, incident_id="incident-20261201-101010-ab12", actor_name="admin")
    Quarantine.objects.create(vm=db, incident_id="incident-old", actor_name="admin", released_at=timezone.now())
    repo = BackupRepository.objects.create(path="/var/backups/hypervisor-portal/m", key_id="k" * 16)
    t0 = timezone.now() - timedelta(days=3)

    def run(vm, state, days, **extra):
        return BackupRun.objects.create(vm=vm, vm_name=vm.name, vm_uuid=str(vm.uuid), host=estate, repository=repo,
                                        state=state, snapshot_id="s" * 8, finished_at=t0 + timedelta(days=days),
                                        **extra)  # fmt: skip

    older = run(web, "succeeded", 0)
    run(web, "succeeded", 1, forgotten_at=timezone.now())  # pruned: no longer a good backup
    run(web, "failed", 2)  # an interrupted or failed run never counts
    BackupVerification.objects.create(run=older, ok=True)
    BackupVerification.objects.create(run=older, ok=False, error="checksum differs")  # the newest one counts
    found = samples(scrape(client))
    assert value(found, "portal_vm_quarantined", host="mon-host", vm="web",
                 incident="incident-20261201-101010-ab12") == 1  # fmt: skip
    assert not any(name == "portal_vm_quarantined" and ("vm", "db") in labels for name, labels in found)
    assert value(found, "portal_backup_last_success_timestamp_seconds", host="mon-host", vm="web") == pytest.approx(
        t0.timestamp()
    )
    assert value(found, "portal_backup_verification_ok", host="mon-host", vm="web") == 0
    assert not any(name.startswith("portal_backup") and ("vm", "db") in labels for name, labels in found)
