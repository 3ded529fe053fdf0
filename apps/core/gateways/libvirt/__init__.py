"""The libvirt gateway: the only code that talks to libvirt (tests/unit/test_architecture.py
checks that `import libvirt` appears nowhere else in apps/).

Callers import the package and use what it exports::

    from apps.core.gateways import libvirt as gw
    gw.domain_start(uri, name)

libvirt's errors and VIR_* constants never leave it: callers get plain frozen dataclasses
and the project's own errors (NotFound, Conflict, GatewayError).

Modules, one per libvirt object kind (as WebVirtCloud's vrtManager/):

- ``connection``: one connection per process and URI, opened lazily and reopened when
  libvirtd restarts; ``call(uri, what, fn)`` runs every request and translates errors;
  ``read_present`` is the one loop that skips objects removed while being listed.
- ``host``: the host as a whole (version, QEMU's uid/gid, the bulk storage read).
- ``domains``: VMs: reads, lifecycle, and their disks.
- ``snapshots``: domain snapshots.
- ``storage``: pools and volumes.
- ``networks``: virtual networks.
- ``secrets``: libvirt secrets (LUKS passphrases).
- ``events``: domain lifecycle events (``DomainWatch``, own connection and event loop).
- ``xml``: building and parsing libvirt XML (no libvirt calls).
- ``guest``: a new guest's domain XML from a GuestSpec (firmware, vTPM, SEV, limits).

Naming: the object kind first, then the verb, then a qualifier:
``<kind>_<verb>[_<qualifier>]`` with kind one of host, domain, domain_disk(s), snapshot,
pool, volume, network, secret. E.g. ``domain_list``, ``domain_get``, ``domain_start``,
``domain_disks_live`` (the disks a domain uses, with sizes) vs ``domain_disks_defined``
(the disks of its persistent definition), ``domain_disk_attach``, ``snapshot_create``,
``pool_get``, ``volume_create``, ``volume_delete_if_exists``, ``network_list``,
``secret_ensure``. Verbs: ``list`` (all, as dataclasses), ``get`` (one, NotFound when
missing), ``find`` (one, None when missing), ``ensure`` (create unless it exists; re-runnable),
``create``/``define``/``delete``/``remove``/``set_*``. XML builders are ``<kind>[_<variant>]_xml``.
Every call takes the host's URI first.
"""

from .domains import (
    BlockStats,
    DiskInfo,
    DomainDisks,
    DomainFacts,
    DomainInfo,
    DomainRuntimeStats,
    InterfaceInfo,
    InterfaceState,
    NetStats,
    domain_define,
    domain_disk_attach,
    domain_disk_attach_xml,
    domain_disk_commit_active,
    domain_disk_detach,
    domain_disk_detach_target,
    domain_disk_next_target,
    domain_disk_resize,
    domain_disk_set_format,
    domain_disk_set_source,
    domain_disks_defined,
    domain_disks_live,
    domain_facts_live,
    domain_force_off,
    domain_get,
    domain_interface_set_link,
    domain_interface_set_network,
    domain_interfaces_live,
    domain_list,
    domain_resume,
    domain_runtime_stats,
    domain_set_limits,
    domain_set_resources,
    domain_shutdown,
    domain_start,
    domain_state,
    domain_suspend,
    domain_undefine,
    domain_xml_defined,
    domain_xml_defined_all,
    domain_xml_live,
)
from .events import DomainEvent, DomainWatch, domain_watch
from .guest import GuestDisk, GuestSpec, domain_guest_xml
from .host import (
    HostCapabilities,
    StorageSnapshot,
    domain_capabilities_parse,
    host_domain_capabilities,
    host_qemu_identity,
    host_security_models,
    host_storage_snapshot,
    host_version,
)
from .networks import (
    NetworkInfo,
    network_ensure_isolated,
    network_ensure_zone,
    network_exists,
    network_list,
    network_remove,
)
from .secrets import secret_ensure, secret_remove, secret_set_value
from .snapshots import SnapshotInfo, snapshot_create, snapshot_create_disk_only, snapshot_delete, snapshot_list
from .storage import (
    PoolInfo,
    PoolTarget,
    VolumeInfo,
    pool_ensure_dir,
    pool_get,
    pool_list,
    pool_names,
    pool_path,
    pool_refresh,
    pool_remove,
    pool_targets,
    volume_create,
    volume_create_luks,
    volume_delete,
    volume_delete_if_exists,
    volume_ensure_raw,
    volume_find,
    volume_find_by_path,
    volume_resize,
)
from .xml import (
    disk_encrypted_xml,
    domain_devices_parse,
    domain_disks_parse,
    domain_graphics_parse,
    domain_restored_xml,
    domain_security_parse,
    domain_xml,
    host_secmodels_parse,
    network_zone_xml,
    snapshot_disk_only_xml,
)

__all__ = [
    "BlockStats",
    "DiskInfo",
    "DomainDisks",
    "DomainEvent",
    "DomainFacts",
    "DomainInfo",
    "DomainRuntimeStats",
    "DomainWatch",
    "GuestDisk",
    "GuestSpec",
    "HostCapabilities",
    "InterfaceInfo",
    "InterfaceState",
    "NetStats",
    "NetworkInfo",
    "PoolInfo",
    "PoolTarget",
    "SnapshotInfo",
    "StorageSnapshot",
    "VolumeInfo",
    "disk_encrypted_xml",
    "domain_define",
    "domain_devices_parse",
    "domain_disk_attach",
    "domain_disk_attach_xml",
    "domain_disk_commit_active",
    "domain_disk_detach",
    "domain_disk_detach_target",
    "domain_disk_next_target",
    "domain_disk_resize",
    "domain_disk_set_format",
    "domain_disk_set_source",
    "domain_disks_defined",
    "domain_disks_live",
    "domain_disks_parse",
    "domain_facts_live",
    "domain_force_off",
    "domain_get",
    "domain_graphics_parse",
    "domain_interface_set_link",
    "domain_interface_set_network",
    "domain_interfaces_live",
    "domain_list",
    "domain_restored_xml",
    "domain_guest_xml",
    "domain_capabilities_parse",
    "domain_resume",
    "domain_runtime_stats",
    "domain_security_parse",
    "domain_set_limits",
    "domain_set_resources",
    "domain_shutdown",
    "domain_start",
    "domain_state",
    "domain_suspend",
    "domain_undefine",
    "domain_watch",
    "domain_xml",
    "domain_xml_defined",
    "domain_xml_defined_all",
    "domain_xml_live",
    "host_domain_capabilities",
    "host_qemu_identity",
    "host_secmodels_parse",
    "host_security_models",
    "host_storage_snapshot",
    "host_version",
    "network_ensure_isolated",
    "network_ensure_zone",
    "network_exists",
    "network_list",
    "network_remove",
    "network_zone_xml",
    "pool_ensure_dir",
    "pool_get",
    "pool_list",
    "pool_names",
    "pool_path",
    "pool_refresh",
    "pool_remove",
    "pool_targets",
    "secret_ensure",
    "secret_remove",
    "secret_set_value",
    "snapshot_create",
    "snapshot_create_disk_only",
    "snapshot_delete",
    "snapshot_disk_only_xml",
    "snapshot_list",
    "volume_create",
    "volume_create_luks",
    "volume_delete",
    "volume_delete_if_exists",
    "volume_ensure_raw",
    "volume_find",
    "volume_find_by_path",
    "volume_resize",
]
