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
