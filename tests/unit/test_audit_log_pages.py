"""The audit log pages: filters from the URL, keyset pages by a signed cursor (no COUNT, no
OFFSET, a constant number of queries wherever the page is), the event detail, the streamed
exports with spreadsheet formulas neutralised, and who may read them."""

import csv
import html
import io
import json
import uuid
from datetime import datetime, timedelta
from urllib.parse import parse_qs, urlencode

import pytest
from django.core import signing
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from apps.audit import context
from apps.audit.forms import CURSOR_SALT, filters_key, sign_cursor
from apps.audit.models import AuditEvent
from apps.audit.selectors import Cursor, EventFilters, events_for_export
from apps.audit.services import record
from apps.core.models import Host, Job
from apps.vms.models import VirtualMachine

pytestmark = pytest.mark.django_db


def shown(response) -> list[int]:
    assert response.status_code == 200, response.content[:500]
    return [e.pk for e in response.context["events"]]


def page_events(n, action="t.page.step"):
    return [record(actor=None, action=action, target=("thing", i, f"thing-{i}"), outcome="success") for i in range(n)]


@pytest.fixture
def as_auditor(client, auditor):
    client.force_login(auditor)
    return client


def test_filters_narrow_the_log_and_live_in_the_url(as_auditor, operator):
    host = Host.objects.create(name="h-audit-filter", uri="test:///default")
    vm = VirtualMachine.objects.create(host=host, uuid=uuid.uuid4(), name="web-1")
    other_host = Host.objects.create(name="h-audit-other", uri="test:///default")
    other_vm = VirtualMachine.objects.create(host=other_host, uuid=uuid.uuid4(), name="db-1")
    with context.bound("192.0.2.7", "req-a"):
        by_operator = record(actor=operator, action="encryption.disk.unlock", target=vm, outcome="denied")
    on_host = record(actor=None, action="storage.pool.refresh", target=host, outcome="success")
    on_other = record(actor=None, action="encryption.disk.lock", target=other_vm, outcome="failed")
    searched = record(actor=None, action="t.misc", target=("file", "", "/etc/Portal-Keys.conf"), outcome="success")
    url = reverse("audit:events")

    def ids(**query):
        return set(shown(as_auditor.get(url, query)))

    assert ids(actor="oscar-operator") == {by_operator.pk}
    assert ids(action="encryption.") == {by_operator.pk, on_other.pk}
    assert ids(action="encryption.disk.lock") == {on_other.pk}
    assert ids(target="web-1") == {by_operator.pk}
    assert ids(q="portal-keys") == {searched.pk}  # words in the name, any case
    assert ids(host="h-audit-filter") == {by_operator.pk, on_host.pk}  # the host and its VMs
    assert ids(vm="db-1") == {on_other.pk}
    assert ids(outcome="failed", action="encryption.") == {on_other.pk}
    assert ids(ip="192.0.2.7") == {by_operator.pk}
    assert ids(action="t.misc", since=(searched.created_at - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M")) == {
        searched.pk
    }
    assert ids(action="t.misc", until=(searched.created_at - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M")) == set()
    # the page's links keep the filters
    page = as_auditor.get(url, {"action": "encryption.", "size": 1})
    assert "action=encryption." in page.context["links"]["older"] and "size=1" in page.context["links"]["older"]


def test_cursor_walks_older_and_newer_and_both_ends(as_auditor):
    events = [e.pk for e in page_events(7)]
    newest_first = events[::-1]
    url = reverse("audit:events")
    first = as_auditor.get(url, {"action": "t.page.", "size": 3})
    assert shown(first) == newest_first[0:3]
    links = first.context["links"]
    assert links["newer"] is None and links["newest"] is None
    second = as_auditor.get(url + links["older"])
    assert shown(second) == newest_first[3:6]
    last = as_auditor.get(url + second.context["links"]["older"])
    assert shown(last) == newest_first[6:]
    assert last.context["links"]["older"] is None
    back = as_auditor.get(url + last.context["links"]["newer"])
    assert shown(back) == newest_first[3:6]
    top = as_auditor.get(url + back.context["links"]["newer"])
    assert shown(top) == newest_first[0:3] and top.context["links"]["newer"] is None
    # a page link past the end of what the same filters match: no rows, and the way back
    empty = AuditEvent.objects.filter(pk=events[0]).values_list("created_at", "id").get()
    past = sign_cursor(Cursor(empty[0], empty[1], "older"), EventFilters(action="t.page."))
    stale = as_auditor.get(url, {"action": "t.page.", "size": 3, "cursor": past})
    assert shown(stale) == [] and stale.context["links"]["newest"] == "?action=t.page.&size=3"
    # the oldest end opens directly, and walks up
    oldest = as_auditor.get(url + first.context["links"]["oldest"])
    assert shown(oldest) == newest_first[4:] and oldest.context["links"]["older"] is None
    assert shown(as_auditor.get(url + oldest.context["links"]["newer"])) == newest_first[1:4]


def test_events_of_the_same_instant_are_paged_by_id(as_auditor):
    at = timezone.now().replace(microsecond=0)
    same = []
    for _ in range(5):  # written directly: record() stamps each event with its own time
        e = AuditEvent(created_at=at, actor_name="system", action="t.tie", outcome="success", prev_hash="0" * 64,
                       hash=uuid.uuid4().hex * 2)  # fmt: skip
        e.save()
        same.append(e.pk)
    url = reverse("audit:events")
    first = as_auditor.get(url, {"action": "t.tie", "size": 2})
    second = as_auditor.get(url + first.context["links"]["older"])
    third = as_auditor.get(url + second.context["links"]["older"])
    assert shown(first) + shown(second) + shown(third) == same[::-1]
    assert shown(as_auditor.get(url + third.context["links"]["newer"])) == shown(second)


def test_host_and_vm_filters_include_their_pools_alerts_and_encrypted_disks(as_auditor):
    """A host's storage pools, storage alerts and encrypted disks are on that host: their
    events belong to the host's view (and a VM's disks and alerts to the VM's)."""
    from apps.encryption.models import EncryptedDisk
    from apps.storage.models import StorageAlert

    host = Host.objects.create(name="h-scope", uri="test:///default")
    vm = VirtualMachine.objects.create(host=host, uuid=uuid.uuid4(), name="app-1")
    elsewhere = Host.objects.create(name="h-scope-2", uri="test:///default")
    now = timezone.now()
    disk = EncryptedDisk.objects.create(host=host, vm=vm, vm_uuid=vm.uuid, path="/srv/x/app-1-data.img", key_id="k1")
    alert = StorageAlert.objects.create(host=host, vm=vm, level="warning", usage=9, limit=10, percent=90,
                                        message="m", raised_at=now, updated_at=now)  # fmt: skip
    pool_alert = StorageAlert.objects.create(host=host, pool="images", level="warning", usage=9, limit=10, percent=90,
                                             message="m", raised_at=now, updated_at=now)  # fmt: skip
    events = {
        "pool": record(actor=None, action="storage.pool.limit", target=("pool", "h-scope/images", "images"),
                       outcome="success"),  # fmt: skip
        "disk": record(actor=None, action="encryption.disk.view", target=("encrypteddisk", disk.pk, ""),
                       outcome="failed"),  # fmt: skip
        "vm_alert": record(actor=None, action="storage.alert.acknowledge", target=alert, outcome="success"),
        "pool_alert": record(actor=None, action="storage.alert.acknowledge", target=pool_alert, outcome="success"),
        "vm": record(actor=None, action="storage.volume.create", target=vm, outcome="success"),
    }
    other = record(actor=None, action="storage.pool.limit", target=("pool", "h-scope-2/images", "images"),
                   outcome="success")  # fmt: skip
    record(actor=None, action="t.host", target=elsewhere, outcome="success")
    url = reverse("audit:events")

    def ids(**query):
        return set(shown(as_auditor.get(url, query)))

    assert ids(host="h-scope") == {e.pk for e in events.values()}
    assert other.pk in ids(host="h-scope-2") and not ids(host="h-scope-2") & ids(host="h-scope")
    assert ids(vm="app-1") == {events["disk"].pk, events["vm_alert"].pk, events["vm"].pk}
    assert ids(host="h-scope%") == set()  # LIKE wildcards are text, not patterns


NO_FILTERS = filters_key(EventFilters())


@pytest.mark.parametrize(
    "query, message",
    [
        ({"cursor": "forged"}, "page link is broken or was altered"),
        ({"cursor": signing.dumps(["x", 1, "older", NO_FILTERS], salt="another.salt")}, "page link is broken"),
        ({"cursor": signing.dumps(["2026-01-01T00:00:00", 1, "older", NO_FILTERS], salt=CURSOR_SALT)},
         "page link is broken"),
        ({"cursor": signing.dumps(["2026-01-01T00:00:00+00:00", 1, "sideways", NO_FILTERS], salt=CURSOR_SALT)},
         "page link is broken"),
        ({"cursor": signing.dumps(["2026-01-01T00:00:00+00:00", 1, "older"], salt=CURSOR_SALT)},  # before filters
         "page link is broken"),
        ({"size": "201"}, "less than or equal to 200"),
        ({"size": "1000000"}, "less than or equal to 200"),
        ({"size": "0"}, "greater than or equal to 1"),
        ({"since": "yesterday"}, "Enter a valid date/time"),
        ({"until": "2026-13-45T25:61"}, "Enter a valid date/time"),
        ({"since": "2026-02-01", "until": "2026-01-01"}, "start of the time range is after its end"),
        ({"outcome": "maybe"}, "Select a valid choice"),
        ({"ip": "10.0.0.300"}, "valid IPv4 or IPv6"),
        ({"action": "vms'; DROP"}, "action prefix holds only"),
    ],
)
def test_bad_filters_are_refused_with_a_message_and_audited(as_auditor, query, message):
    page_events(2)
    response = as_auditor.get(reverse("audit:events"), query)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert response.context["events"] == []
    refusal = AuditEvent.objects.filter(action="audit.events.view", outcome="failed").latest("id")
    assert refusal.actor_name == "audrey-auditor" and message.split()[0] in refusal.error


def test_a_real_cursor_with_a_changed_position_is_refused(as_auditor):
    page_events(3)
    first = as_auditor.get(reverse("audit:events"), {"action": "t.page.", "size": 1})
    query = parse_qs(first.context["links"]["older"][1:])
    value, _, signature = query["cursor"][0].rpartition(":")
    query["cursor"] = [value[:-1] + ("A" if value[-1] != "A" else "B") + ":" + signature]
    tampered = "?" + urlencode(query, doseq=True)
    response = as_auditor.get(reverse("audit:events") + tampered)
    assert response.status_code == 400 and "page link is broken" in response.content.decode()


def test_a_cursor_reused_under_other_filters_is_refused(as_auditor):
    """A page link carries the hash of its filters: edited filters with an old cursor would
    show a page that is neither the newest of the new view nor a continuation of the old."""
    page_events(4)
    url = reverse("audit:events")
    first = as_auditor.get(url, {"action": "t.page.", "size": 1})
    older = first.context["links"]["older"]
    assert as_auditor.get(url + older).status_code == 200  # the same filters: fine
    for edited in (older.replace("t.page.", "t.pag"), older + "&outcome=success", older.replace("action=t.page.&", "")):
        response = as_auditor.get(url + edited)
        assert response.status_code == 400, edited
        assert "This page link belongs to other filters" in response.content.decode()
        assert response.context["events"] == []
    refusal = AuditEvent.objects.filter(action="audit.events.view", outcome="failed").latest("id")
    assert "belongs to other filters" in refusal.error
    # the page size is no filter: a link keeps working with another size
    assert as_auditor.get(url + older.replace("size=1", "size=2")).status_code == 200


def test_pages_read_no_count_and_no_offset_and_the_same_number_of_queries_everywhere(as_auditor):
    page_events(12)
    url = reverse("audit:events")
    as_auditor.get(url, {"size": 2})  # warm: session and first-request work
    counted = {}
    for name, query in {"first": {"size": 2}, "oldest": {"size": 2, "end": "oldest"}}.items():
        with CaptureQueriesContext(connection) as ctx:
            response = as_auditor.get(url, query)
        counted[name] = ctx.captured_queries
        links = response.context["links"]
    with CaptureQueriesContext(connection) as ctx:
        as_auditor.get(url + links["newer"])  # a page in the middle, reached by cursor
    counted["middle"] = ctx.captured_queries
    with CaptureQueriesContext(connection) as ctx:
        as_auditor.get(url, {"size": 2, "actor": "system", "action": "t.page."})
    counted["filtered"] = ctx.captured_queries
    assert len({len(q) for q in counted.values()}) == 1, {k: len(v) for k, v in counted.items()}
    for queries in counted.values():
        on_audit = [q["sql"].upper() for q in queries if "AUDIT_AUDITEVENT" in q["sql"].upper()]
        assert len(on_audit) == 1, on_audit  # the page itself, one read
        assert not any("COUNT(" in sql or " OFFSET " in sql for sql in on_audit), on_audit


def test_csv_export_neutralises_formulas_streams_and_is_audited(as_auditor):
    nasty = ["=HYPERLINK(\"http://x\")", "+1+2", "-2+3", "@SUM(A1)", "\tcmd", "\rcmd"]
    for i, name in enumerate(nasty):
        record(actor=None, action="t.export.csv", target=("file", "", name), outcome="success",
               params={"password": "hunter2", "n": i}, actor_name="=evil")  # fmt: skip
    response = as_auditor.get(reverse("audit:export"), {"action": "t.export.", "format": "csv"})
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    header, body = rows[0], rows[1:]
    assert len(body) == len(nasty)
    cells = {r[header.index("target_name")] for r in body}
    assert cells == {"'" + name for name in nasty}
    assert {r[header.index("actor_name")] for r in body} == {"'=evil"}
    assert all("hunter2" not in ",".join(r) for r in body)
    export = AuditEvent.objects.filter(action="audit.events.export").latest("id")
    assert export.actor_name == "audrey-auditor" and export.outcome == "success"
    assert export.params == {"format": "csv", "filters": {"action": "t.export."}}


def test_jsonl_export_has_every_filtered_event(as_auditor):
    events = page_events(5, action="t.export.json")
    response = as_auditor.get(reverse("audit:export"), {"action": "t.export.json", "format": "jsonl"})
    assert response.streaming and response["Content-Type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in b"".join(response.streaming_content).decode().splitlines()]
    assert [item["id"] for item in lines] == [e.pk for e in events][::-1]
    assert lines[0]["action"] == "t.export.json" and lines[0]["target_name"] == "thing-4"
    assert datetime.fromisoformat(lines[0]["created_at"]) == events[-1].created_at


def test_export_reads_by_keyset_chunks_without_gaps_or_repeats(auditor):
    events = page_events(7, action="t.export.chunk")
    chunks = list(events_for_export(auditor, EventFilters(action="t.export.chunk"), chunk_size=3))
    assert [len(c) for c in chunks] == [3, 3, 1]
    assert [row[0] for c in chunks for row in c] == [e.pk for e in events][::-1]


def test_export_with_bad_filters_or_format_is_refused(as_auditor):
    for query in ({"format": "xlsx"}, {"format": "csv", "size": "5000"}, {"format": "csv", "cursor": "x"}):
        response = as_auditor.get(reverse("audit:export"), query)
        assert response.status_code == 400 and not response.streaming
    assert not AuditEvent.objects.filter(action="audit.events.export", outcome="success").exists()
    assert AuditEvent.objects.filter(action="audit.events.export", outcome="failed").count() == 3


def test_event_detail_shows_redacted_params_the_job_and_its_neighbours(as_auditor, operator):
    log = [{"at": "12:00:00", "msg": "domain started"}]
    host = Host.objects.create(name="h-audit-detail", uri="test:///default")
    job = Job.objects.create(kind="vms.vm.start", target_type="virtualmachine", target_name="web-1", host=host,
                             actor_name="oscar-operator", log=log)  # fmt: skip
    with context.bound("192.0.2.9", "req-detail"):
        event = record(actor=operator, action="vms.vm.start", target=("virtualmachine", 1, "web-1"),
                       outcome="requested", params={"passphrase": "s3cret", "mode": "fast"}, job=job)  # fmt: skip
        same_request = record(actor=operator, action="t.detail.other", outcome="success")
    same_job = record(actor=None, action="vms.vm.start", outcome="success", job=job)
    unrelated = record(actor=None, action="t.detail.unrelated", outcome="success")
    response = as_auditor.get(reverse("audit:event", args=[event.pk]))
    assert response.status_code == 200
    text = html.unescape(response.content.decode())
    assert "s3cret" not in text and "[redacted]" in text and '"mode": "fast"' in text
    assert "req-detail" in text and "domain started" in text and "web-1 on h-audit-detail" in text
    d = response.context["d"]
    assert [e.pk for e in d.same_job] == [same_job.pk]
    assert [e.pk for e in d.same_request] == [same_request.pk]
    assert unrelated.pk not in {e.pk for e in d.same_job + d.same_request}
    assert as_auditor.get(reverse("audit:event", args=[unrelated.pk + 1000])).status_code == 404


def test_the_list_links_each_event_to_its_detail_and_shows_its_params(as_auditor):
    event = record(actor=None, action="t.page.params", outcome="success", params={"mode": "fast"})
    text = html.unescape(as_auditor.get(reverse("audit:events"), {"action": "t.page."}).content.decode())
    assert reverse("audit:event", args=[event.pk]) in text
    assert '"mode": "fast"' in text


@pytest.mark.parametrize("role, status", [("admin", 200), ("auditor", 200), ("operator", 403), ("viewer", 403)])
def test_auditors_and_admins_read_the_log_others_are_refused(client, personas, role, status):
    (event,) = page_events(1)
    client.force_login(personas[role])
    for url in (reverse("audit:events"), reverse("audit:event", args=[event.pk]), reverse("audit:export")):
        assert client.get(url).status_code == status, url


def test_the_streamed_csv_neutralises_text_cells_only():
    from apps.core.csvsafe import stream_csv

    text = "".join(stream_csv(["h"], [[("=1", "a=1", -1, None, "@x")], [("\tx", "\rx", 3.5, "", "-2")]]))
    rows = list(csv.reader(io.StringIO(text)))
    assert rows == [["h"], ["'=1", "a=1", "-1", "", "'@x"], ["'\tx", "'\rx", "3.5", "", "'-2"]]


def test_export_times_are_iso_8601_in_utc_whatever_the_database_prints():
    from apps.audit.selectors import iso_utc

    cases = {"2026-01-02 03:04:05.6+00": "2026-01-02T03:04:05.6+00:00",
             "2026-01-02 03:04:05+02": "2026-01-02T03:04:05+02:00",
             "2026-01-02 03:04:05.600000": "2026-01-02T03:04:05.600000+00:00",
             "2026-01-02 03:04:05-05:30": "2026-01-02T03:04:05-05:30"}  # fmt: skip
    for printed, iso in cases.items():
        assert iso_utc(printed) == iso and datetime.fromisoformat(iso).tzinfo is not None


def test_a_vms_history_reads_its_events_by_the_target_index_in_order(db, settings):
    """The History tab asks for one VM's newest events: the (target_type, target_id,
    created_at, id) index answers it in order, with no sort of every event about the VM."""
    from apps.vms.history import HISTORY_EVENTS, vm_history

    host = Host.objects.create(name="h-history-plan", uri="test:///default")
    vm = VirtualMachine.objects.create(host=host, uuid=uuid.uuid4(), name="hist-1")
    qs = (AuditEvent.objects.filter(target_type="virtualmachine", target_id=str(vm.pk))
          .exclude(action="vms.vm.config_changed").order_by("-created_at", "-id")[:HISTORY_EVENTS])  # fmt: skip
    with connection.cursor() as cur:
        if connection.vendor == "postgresql":  # a tiny table: tell the planner a scan is dear
            cur.execute("SET LOCAL enable_seqscan = off")
            cur.execute("SET LOCAL enable_sort = off")
        plan = qs.explain()
    assert "audit_target_ref_time_idx" in plan, plan
    assert "Sort" not in plan and "TEMP B-TREE" not in plan, plan  # walked in order
    # and the tab's own read is that query
    from django.contrib.auth import get_user_model

    from apps.accounts.models import Role, RoleAssignment

    reader = get_user_model().objects.create_user("hist-reader", password="x-very-long-pass-1")
    RoleAssignment.objects.create(user=reader, role=Role.AUDITOR, scope="global")
    mine = record(actor=None, action="vms.vm.start", target=vm, outcome="success")
    with CaptureQueriesContext(connection) as ctx:
        history = vm_history(actor=reader, vm=vm)
    assert [e.pk for e in history["events"]] == [mine.pk]
    reads = [q["sql"] for q in ctx.captured_queries if "audit_auditevent" in q["sql"] and "SELECT" in q["sql"]]
    assert any('"target_type" = ' in sql and '"target_id" = ' in sql and "ORDER BY" in sql for sql in reads), reads


def test_an_ipv6_filter_finds_its_events_however_the_address_is_written(auditor):
    """The page's form normalises an address; a caller of the selector (a command) may not:
    the read binds it as the ORM would, so 0:0::1 finds the events from ::1."""
    from apps.audit import selectors

    with context.bound("::1", "req-v6"):
        event = record(actor=None, action="t.v6", target=("file", "", "x"), outcome="success")
    reader = type(auditor).objects.get(pk=auditor.pk)
    for written in ("::1", "0:0::1", "0000:0000:0000:0000:0000:0000:0000:0001"):
        page = selectors.events_page(reader, selectors.EventFilters(ip=written, action="t.v6"))
        assert [e.id for e in page.events] == [event.pk], written
