"""`manage.py storage_quota` keeps the seed's verbs, through the same services and audit."""

import pytest
from django.core.management import CommandError, call_command

from apps.storage.models import GIB, VmQuota

from .conftest import events, overfill

pytestmark = pytest.mark.libvirt


def _run(*args) -> str:
    from io import StringIO

    out = StringIO()
    call_command("storage_quota", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_the_seed_verbs_work_as_the_system_user(off_vm):
    assert "quota 20 GiB," in _run("set", off_vm.name, "20")
    assert "quota 25 GiB," in _run("expand", off_vm.name, "25")  # the seed: "Expand to ..."
    assert "alert at 90%" in _run("alert-threshold", off_vm.name, "90")
    assert "allocated" in _run("get", off_vm.name)
    assert off_vm.name in _run("list")
    assert VmQuota.objects.get(vm=off_vm).limit_bytes == 25 * GIB
    for action in ("storage.quota.set", "storage.quota.expand", "storage.quota.threshold"):
        (event,) = events(action, outcome="success")
        assert (event.actor_name, event.actor_id) == ("system", None)


def test_as_user_applies_that_users_permissions(viewer, operator, off_vm):
    with pytest.raises(CommandError, match="permission"):
        _run("--as", viewer.username, "set", off_vm.name, "20")
    assert events("storage.quota.set", outcome="denied")[0].actor_name == viewer.username
    _run("--as", operator.username, "set", off_vm.name, "20")
    assert events("storage.quota.set", outcome="success")[0].actor_name == operator.username
    with pytest.raises(CommandError, match="No active portal user"):
        _run("--as", "nobody-here", "get", off_vm.name)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("set", "{vm}", "0"), "more than 0"),
        (("set", "{vm}", "-1"), "more than 0"),
        (("expand", "{vm}", "1e999"), "larger than"),
        (("alert-threshold", "{vm}", "0"), "1 to 100"),
        (("alert-threshold", "{vm}", "101"), "1 to 100"),
        (("get", "no-such-vm"), "No VM named 'no-such-vm'"),
    ],
)
def test_bad_input_is_a_clear_error(off_vm, args, message):
    with pytest.raises(CommandError, match=message):
        _run(*[a.format(vm=off_vm.name) for a in args])
    assert not VmQuota.objects.filter(vm=off_vm).exists()


def test_check_fails_when_a_vm_is_over_its_hard_limit(small_vm):
    off_vm = small_vm
    assert "checked" in _run("check")
    overfill(off_vm)
    with pytest.raises(CommandError, match="below the"):
        _run("set", off_vm.name, "0.25")
    _run("set", off_vm.name, "0.25", "--confirm")
    with pytest.raises(CommandError, match="over their hard limit") as exc:
        _run("check")
    assert exc.value.returncode == 1


def _run_all(*args) -> tuple[str, str]:
    from io import StringIO

    out, err = StringIO(), StringIO()
    try:
        call_command("storage_quota", *args, stdout=out, stderr=err)
    except CommandError as exc:
        exc.out, exc.err = out.getvalue(), err.getvalue()
        raise
    return out.getvalue(), err.getvalue()


def test_a_users_check_reads_reports_and_acts_only_within_their_scope(make_user, host, make_domain):
    from apps.accounts.models import Role
    from apps.core.gateways import libvirt as gw
    from apps.storage.models import StorageAlert
    from apps.vms.models import VirtualMachine
    from apps.vms.services import inventory_sync

    mine, other = make_domain(disk_gib=0.25), make_domain(disk_gib=0.25)
    inventory_sync(host)
    vms = {n: VirtualMachine.objects.select_related("host").get(host=host, name=n) for n in (mine, other)}
    for name, vm in vms.items():
        overfill(vm)
        _run("set", name, "0.25", "--confirm")
        _run("breach-action", name, "suspend")
        gw.domain_start(host.uri, name)
    user = make_user(role=Role.OPERATOR, scope="vm", vm=vms[mine])

    with pytest.raises(CommandError, match="1 VM\\(s\\) over their hard limit") as exc:
        _run_all("--as", user.username, "check")
    out, err = exc.value.out, exc.value.err
    assert out.startswith("checked 1 VMs and 0 pools")
    assert mine in out and other not in out + err
    assert f"suspended: {mine}:" in out
    assert gw.domain_state(host.uri, mine) == "paused"
    assert gw.domain_state(host.uri, other) == "running"  # outside the scope: untouched
    assert not StorageAlert.objects.filter(vm=vms[other]).exists()
    for action in ("storage.alert.raise", "storage.quota.suspend"):
        assert [(e.target_name, e.actor_name) for e in events(action)] == [(mine, user.username)]

    with pytest.raises(CommandError):
        _run_all("check")
    assert gw.domain_state(host.uri, other) == "paused"  # the system-wide check acts everywhere
    assert [e.actor_name for e in events("storage.quota.suspend", target_name=other)] == ["system"]


def test_check_exits_non_zero_naming_an_unreadable_host_once(off_vm, caplog):
    from apps.core.models import Host

    Host.objects.create(name="ghost-host", uri="qemu+unix:///system?socket=/nonexistent/libvirt-sock")
    with pytest.raises(CommandError) as exc:
        _run_all("check")
    assert exc.value.returncode == 2
    said = exc.value.out + exc.value.err + str(exc.value) + caplog.text
    assert said.count("ghost-host") == 1
    assert "host unreadable: ghost-host:" in exc.value.err
    assert "1 host(s) could not be read" in str(exc.value)


def test_expand_sets_the_size_and_by_adds(off_vm):
    _run("set", off_vm.name, "20")
    assert "quota 100 GiB," in _run("expand", off_vm.name, "100")  # "Expand to 100GB"
    assert "quota 105 GiB," in _run("expand", off_vm.name, "--by", "5")
    with pytest.raises(CommandError, match="already 105 GiB; expanding it to 50 GiB would shrink it"):
        _run("expand", off_vm.name, "50")
    with pytest.raises(CommandError, match="not both"):
        _run("expand", off_vm.name, "200", "--by", "5")
    assert VmQuota.objects.get(vm=off_vm).limit_bytes == 105 * GIB


def test_breach_action_pool_limits_defaults_and_trend_from_the_command_line(host, test_pool, off_vm):
    assert "on breach refuse;" in _run("breach-action", off_vm.name, "refuse")
    assert VmQuota.objects.get(vm=off_vm).breach_action == "refuse"

    assert "maximum overcommit 3.00x (default), reserve 10% (default)" in _run("pool-limit", test_pool)
    out = _run("pool-limit", test_pool, "--max-overcommit", "1.5")
    assert "maximum overcommit 1.50x, reserve 10% (default)" in out
    out = _run("pool-limit", test_pool, "--reserve", "20")  # the other limit is kept
    assert "maximum overcommit 1.50x, reserve 20%" in out
    out = _run("pool-limit", test_pool, "--max-overcommit", "default")
    assert "maximum overcommit 3.00x (default), reserve 20%" in out
    with pytest.raises(CommandError, match="from 0 to 99"):
        _run("pool-limit", test_pool, "--reserve", "100")

    assert "defaults: quota 100 GiB, alert at 80%, on breach alert" in _run("defaults")
    out = _run("defaults", "--quota", "50", "--action", "suspend")
    assert "defaults: quota 50 GiB, alert at 80%, on breach suspend" in out
    with pytest.raises(CommandError, match="1 to 100"):
        _run("defaults", "--alert", "0")
    for action in ("storage.pool.limit", "storage.settings.update"):
        assert {e.actor_name for e in events(action)} == {"system"}

    assert "no usage samples yet" in _run("trend", off_vm.name)
    _run("check")
    _run("check")
    out = _run("trend", off_vm.name)
    assert f"{off_vm.name}: 2 samples since" in out and "of its quota of" in out
    assert "no usage samples yet" not in _run("trend", "--pool", test_pool)


def test_list_marks_default_quotas_and_shows_the_breach_action(host, make_domain):
    from apps.vms.services import inventory_sync

    own, default = make_domain(), make_domain()
    inventory_sync(host)
    _run("set", own, "30")
    _run("breach-action", own, "suspend")
    rows = {line.split()[1]: line for line in _run("list").splitlines()[1:]}
    assert "ON BREACH" in _run("list").splitlines()[0]
    assert "30 GiB" in rows[own] and "(default)" not in rows[own] and "suspend" in rows[own]
    assert "100 GiB (default)" in rows[default] and " alert " in rows[default]


def test_help_explains_the_quota_model():
    from django.core.management import load_command_class

    parser = load_command_class("apps.storage", "storage_quota").create_parser("manage.py", "storage_quota")
    text = parser.format_help()
    assert "hard limit caps the provisioned" in text
    assert "watches allocation" in text
