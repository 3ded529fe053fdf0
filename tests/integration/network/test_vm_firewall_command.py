"""`manage.py vm_firewall`: zones (a real isolated libvirt network, by job), rules through
the same forms and services as the pages, refusals audited."""

import uuid
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from apps.audit.models import AuditEvent
from apps.core import jobs
from apps.core.gateways import libvirt as gw
from apps.network.models import FirewallRule, Zone

pytestmark = pytest.mark.libvirt


def run(*args):
    out = StringIO()
    call_command("vm_firewall", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_zone_lifecycle_and_zone_rules(host, admin, viewer, settings):
    name = f"z{uuid.uuid4().hex[:6]}"
    run("--as", admin.username, "zone", "create", name, "--kind", "untrusted", "--ipv4-cidr", "198.51.100.0/24",
        "--description", "lab")  # fmt: skip
    zone = Zone.objects.get(host=host, name=name)
    try:
        job = jobs.job_run(jobs.Job.objects.get(kind="network.zone.create", target_id=str(zone.pk)).pk)
        assert job.state == "succeeded", job.error
        net = next(n for n in gw.network_list(host.uri) if n.name == zone.network_name)
        assert net.active and net.bridge == zone.bridge and net.forward_mode == "isolated"
        assert "untrusted" in run("zone", "list")

        out = run("--as", admin.username, "add", "--zone", name, "--direction", "in", "--protocol", "tcp",
                  "--ports", "8000-8080", "--remote", "2001:db8::/64", "--action", "accept", "--comment", "web")
        assert "added" in out
        rule = FirewallRule.objects.get(zone=zone)
        assert (rule.port_from, rule.port_to, rule.remote_cidr) == (8000, 8080, "2001:db8::/64")
        assert "zone:" + name in run("list")

        with pytest.raises(CommandError, match="inverted"):
            run("--as", admin.username, "add", "--zone", name, "--direction", "in", "--protocol", "tcp",
                "--ports", "90-80", "--action", "accept")  # fmt: skip
        with pytest.raises(CommandError, match="quotes"):
            run("add", "--zone", name, "--direction", "in", "--action", "drop", "--comment", "x'; drop")
        assert AuditEvent.objects.filter(action="network.rule.add", outcome="failed").count() == 2
        with pytest.raises(CommandError, match="permission"):
            run("--as", viewer.username, "zone", "edit", name, "--policy-out", "accept")
        run("zone", "edit", name, "--policy-out", "accept", "--host-access", "yes")
        zone.refresh_from_db()
        assert (zone.policy_out, zone.host_access) == ("accept", True)

        with pytest.raises(CommandError, match="needs confirmation"):
            run("zone", "delete", name)
        run("zone", "delete", name, "--yes")
        assert not Zone.objects.filter(pk=zone.pk).exists()
        job = jobs.job_run(jobs.Job.objects.get(kind="network.zone.delete").pk)
        assert job.state == "succeeded", job.error
        assert not gw.network_exists(host.uri, zone.network_name)
    finally:
        if gw.network_exists(host.uri, zone.network_name):
            gw.network_remove(host.uri, zone.network_name)


def test_bad_zone_input_is_refused_and_audited(host, admin):
    with pytest.raises(CommandError, match="semicolons"):
        run("--as", admin.username, "zone", "create", "a;b", "--kind", "secure")
    with pytest.raises(CommandError, match="uplink"):
        run("--as", admin.username, "zone", "create", "vpn1", "--kind", "vpn-only")
    assert AuditEvent.objects.filter(action="network.zone.create", outcome="failed").count() == 2
    assert not Zone.objects.exists()


def test_quarantine_is_a_job_the_command_starts(host, operator, monkeypatch):
    from django.utils import timezone

    from apps.vms.models import VirtualMachine

    monkeypatch.setattr(jobs, "_send", lambda job_id: None)  # no worker: the command only asks
    vm = VirtualMachine.objects.create(host=host, uuid=uuid.uuid4(), name=f"q{uuid.uuid4().hex[:6]}",
                                       last_seen=timezone.now())  # fmt: skip
    out = run("--as", operator.username, "quarantine", vm.name, "--reason", "beaconing", "--no-wait")
    job = jobs.Job.objects.get(kind="network.vm.quarantine", target_id=str(vm.pk))
    assert job.state == "queued" and job.params["incident"] in out and f"job {job.pk}" in out
    with pytest.raises(CommandError, match="already being quarantined"):
        run("--as", operator.username, "quarantine", vm.name, "--no-wait")
