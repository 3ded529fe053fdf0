"""The Backups page: what each role sees and may do, forms that refuse bad input (audited),
the progress bar of a running backup, and the last good backup once it finished."""

from __future__ import annotations

from django.urls import reverse
from django.utils import timezone

from apps.accounts.models import Role
from apps.audit.models import AuditEvent
from apps.backups.models import BackupRun
from tests.conftest import reauthenticate

HX = {"HTTP_HX_REQUEST": "true"}


def row(html: str, vm_name: str) -> str:
    """The VM's row of the status table (other VMs of the host have their own)."""
    start = html.index(f'<tr data-vm="{vm_name}">')
    return html[start : html.index("</tr>", start)]


def test_an_operator_backs_up_from_the_page_and_sees_progress_then_the_last_good(
    client, operator, shut_vm_with_data, destination
):
    vm, _ = shut_vm_with_data
    client.force_login(operator)
    page = client.get(reverse("backups:index")).content.decode()
    assert 'data-testid="no-backup"' in row(page, vm.name) and 'data-testid="backup-now"' in page

    response = client.post(reverse("backups:backup_now"), {"vm": vm.pk, "destination": destination}, **HX)

    assert response.status_code == 200
    run = BackupRun.objects.get(vm=vm)
    BackupRun.objects.filter(pk=run.pk).update(state="running", bytes_done=3 << 20, bytes_total=12 << 20,
                                               bytes_per_second=1 << 20, seconds_left=9)  # fmt: skip
    partial = client.get(reverse("backups:index"), **HX).content.decode()
    assert 'hx-trigger="every 2s"' in partial  # polled while a run is active
    assert '<progress value="25" max="100" data-testid="backup-progress"' in row(partial, vm.name)
    assert "9 s left" in row(partial, vm.name)
    # the run's end as the job writes it (the job itself is exercised in test_backup_restore)
    BackupRun.objects.filter(pk=run.pk).update(state="succeeded", snapshot_id="0123abcd", finished_at=timezone.now(),
                                               bytes_done=12 << 20)  # fmt: skip

    partial = client.get(reverse("backups:index"), **HX).content.decode()
    assert f"#{run.pk} " in row(partial, vm.name) and 'data-testid="no-backup"' not in row(partial, vm.name)
    assert 'data-testid="verify-overdue"' in row(partial, vm.name)  # good, but never verified
    assert 'hx-trigger="every 2s"' not in partial
    vm_page = client.get(reverse("vms:detail", args=[vm.host.name, vm.name])).content.decode()
    assert 'data-testid="vm-backup-panel"' in vm_page and f"#{run.pk} " in vm_page


def test_bad_input_is_refused_audited_and_changes_nothing(client, operator, shut_vm_with_data, destination):
    vm, _ = shut_vm_with_data
    client.force_login(operator)

    response = client.post(reverse("backups:backup_now"), {"vm": "x", "destination": destination}, **HX)
    assert response.status_code == 400 and 'data-testid="backup-form-errors"' in response.content.decode()
    response = client.post(reverse("backups:backup_now"), {"vm": vm.pk, "destination": "/etc/x"}, **HX)
    assert response.status_code == 400

    assert not BackupRun.objects.exists()
    outcomes = list(AuditEvent.objects.filter(action="backups.vm.backup.request").values_list("outcome", flat=True))
    assert outcomes == ["failed", "failed"]


def test_roles_and_scopes(client, auditor, viewer, make_user, shut_vm_with_data, make_domain, host, destination):
    from apps.vms.models import VirtualMachine
    from apps.vms.services import inventory_sync

    vm, _ = shut_vm_with_data
    client.force_login(auditor)  # auditors read the page, change nothing
    page = client.get(reverse("backups:index")).content.decode()
    assert vm.name in page and 'data-testid="backup-now"' not in page
    assert client.post(reverse("backups:backup_now"), {"vm": vm.pk, "destination": destination}).status_code == 403
    client.force_login(viewer)  # viewers do not see backups: no page, no panel on the VM page
    assert client.get(reverse("backups:index")).status_code == 403
    vm_page = client.get(reverse("vms:detail", args=[vm.host.name, vm.name]))
    assert vm_page.status_code == 200 and 'data-testid="vm-backup-panel"' not in vm_page.content.decode()

    other = make_domain(running=False, disk_gib=16 / 1024)
    inventory_sync(host)
    other_vm = VirtualMachine.objects.get(host=host, name=other)
    scoped = make_user("sam-scoped", Role.OPERATOR, scope="vm", vm=vm)
    client.force_login(scoped)  # another VM's operator: that VM does not exist for them
    page = client.get(reverse("backups:index")).content.decode()
    assert other not in page
    response = client.post(reverse("backups:backup_now"), {"vm": other_vm.pk, "destination": destination}, **HX)
    assert response.status_code == 404
    assert not BackupRun.objects.exists()


def test_prune_needs_reauthentication_and_confirmation(client, admin, destination):
    from apps.backups.services import repository_for

    repository = repository_for(destination)
    client.force_login(admin)
    url = reverse("backups:prune", args=[repository.pk])
    response = client.post(url, {"keep_last": "1", "confirm": "yes"})
    assert response.status_code == 302 and reverse("accounts:reauth") in response["Location"]

    reauthenticate(client)
    response = client.post(url, {"keep_last": "1"}, **HX)
    assert response.status_code == 400 and "confirm it" in response.content.decode()
    response = client.post(url, {"keep_last": "0", "confirm": "yes"}, **HX)
    assert response.status_code == 400 and "must keep at least one" in response.content.decode()
    response = client.post(url, {"keep_last": "2", "confirm": "yes"}, **HX)
    assert response.status_code == 200
    assert AuditEvent.objects.filter(action="backups.repository.prune", outcome="requested").count() == 1


def test_restore_in_place_from_the_page_names_where_the_disk_before_it_is_kept(
    client, operator, shut_vm_with_data, destination
):
    """The "snapshot first" of a restore in place is the disk file itself, renamed aside (no
    copy, no space): the page says where, and to remove it when satisfied."""
    from apps.backups import services
    from apps.core.models import Job

    vm, data_path = shut_vm_with_data
    run = BackupRun.objects.create(vm=vm, vm_name=vm.name, vm_uuid=str(vm.uuid), host=vm.host, state="succeeded",
                                   repository=services.repository_for(destination), snapshot_id="0123abcd",
                                   disks=[{"target": "vdb", "path": data_path}])  # fmt: skip
    client.force_login(operator)
    reauthenticate(client)
    page = client.get(reverse("backups:index")).content.decode()
    assert "A copy of each current disk is kept beside it as &lt;disk&gt;.pre-restore-&lt;job&gt;" in page

    response = client.post(reverse("backups:restore_in_place", args=[run.pk]), {"confirm": "yes"}, **HX)

    assert response.status_code == 200
    job = Job.objects.get(kind="backups.vm.restore_in_place")
    assert f"kept at {data_path}.pre-restore-{job.pk}: remove it when satisfied" in response.content.decode()
