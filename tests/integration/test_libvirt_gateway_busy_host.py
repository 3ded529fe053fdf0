"""The gateway on a busy host: pools that disappear while being read, and a VM's detail
that does not read every volume of the host (both seen from the browser tests while
other sessions ran benchmarks with thousands of volumes on the same libvirtd)."""

import libvirt
import pytest

from apps.core.gateways import libvirt as gw
from apps.core.gateways.libvirt import storage

pytestmark = pytest.mark.libvirt


def _error(code: int, message: str = "simulated") -> libvirt.libvirtError:
    exc = libvirt.libvirtError(message)
    exc.get_error_code = lambda: code
    exc.get_error_message = lambda: message
    return exc


class _Vol:
    def __init__(self, name, exc=None):
        self._name, self._exc = name, exc

    def name(self):
        return self._name

    def path(self):
        return f"/p/{self._name}"

    def key(self):  # a dir pool's volume key is its path
        return f"/p/{self._name}"

    def info(self):
        if self._exc:
            raise self._exc
        return (0, 1 << 30, 1 << 20)


class _Pool:
    def __init__(self, name, vols=(), exc=None):
        self._name, self._vols, self._exc = name, list(vols), exc

    def name(self):
        return self._name

    def XMLDesc(self, flags):  # noqa: N802 (libvirt's name)
        return '<pool type="dir"/>'

    def listAllVolumes(self, flags):  # noqa: N802 (libvirt's name)
        if self._exc:
            raise self._exc
        return self._vols


class _Conn:
    def __init__(self, pools):
        self._pools = pools

    def listAllStoragePools(self, flags):  # noqa: N802
        return self._pools


def test_pools_and_volumes_that_vanish_while_listed_are_skipped():
    conn = _Conn(
        [
            _Pool("stopped", exc=_error(libvirt.VIR_ERR_OPERATION_INVALID, "storage pool 'stopped' is not active")),
            _Pool("removed", exc=_error(libvirt.VIR_ERR_NO_STORAGE_POOL)),
            _Pool("ok", [_Vol("a"), _Vol("deleted", exc=_error(libvirt.VIR_ERR_NO_STORAGE_VOL)), _Vol("b")]),
        ]
    )
    assert [(v.pool, v.name) for v in storage._all_volumes(conn)] == [("ok", "a"), ("ok", "b")]


def test_other_pool_errors_still_surface():
    conn = _Conn([_Pool("broken", exc=_error(libvirt.VIR_ERR_INTERNAL_ERROR))])
    with pytest.raises(libvirt.libvirtError):
        storage._all_volumes(conn)


def test_vm_detail_reads_only_its_own_volumes(libvirt_uri, make_domain, monkeypatch):
    name = make_domain(running=True)

    def every_volume(conn):
        raise AssertionError("domain_get read every volume of the host")

    monkeypatch.setattr(storage, "_all_volumes", every_volume)
    info = gw.domain_get(libvirt_uri, name)
    (disk,) = info.disks
    assert disk.path.endswith(f"{name}.qcow2")
    assert disk.capacity == 1 << 30 and 0 < disk.allocation < 1 << 30
