"""Volumes of a VM as jobs: create (thin qcow2), resize live and offline, delete with
confirmation; quota and pool limits refuse growth and say by how much."""

from decimal import Decimal

import pytest

from apps.core import jobs
from apps.core.errors import Conflict, InvalidInput
from apps.core.gateways import libvirt as gw
from apps.core.models import Job
from apps.storage import services
from apps.storage.models import GIB
from tests.conftest import wait_for_job

from .conftest import events

pytestmark = pytest.mark.libvirt


def _run(job) -> Job:
    """Run the job here (the real worker is exercised in the last test)."""
    jobs.job_run(job.pk, worker="test")
    job.refresh_from_db()
    return job


def _disks(vm):
    return {d.target: d for d in gw.domain_disks_live(vm.host.uri, vm.name).disks}


def test_creating_a_volume_attaches_a_thin_qcow2(operator, off_vm, test_pool):
    job = _run(services.volume_create(actor=operator, vm=off_vm, size_bytes=2 * GIB, name=f"{off_vm.name}-data"))
    assert job.state == "succeeded", job.error
    vdb = _disks(off_vm)["vdb"]
    assert vdb.capacity == 2 * GIB
    assert vdb.allocation < 1 << 20  # thin: metadata only
    assert job.result["volume"] == f"{off_vm.name}-data.qcow2"
    assert [e.outcome for e in events("storage.volume.create")] == ["requested", "success"]
    # re-delivered job (worker died after the work): nothing breaks, nothing doubles
    Job.objects.filter(pk=job.pk).update(state="running")
    assert _run(job).state == "succeeded"
    assert len(_disks(off_vm)) == 2


def test_growth_over_the_quota_is_refused_with_the_excess(operator, off_vm):
    services.quota_set(actor=operator, vm=off_vm, limit_bytes=3 * GIB)
    with pytest.raises(InvalidInput, match=r"4 GiB of disks, 1 GiB over its quota of 3 GiB"):
        services.volume_create(actor=operator, vm=off_vm, size_bytes=3 * GIB)
    with pytest.raises(InvalidInput, match=r"1.5 GiB over its quota"):
        services.volume_resize(actor=operator, vm=off_vm, target="vda", size_bytes=int(4.5 * GIB))
    assert not Job.objects.exists()
    assert [e.outcome for e in events("storage.volume.create")] == ["failed"]
    assert "1 GiB over its quota" in events("storage.volume.create")[0].error


def test_pool_overcommit_and_reserve_are_enforced(admin, operator, off_vm, host, test_pool):
    services.quota_set(actor=operator, vm=off_vm, limit_bytes=1000000 * GIB)
    pool = gw.pool_get(host.uri, test_pool)
    too_much = pool.capacity * 2 // GIB
    services.pool_limit_set(actor=admin, host=host, pool=test_pool, max_overcommit=Decimal("1.5"), reserve_percent=None)
    with pytest.raises(InvalidInput, match=r"over its maximum overcommit of 1.50x"):
        services.volume_create(actor=operator, vm=off_vm, size_bytes=too_much * GIB)
    services.pool_limit_set(actor=admin, host=host, pool=test_pool, max_overcommit=None, reserve_percent=99)
    with pytest.raises(InvalidInput, match=r"inside its 99% reserve"):
        services.volume_create(actor=operator, vm=off_vm, size_bytes=1 * GIB)
    assert not Job.objects.exists()


def test_resize_offline_then_live_and_never_shrink(operator, off_vm):
    uri = off_vm.host.uri
    job = _run(services.volume_resize(actor=operator, vm=off_vm, target="vda", size_bytes=int(1.5 * GIB)))
    assert (job.state, job.result["live"]) == ("succeeded", False), job.error
    assert _disks(off_vm)["vda"].capacity == int(1.5 * GIB)
    gw.domain_start(uri, off_vm.name)
    job = _run(services.volume_resize(actor=operator, vm=off_vm, target="vda", size_bytes=2 * GIB))
    assert (job.state, job.result["live"]) == ("succeeded", True), job.error
    assert _disks(off_vm)["vda"].capacity == 2 * GIB
    with pytest.raises(InvalidInput, match="shrinking it to 1 GiB would lose data"):
        services.volume_resize(actor=operator, vm=off_vm, target="vda", size_bytes=1 * GIB)
    with pytest.raises(Exception, match="no disk 'vdz'"):
        services.volume_resize(actor=operator, vm=off_vm, target="vdz", size_bytes=3 * GIB)


def test_delete_needs_confirmation_and_a_stopped_vm(operator, off_vm, test_pool):
    _run(services.volume_create(actor=operator, vm=off_vm, size_bytes=1 * GIB))
    path = _disks(off_vm)["vdb"].path
    with pytest.raises(InvalidInput, match="confirm"):
        services.volume_delete(actor=operator, vm=off_vm, target="vdb")
    gw.domain_start(off_vm.host.uri, off_vm.name)
    with pytest.raises(Conflict, match="shut it down"):
        services.volume_delete(actor=operator, vm=off_vm, target="vdb", confirmed=True)
    gw.domain_force_off(off_vm.host.uri, off_vm.name)
    job = _run(services.volume_delete(actor=operator, vm=off_vm, target="vdb", confirmed=True))
    assert job.state == "succeeded", job.error
    assert "vdb" not in _disks(off_vm)
    assert gw.volume_find_by_path(off_vm.host.uri, path) is None
    assert [e.outcome for e in events("storage.volume.delete")] == ["failed", "failed", "requested", "success"]


def test_viewer_cannot_create_volumes(viewer, off_vm):
    with pytest.raises(Exception, match="permission"):
        services.volume_create(actor=viewer, vm=off_vm, size_bytes=1 * GIB)
    assert events("storage.volume.create", outcome="denied")


@pytest.mark.worker
def test_a_volume_job_runs_on_the_real_worker(worker, operator, host, make_domain):
    from apps.vms.models import VirtualMachine
    from apps.vms.services import inventory_sync

    name = make_domain(running=True)
    inventory_sync(host)
    vm = VirtualMachine.objects.select_related("host").get(host=host, name=name)
    job = wait_for_job(services.volume_create(actor=operator, vm=vm, size_bytes=1 * GIB).pk)
    assert job.state == "succeeded", job.error
    assert _disks(vm)["vdb"].capacity == GIB
    job = wait_for_job(services.volume_resize(actor=operator, vm=vm, target="vdb", size_bytes=2 * GIB).pk)
    assert (job.state, job.result.get("live")) == ("succeeded", True), job.error
