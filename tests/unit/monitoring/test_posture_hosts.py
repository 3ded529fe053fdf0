"""The posture of each host: the worker's own machine is read for the hosts on it; for a
host on another machine, a check that reads the machine says "not checked: remote host"
(never this machine's result), the LSM checks are read over its libvirt connection (real
libvirt: its test driver and this machine's qemu:///system), and the portal's own records
are counted per host."""

from __future__ import annotations

from apps.core.models import Host
from apps.monitoring import posture, services
from apps.monitoring.models import PostureResult, Status


def _check(key):
    return next(c for c in posture.CHECKS if c.key == key)


def test_a_remote_hosts_machine_checks_say_not_checked_never_the_local_result(host):
    far = Host.objects.create(name="far-away", uri="qemu+ssh://far-away.invalid/system")
    assert posture.host_is_local(host) and not posture.host_is_local(far)
    keys = ["sysctl.kernel.randomize_va_space", "ssh.key_only", "auditd.rules", "updates.schedule"]

    local = {f.key: f for f in posture.evaluate([_check(k) for k in keys], host=host)}
    remote = {f.key: f for f in posture.evaluate([_check(k) for k in keys], host=far)}

    assert local["sysctl.kernel.randomize_va_space"].status in (Status.PASS, Status.FAIL)  # read here
    for key in keys:
        assert remote[key].status == Status.UNKNOWN, key
        assert remote[key].evidence.startswith("not checked: remote host"), remote[key].evidence
        assert "far-away" in remote[key].evidence

    services.posture_check(checks=[_check(k) for k in keys])  # beat: every host gets its own rows
    stored = {(r.host.name, r.key): r.status for r in PostureResult.objects.select_related("host")}
    assert stored[("far-away", "ssh.key_only")] == Status.UNKNOWN
    assert stored[(host.name, "sysctl.kernel.randomize_va_space")] == local["sysctl.kernel.randomize_va_space"].status


def test_lsm_checks_of_a_remote_host_are_read_over_libvirt(host, monkeypatch, libvirt_uri):
    monkeypatch.setattr(posture, "host_is_local", lambda h: False)  # both stand for other machines
    simulated = Host.objects.create(name="libvirt-test-driver", uri="test:///default")

    (test_driver,) = posture.evaluate([_check("lsm.qemu_confined")], host=simulated)
    (this_one,) = posture.evaluate([_check("lsm.active")], host=host)  # qemu:///system here: none, dac

    assert test_driver.status == Status.PASS and "testSecurity" in test_driver.evidence
    assert this_one.status == Status.FAIL and "no LSM" in this_one.evidence and "dac" in this_one.evidence


def test_the_portals_records_are_counted_per_host(host, make_user):
    from apps.vms.models import VirtualMachine

    other = Host.objects.create(name="other-host", uri="qemu+ssh://other.invalid/system")
    VirtualMachine.objects.create(host=other, name="only-there", uuid="6d1f1f64-0c5e-4b8e-9b57-2f0a4f5c1a01",
                                  present=True, vcpus=1, memory_kib=0)  # fmt: skip

    (there,) = posture.evaluate([_check("vms.resource_limits")], host=other)
    (empty,) = posture.evaluate([_check("backups.verified")], host=Host.objects.create(name="e", uri="test:///default"))

    assert there.status == Status.UNKNOWN and "only-there" in there.evidence
    assert empty.status == Status.UNKNOWN and "no VM is known yet" in empty.evidence
