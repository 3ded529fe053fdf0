"""`manage.py vm_backup`: the same services, scope and audit as the pages."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from apps.accounts.models import Role
from apps.backups.models import BackupRun
from apps.core.models import Job


def command(*args) -> str:
    out = StringIO()
    call_command("vm_backup", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_run_all_as_a_user_backs_up_the_vms_in_their_scope_and_list_shows_the_last_good(
    make_user, shut_vm_with_data, destination, make_domain, host
):
    from apps.vms.models import VirtualMachine
    from apps.vms.services import inventory_sync

    scoped_vm, _ = shut_vm_with_data
    other = make_domain(running=False, disk_gib=16 / 1024)
    inventory_sync(host)
    vm = VirtualMachine.objects.get(host=host, name=other)
    user = make_user("sam-scoped", Role.OPERATOR, scope="vm", vm=scoped_vm)

    command("--as", user.username, "--no-wait", "run", "--all", "--destination", destination)

    runs = list(BackupRun.objects.all())
    assert [r.vm for r in runs] == [scoped_vm], "--all went beyond the user's scope"
    assert runs[0].job.actor_name == user.username and runs[0].state == "queued"
    # the run's end as the job writes it (the job itself is exercised in test_backup_restore)
    BackupRun.objects.filter(pk=runs[0].pk).update(state="succeeded", snapshot_id="0123abcd",
                                                   finished_at=timezone.now())  # fmt: skip
    listing = command("--as", user.username, "list")
    assert f"{scoped_vm.name}: last good #{runs[0].pk}" in listing
    assert vm.name not in listing

    with pytest.raises(CommandError, match="No VM named"):  # outside the scope: "not found", as on the pages
        command("--as", user.username, "run", vm.name, "--destination", destination)
    with pytest.raises(CommandError, match="outside the allowed backup roots"):
        command("--no-wait", "run", scoped_vm.name, "--destination", "/etc/portal-backups")
    with pytest.raises(CommandError, match="Retention must keep"):
        command("--no-wait", "prune", "--destination", destination)
    command("--no-wait", "prune", "--destination", destination, "--keep-last", "2")
    assert Job.objects.filter(kind="backups.repository.prune").count() == 1


def test_verify_and_restore_in_place_through_the_command(operator, shut_vm_with_data, destination):
    """`vm_backup verify RUN` and `vm_backup restore RUN --in-place --yes` queue the same jobs
    as the pages (run here as the worker would); bad arguments are refused with the reason."""
    import hashlib
    from pathlib import Path

    from apps.backups import services
    from apps.backups.models import BackupVerification

    from .conftest import run_job, write_random

    vm, data_path = shut_vm_with_data
    run = services.backup_start(actor=operator, vm=vm, destination=destination)
    assert run_job(run.job).state == "succeeded"
    run.refresh_from_db()
    assert "(verification overdue)" in command("--as", operator.username, "list", "--vm", vm.name)

    command("--as", operator.username, "--no-wait", "verify", str(run.pk))
    job = run_job(Job.objects.get(kind="backups.run.verify"))
    assert job.state == "succeeded", job.error
    assert job.actor_name == operator.username
    assert BackupVerification.objects.get(run=run).ok
    assert "(verification overdue)" not in command("--as", operator.username, "list", "--vm", vm.name)

    with pytest.raises(CommandError, match="Give --name NEW and --pool POOL"):
        command("--no-wait", "restore", str(run.pk))
    with pytest.raises(CommandError, match="needs confirmation"):
        command("--no-wait", "restore", str(run.pk), "--in-place")
    write_random(data_path, 8)  # the disk changed since the backup
    said = command("--as", operator.username, "--no-wait", "restore", str(run.pk), "--in-place", "--yes")
    job = run_job(Job.objects.get(kind="backups.vm.restore_in_place"))
    assert f"{data_path}.pre-restore-{job.pk}" in said and "remove it when satisfied" in said, said
    assert job.state == "succeeded", job.error
    recorded = {d["target"]: d["sha256"] for d in run.disks}["vdb"]
    assert hashlib.sha256(Path(data_path).read_bytes()).hexdigest() == recorded
    Path(f"{data_path}.pre-restore-{job.pk}").unlink()  # the replaced disk was kept


def test_restore_as_a_new_vm_through_the_command(operator, shut_vm_with_data, destination, libvirt_uri, test_pool):
    """`vm_backup restore RUN --name NEW --pool POOL` defines NEW on disks equal to those
    recorded at backup time, as the job of the page does; a taken name is refused."""
    import hashlib
    from pathlib import Path

    from apps.backups import services
    from apps.core.gateways import libvirt as gw
    from apps.vms.models import VirtualMachine
    from tests.conftest import unique

    from .conftest import run_job

    vm, _ = shut_vm_with_data
    run = services.backup_start(actor=operator, vm=vm, destination=destination)
    assert run_job(run.job).state == "succeeded"
    run.refresh_from_db()
    with pytest.raises(CommandError, match="exists; choose a new name"):
        command("--as", operator.username, "restore", str(run.pk), "--name", vm.name, "--pool", test_pool)
    new_name = unique("cmd-restored")
    try:
        command("--as", operator.username, "--no-wait", "restore", str(run.pk), "--name", new_name,
                "--pool", test_pool)  # fmt: skip
        job = run_job(Job.objects.get(kind="backups.vm.restore"))
        assert job.state == "succeeded", job.error
        assert job.actor_name == operator.username and job.params["new_name"] == new_name
        disks = {d["target"]: d["path"] for d in gw.domain_disks_parse(gw.domain_xml_defined(libvirt_uri, new_name))}
        for disk in run.disks:
            assert hashlib.sha256(Path(disks[disk["target"]]).read_bytes()).hexdigest() == disk["sha256"]
        assert VirtualMachine.objects.filter(host=vm.host, name=new_name, present=True).exists()
    finally:
        try:
            gw.domain_undefine(libvirt_uri, new_name)
        except Exception:
            pass
        for path in Path(gw.pool_path(libvirt_uri, test_pool)).glob(f"{new_name}-*"):
            path.unlink()
