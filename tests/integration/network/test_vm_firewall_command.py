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


def test_apply_confirm_and_delete_from_the_command_line(host, admin, nft_table):
    from apps.core.gateways import nft
    from apps.network.models import FirewallApply

    zone = Zone.objects.create(host=host, name=f"c{uuid.uuid4().hex[:6]}", kind="untrusted",
                               bridge=f"nob{uuid.uuid4().hex[:6]}", network_name=f"n{uuid.uuid4().hex[:6]}")
    run("--as", admin.username, "add", "--zone", zone.name, "--direction", "in", "--protocol", "udp",
        "--ports", "53", "--action", "accept", "--comment", "dns in")  # fmt: skip
    rule = FirewallRule.objects.get(zone=zone)
    assert "dns in" in run("--as", admin.username, "apply", "--diff-only")
    assert nft.list_tables(nft_table) == []  # the diff only: nothing loaded
    out = run("--as", admin.username, "apply")
    pending = FirewallApply.objects.get(host=host, state="pending")
    assert f"apply #{pending.pk} loaded" in out and f"r{rule.pk} dns in" in str(nft.list_tables(nft_table))
    assert AuditEvent.objects.get(action="network.firewall.apply").params["checked_at"] == "preview"
    run("--as", admin.username, "confirm", str(pending.pk))
    assert FirewallApply.objects.get(pk=pending.pk).state == "confirmed"
    run("--as", admin.username, "delete", str(rule.pk))
    assert not FirewallRule.objects.filter(pk=rule.pk).exists()
    assert AuditEvent.objects.filter(action="network.rule.delete", outcome="success").exists()


def test_nat_is_a_zone_policy_the_command_sets(host, admin):
    from apps.network.services.firewall import _document

    zone = Zone.objects.create(host=host, name=f"n{uuid.uuid4().hex[:6]}", kind="secure",
                               bridge=f"nob{uuid.uuid4().hex[:6]}", network_name=f"n{uuid.uuid4().hex[:6]}")
    assert "masquerade" not in str(_document(host))  # no NAT unless the policy says so
    with pytest.raises(CommandError, match="NAT needs the uplink"):
        run("--as", admin.username, "zone", "edit", zone.name, "--nat", "yes")
    assert AuditEvent.objects.filter(action="network.zone.edit", outcome="failed").exists()
    run("--as", admin.username, "zone", "edit", zone.name, "--uplink", "vpn0", "--nat", "yes")
    zone.refresh_from_db()
    assert zone.nat and zone.uplink == "vpn0" and " nat " in run("zone", "list")
    rules = [c["add"]["rule"] for c in _document(host)["nftables"] if "rule" in c.get("add", {})]
    nat = [r for r in rules if r["chain"] == "nat"]
    assert [r["expr"][:2] for r in nat] == [[{"match": {"op": "==", "left": {"meta": {"key": "iifname"}},
                                                        "right": zone.bridge}},
                                             {"match": {"op": "==", "left": {"meta": {"key": "oifname"}},
                                                        "right": "vpn0"}}]]  # fmt: skip
    assert AuditEvent.objects.filter(action="network.zone.edit", outcome="success", params__nat=True).exists()

    # chosen when the zone is made, too: refused without an uplink, kept with one
    made = f"m{uuid.uuid4().hex[:6]}"
    with pytest.raises(CommandError, match="NAT needs the uplink"):
        run("--as", admin.username, "zone", "create", made, "--kind", "secure", "--nat")
    assert not Zone.objects.filter(name=made).exists()
    run("--as", admin.username, "zone", "create", made, "--kind", "secure", "--uplink", "vpn1", "--nat")
    assert Zone.objects.get(host=host, name=made).nat
    assert AuditEvent.objects.filter(action="network.zone.create", outcome="success", params__nat=True).exists()
