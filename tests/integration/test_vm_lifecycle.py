"""VM lifecycle and snapshots as jobs, run by a real Celery worker against the real
libvirtd, with the exact audit events each one writes."""

import pytest
from django.core.exceptions import PermissionDenied
from django.db import transaction

from apps.audit.models import AuditEvent
from apps.core.errors import Conflict, InvalidInput
from apps.core.gateways import libvirt as gw
from apps.core.models import Job
from apps.vms import services
from tests.conftest import wait_for_job

pytestmark = [pytest.mark.libvirt, pytest.mark.worker]


def events_for(job):
    return list(AuditEvent.objects.filter(job_id=job.pk).order_by("id").values_list("action", "outcome"))


def test_operator_suspends_and_resumes_a_running_vm(worker, operator, vm):
    job = services.vm_lifecycle(actor=operator, vm=vm, action="suspend")
    job = wait_for_job(job.pk)
    assert job.state == Job.State.SUCCEEDED, job.error
    assert job.progress == 100
    assert gw.domain_state(vm.host.uri, vm.name) == "paused"
    assert events_for(job) == [("vms.vm.suspend", "requested"), ("vms.vm.suspend", "success")]
    assert AuditEvent.objects.get(job_id=job.pk, outcome="success").actor_name == operator.username

    job = wait_for_job(services.vm_lifecycle(actor=operator, vm=vm, action="resume").pk)
    assert job.state == Job.State.SUCCEEDED, job.error
    assert gw.domain_state(vm.host.uri, vm.name) == "running"


def test_force_off_needs_confirmation_then_stops_the_vm(worker, operator, vm):
    with pytest.raises(InvalidInput, match="needs confirmation"):
        services.vm_lifecycle(actor=operator, vm=vm, action="force_off")
    assert not Job.objects.exists()
    assert AuditEvent.objects.filter(action="vms.vm.force_off", outcome="failed").count() == 1
    job = wait_for_job(services.vm_lifecycle(actor=operator, vm=vm, action="force_off", confirmed=True).pk)
    assert job.state == Job.State.SUCCEEDED, job.error
    assert gw.domain_state(vm.host.uri, vm.name) == "shut off"
    job = wait_for_job(services.vm_lifecycle(actor=operator, vm=vm, action="start").pk)
    assert gw.domain_state(vm.host.uri, vm.name) == "running"


def test_snapshot_create_list_delete(worker, operator, vm):
    job = wait_for_job(services.snapshot_create(actor=operator, vm=vm, name="before-upgrade", description="x").pk)
    assert job.state == Job.State.SUCCEEDED, job.error
    assert [s.name for s in gw.snapshot_list(vm.host.uri, vm.name)] == ["before-upgrade"]
    with pytest.raises(Conflict, match="already has a snapshot"):
        services.snapshot_create(actor=operator, vm=vm, name="before-upgrade")
    job = wait_for_job(services.snapshot_delete(actor=operator, vm=vm, name="before-upgrade", confirmed=True).pk)
    assert job.state == Job.State.SUCCEEDED, job.error
    assert gw.snapshot_list(vm.host.uri, vm.name) == []
    assert events_for(job) == [("vms.snapshot.delete", "requested"), ("vms.snapshot.delete", "success")]


def test_viewer_is_refused_and_nothing_runs(worker, viewer, vm):
    with pytest.raises(PermissionDenied):
        services.vm_lifecycle(actor=viewer, vm=vm, action="suspend")
    assert not Job.objects.exists()
    denied = AuditEvent.objects.get(action="vms.vm.suspend")
    assert (denied.outcome, denied.actor_name, denied.target_name) == ("denied", viewer.username, vm.name)
    assert gw.domain_state(vm.host.uri, vm.name) == "running"


def test_wrong_state_and_unknown_action_are_refused_with_a_reason(worker, operator, vm):
    with pytest.raises(Conflict, match="it is running"):
        services.vm_lifecycle(actor=operator, vm=vm, action="resume")
    with pytest.raises(InvalidInput, match="Unknown action"):
        services.vm_lifecycle(actor=operator, vm=vm, action="reboot; rm -rf /")
    with pytest.raises(InvalidInput, match="Invalid snapshot name"):
        services.snapshot_create(actor=operator, vm=vm, name="<x/>'; reboot")
    assert not Job.objects.exists()
    assert list(AuditEvent.objects.order_by("id").values_list("outcome", flat=True)) == ["failed"] * 3
    assert gw.domain_state(vm.host.uri, vm.name) == "running"


def test_role_revoked_before_the_job_runs_is_refused_by_the_worker(worker, operator, vm):
    """The worker checks the permission again: a job queued by someone who lost the role fails as denied."""
    with transaction.atomic():  # the job is sent to the worker when this block commits
        job = services.vm_lifecycle(actor=operator, vm=vm, action="suspend")
        operator.role_assignments.all().delete()
    job = wait_for_job(job.pk)
    assert job.state == Job.State.FAILED
    assert "permission" in job.error
    assert events_for(job) == [("vms.vm.suspend", "requested"), ("vms.vm.suspend", "denied")]
    assert gw.domain_state(vm.host.uri, vm.name) == "running"
