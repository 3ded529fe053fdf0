"""The storage state the pages read, written by the state collector's bulk read against the
real libvirtd: pools, volumes with their VM, VM disk totals; changes made outside the portal
appear and disappear; a read that finds nothing new writes nothing."""

from __future__ import annotations

import pytest
from django.db import connection

from apps.core.gateways import libvirt as gw
from apps.storage.models import PoolState, VmDiskState, VolumeState
from apps.vms.collector import host_collect
from tests.conftest import unique

pytestmark = pytest.mark.libvirt
GIB = 1 << 30


def test_pools_volumes_and_disk_totals_follow_the_host(host, off_vm, test_pool, libvirt_uri):
    pool = PoolState.objects.get(host=host, name=test_pool)
    disk = VolumeState.objects.get(host=host, pool=test_pool, name=f"{off_vm.name}.qcow2")
    assert disk.vm == off_vm and disk.capacity == GIB
    assert VmDiskState.objects.get(vm=off_vm).provisioned == GIB
    assert pool.volume_count == VolumeState.objects.filter(host=host, pool=test_pool).count()

    name = f"{unique('loose')}.qcow2"
    gw.volume_create(libvirt_uri, test_pool, name, GIB // 4)  # outside the portal
    try:
        host_collect(host)
        loose = VolumeState.objects.get(host=host, pool=test_pool, name=name)
        assert loose.vm is None and loose.capacity == GIB // 4
        assert PoolState.objects.get(pk=pool.pk).volume_count == pool.volume_count + 1
    finally:
        gw.volume_delete(libvirt_uri, test_pool, name)
    host_collect(host)
    assert not VolumeState.objects.filter(host=host, pool=test_pool, name=name).exists()


def test_a_read_that_finds_nothing_new_writes_nothing(host, off_vm):
    writes = []

    def spy(execute, sql, *args):
        if sql.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")) and "storage_" in sql:
            writes.append(sql)
        return execute(sql, *args)

    host_collect(host)
    with connection.execute_wrapper(spy):
        host_collect(host)
    assert writes == []
