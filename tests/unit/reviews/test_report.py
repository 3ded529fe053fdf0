"""The access report reads maintained per-user summaries (kept as events are recorded), flags
what deserves a second look, and exports a CSV a spreadsheet cannot run; the who-can-act and
what-can-they-do pages answer from the role assignments."""

import csv
import io
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from apps.accounts.models import Role, RoleAssignment
from apps.audit.models import AuditEvent
from apps.audit.services import record
from apps.core.csvsafe import safe_cell
from apps.reviews import selectors
from apps.reviews.models import UserActivitySummary

pytestmark = pytest.mark.django_db


def test_summaries_follow_the_recorded_events(operator):
    record(actor=operator, action="vms.vm.start", target=None, outcome="success")
    record(actor=operator, action="vms.vm.start", target=None, outcome="denied", error="no")
    last = record(actor=operator, action="storage.quota.set", target=None, outcome="failed", error="bad")
    record(actor=operator, action="auth.logout", target=operator, outcome="success")
    record(actor=None, action="storage.check", outcome="success")  # the system has no summary
    s = UserActivitySummary.objects.get(user=operator)
    assert (s.events, s.denied, s.failed) == (4, 1, 1)
    assert (s.last_action, s.last_action_at) == ("storage.quota.set", last.created_at)  # sign-out is no action
    assert s.last_denied_at is not None
    assert UserActivitySummary.objects.count() == 1


def test_the_report_flags_what_deserves_a_second_look(settings, make_user, make_vm, admin):
    from apps.encryption.models import EncryptedDisk
    from apps.network.models import Quarantine

    settings.ACCESS_REVIEW_DENIAL_THRESHOLD = 3
    now = timezone.now()
    dormant = make_user("dora-dormant", Role.VIEWER)
    dormant.last_login = now - timedelta(days=91)
    dormant.save()
    fresh = make_user("fred-fresh", Role.VIEWER)
    fresh.last_login = now
    fresh.save()
    gone = make_user("dan-disabled", Role.OPERATOR)
    gone.is_active = False
    gone.save()
    noisy = make_user("nora-noisy", Role.VIEWER)
    for _ in range(3):
        record(actor=noisy, action="vms.vm.start", outcome="denied", error="requires vms.operate")
    secret = make_vm("rev-secret", zone="vault")
    isolated = make_vm("rev-isolated", zone="dmz")
    EncryptedDisk.objects.create(host=secret.host, vm=secret, vm_uuid=secret.uuid, path="/x", key_id="k1")
    Quarantine.objects.create(vm=isolated, incident_id="INC-rev-1", actor_name="alice")
    bare_admin = make_user("adam-no-mfa", Role.ADMIN, mfa=False)
    vault_op = make_user("val-vault", Role.OPERATOR, scope="zone", zone="vault")
    dmz_op = make_user("dmz-op", Role.OPERATOR, scope="zone", zone="dmz")
    rows = {r.user.username: r for r in selectors.access_report(admin)}
    flags = {name: r.flags for name, r in rows.items()}
    assert "dormant (no sign-in for 90 days)" in flags["dora-dormant"]
    assert "never signed in" not in flags["dora-dormant"]
    assert not any(f.startswith("dormant") for f in flags["fred-fresh"])
    assert "disabled but still has roles" in flags["dan-disabled"]
    assert "many denials" in flags["nora-noisy"] and "never signed in" in flags["nora-noisy"]
    assert "admin without MFA" in flags[bare_admin.username] and not rows[bare_admin.username].mfa
    assert "admin without MFA" not in flags[admin.username] and rows[admin.username].mfa  # enrolled
    assert "access to an encrypted VM" in flags[vault_op.username]
    assert "access to a quarantined VM" not in flags[vault_op.username]
    assert "access to a quarantined VM" in flags[dmz_op.username]
    assert "access to an encrypted VM" in flags[admin.username]  # a global role covers every VM


def test_the_report_reads_summaries_in_a_constant_number_of_queries(client, auditor, make_user):
    client.force_login(auditor)
    client.get(reverse("reviews:report"))  # warm up (session, content types)
    with CaptureQueriesContext(connection) as few:
        assert client.get(reverse("reviews:report")).status_code == 200
    for i in range(15):
        u = make_user(f"bulk-{i:02d}", Role.VIEWER)
        record(actor=u, action="vms.vm.start", outcome="success")
    with CaptureQueriesContext(connection) as many:
        page = client.get(reverse("reviews:report"))
    assert len(many) == len(few), [q["sql"] for q in many.captured_queries]
    assert not any("audit_auditevent" in q["sql"] for q in many.captured_queries)  # never the log itself
    assert 'data-user="bulk-14"' in page.content.decode()


def test_the_csv_neutralises_formulas_and_carries_training(client, auditor, make_user):
    make_user("=HYPERLINK(evil)", Role.VIEWER)
    client.force_login(auditor)
    response = client.get(reverse("reviews:report"), {"format": "csv"})
    assert response["Content-Type"] == "text/csv"
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    names = [r["user"] for r in rows]
    assert "'=HYPERLINK(evil)" in names and "=HYPERLINK(evil)" not in names
    assert all(r["training"].endswith("/5") for r in rows)
    assert {"mfa", "effective_permissions", "flags", "last_action"} <= set(rows[0])


@pytest.mark.parametrize("value", ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"])
def test_safe_cell_prefixes_what_a_spreadsheet_would_run(value):
    assert safe_cell(value) == "'" + value


def test_safe_cell_leaves_plain_text():
    assert (safe_cell("alice"), safe_cell(None), safe_cell(3), safe_cell("a=b")) == ("alice", "", "3", "a=b")


def test_who_can_act_on_a_vm_names_each_user_and_the_granting_assignment(client, auditor, make_user, make_vm, hosts):
    vm = make_vm("rev-web", host=hosts[0], zone="web")
    other = make_vm("rev-db", host=hosts[1], zone="db")
    by_host = make_user("hank-host", Role.OPERATOR, scope="host", host=hosts[0])
    by_zone = make_user("zoe-zone", Role.VIEWER, scope="zone", zone="web")
    by_vm = make_user("vic-vm", Role.OPERATOR, scope="vm", vm=vm)
    make_user("otto-other", Role.OPERATOR, scope="vm", vm=other)
    client.force_login(auditor)
    page = client.get(reverse("reviews:vm", args=[hosts[0].name, vm.name])).content.decode()
    for user, grant in ((by_host, f"host {hosts[0].name}"), (by_zone, "zone web"), (by_vm, "VM rev-web"),
                        (auditor, "everything")):  # fmt: skip
        row = page[page.index(f'data-user="{user.username}"'):]
        assert grant in row[: row.index("</tr>")], user.username
    assert "otto-other" not in page
    row = page[page.index('data-user="zoe-zone"'):]
    assert "vms.operate" not in row[: row.index("</tr>")]  # a viewer only reads


def test_what_can_a_user_do_lists_every_vm_and_action(client, auditor, make_user, make_vm, hosts):
    web = make_vm("rev-web", host=hosts[0], zone="web")
    make_vm("rev-db", host=hosts[1], zone="db")
    subject = make_user("sam-scoped", Role.VIEWER, scope="zone", zone="web")
    RoleAssignment.objects.create(user=subject, role=Role.OPERATOR, scope="vm", vm=web)
    client.force_login(auditor)
    page = client.get(reverse("reviews:user", args=[subject.pk])).content.decode()
    row = page[page.index('data-vm="rev-web"'):]
    row = row[: row.index("</tr>")]
    assert "vms.operate" in row and "viewer of zone web" in row and "operator of VM rev-web" in row
    assert 'data-vm="rev-db"' not in page
    portal = page[page.index('data-testid="portal-permissions"'):][:120]
    assert "jobs.view" in portal and "accounts.manage" not in portal and "audit.view" not in portal


def test_the_user_page_links_to_what_the_user_can_do(client, admin):
    client.force_login(admin)
    page = client.get(reverse("accounts:detail", args=[admin.pk])).content.decode()
    assert reverse("reviews:user", args=[admin.pk]) in page


def test_operators_and_viewers_see_no_access_review(client, operator, viewer, auditor):
    for user in (operator, viewer):
        client.force_login(user)
        assert client.get(reverse("reviews:report")).status_code == 403
        assert client.get(reverse("reviews:campaigns")).status_code == 403
    assert AuditEvent.objects.filter(outcome="denied", action="page.report").count() == 2
    client.force_login(auditor)
    assert client.get(reverse("reviews:report")).status_code == 200


def test_the_migration_counts_existing_events_into_summaries(operator, viewer):
    """An installation upgrading with events already in its log starts with true summaries."""
    import importlib

    from django.apps import apps

    backfill = importlib.import_module("apps.reviews.migrations.0002_backfill_summaries")
    record(actor=operator, action="vms.vm.start", outcome="success")
    record(actor=operator, action="vms.vm.start", outcome="denied", error="no")
    record(actor=operator, action="auth.logout", target=operator, outcome="success")
    record(actor=viewer, action="storage.quota.set", outcome="failed", error="bad")
    fields = ("user_id", "events", "denied", "failed", "last_event_at", "last_action_at", "last_action",
              "last_denied_at")
    kept = sorted(UserActivitySummary.objects.values_list(*fields))
    UserActivitySummary.objects.all().delete()
    backfill.forwards(apps, None)
    assert sorted(UserActivitySummary.objects.values_list(*fields)) == kept
