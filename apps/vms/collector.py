"""The per-host state collector: libvirt is read here, in a long-running worker-side process
(`python manage.py collector`), and the pages read the database.

Two feeds keep the VM rows current, the way Proxmox's status daemon and oVirt's VDSM polling
feed their UIs:
- libvirt's domain lifecycle events (a watch per host): a `virsh start`, `suspend`,
  `define` or `undefine` made outside the portal reaches the row within a second or two;
- a periodic bulk read of each host (`getAllDomainStats` plus one volume listing per pool),
  which also catches anything an event could not tell (disk growth) and repairs what was
  missed while the watch was down.
A host that cannot be read is marked unreachable (since when, and why); its rows keep their
last known state and the pages say they are stale. Watches are re-opened after libvirtd
restarts. VMs that appear or vanish outside the portal are recorded in the audit log as
found or gone, by the system."""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.db import close_old_connections, transaction
from django.utils import timezone

from apps.audit.services import record
from apps.core.errors import GatewayError, NotFound, PortalError
from apps.core.gateways import libvirt as gw
from apps.core.models import Host

from .models import VirtualMachine, VmInterface
from .services import _SYNCED, _live_fields, inventory_sync

log = logging.getLogger(__name__)

COALESCE = 0.05  # seconds to gather a burst of events before applying them

# hook(host): run after every bulk read of a host, by the apps that keep state of their own
# from the same read cycle (storage registers its pools, volumes and VM disk totals)
AFTER_COLLECT: list = []
# hook(host, vm, kind): run after a lifecycle event brought one present VM's row and
# interfaces up to date (kind: the event, e.g. "started", "defined", "resumed"), by the
# apps that must react at once (network loads a started VM's firewall rules)
AFTER_DOMAIN_REFRESH: list = []


def _audit_found_and_gone(host: Host, found, gone) -> None:
    for vm in found:
        record(actor=None, action="vms.vm.found", target=vm, outcome="success", params={"host": host.name})
    for vm in gone:
        record(actor=None, action="vms.vm.gone", target=vm, outcome="success", params={"host": host.name})


def host_mark_unreachable(host: Host, error: str) -> None:
    now = timezone.now()
    changed = Host.objects.filter(pk=host.pk, unreachable_since__isnull=True).update(
        unreachable_since=now, collect_error=error[:500]
    )
    if changed:
        record(actor=None, action="vms.host.unreachable", target=host, outcome="failed", error=error[:500])
        log.warning("host %s unreachable: %s", host.name, error)
    else:
        Host.objects.filter(pk=host.pk).update(collect_error=error[:500])


_INTERFACE_FIELDS = ["position", "source_type", "network", "bridge", "target_dev", "link_state", "model"]


def interfaces_store(host: Host, states: dict[str, tuple], vm: VirtualMachine | None = None) -> None:
    """Bring the VmInterface rows to `states` (domain UUID -> gw.InterfaceState tuple): every
    VM of the host after a bulk read, or only `vm` after its event. A VM missing from
    `states` (gone) loses its rows. Writes only what changed."""
    vms = VirtualMachine.objects.filter(host=host) if vm is None else VirtualMachine.objects.filter(pk=vm.pk)
    vm_ids = {str(u): pk for u, pk in vms.filter(present=True).values_list("uuid", "pk")}
    rows = VmInterface.objects.filter(vm__host=host) if vm is None else VmInterface.objects.filter(vm=vm)
    existing = {(row.vm_id, row.mac): row for row in rows}
    wanted: dict[tuple[int, str], dict] = {}
    for uuid, ifaces in states.items():
        vm_id = vm_ids.get(uuid)
        if vm_id is None:  # defined after the VM rows were read: the next read has it
            continue
        for position, i in enumerate(ifaces):
            key = (vm_id, i.mac.lower())
            if i.mac and key not in wanted:
                wanted[key] = {"position": position, "source_type": i.source_type, "network": i.network,
                               "bridge": i.bridge, "target_dev": i.target_dev, "link_state": i.link_state,
                               "model": i.model}  # fmt: skip
    now = timezone.now()
    create, update = [], []
    for (vm_id, mac), values in wanted.items():
        row = existing.get((vm_id, mac))
        if row is None:
            create.append(VmInterface(vm_id=vm_id, mac=mac, collected_at=now, **values))
        elif any(getattr(row, f) != v for f, v in values.items()):
            for f, v in values.items():
                setattr(row, f, v)
            row.collected_at = now
            update.append(row)
    gone = [row.pk for key, row in existing.items() if key not in wanted]
    if not (gone or update or create):
        return
    with transaction.atomic():
        if gone:
            VmInterface.objects.filter(pk__in=gone).delete()
        if update:
            VmInterface.objects.bulk_update(update, [*_INTERFACE_FIELDS, "collected_at"], batch_size=1000)
        if create:
            VmInterface.objects.bulk_create(create, batch_size=1000)


def security_store(host: Host, facts: dict[str, dict], vm: VirtualMachine | None = None) -> None:
    """Write the security facts (domain UUID -> xml.domain_security_parse dict) onto the VM
    rows of the host (or only `vm`): the rows whose facts changed, in one bulk update."""
    vms = VirtualMachine.objects.filter(host=host, present=True)
    if vm is not None:
        vms = vms.filter(pk=vm.pk)
    now = timezone.now()
    changed = []
    for row in vms.only("pk", "uuid", "security", "security_read_at"):
        wanted = facts.get(str(row.uuid))
        if wanted is None or (row.security == wanted and row.security_read_at is not None):
            continue
        row.security, row.security_read_at = wanted, now
        changed.append(row)
    if changed:
        VirtualMachine.objects.bulk_update(changed, ["security", "security_read_at"], batch_size=1000)


def definitions_store(host: Host, facts: dict[str, gw.DomainFacts], vm: VirtualMachine | None = None) -> None:
    """Interfaces and security facts from one read of the live definitions."""
    interfaces_store(host, {u: f.interfaces for u, f in facts.items()}, vm=vm)
    security_store(host, {u: f.security for u, f in facts.items()}, vm=vm)


def host_security_store(host: Host) -> None:
    """The host's security drivers (libvirt capabilities' <secmodel>) onto its row."""
    models = gw.host_security_models(host.uri)
    if models != host.security_models:
        Host.objects.filter(pk=host.pk).update(security_models=models)
        host.security_models = models


def interfaces_refresh(host: Host, vm: VirtualMachine | None = None) -> None:
    """Read the interfaces of one VM (or of every VM of the host) now and store them: for a
    service about to act on them (a quarantine, a zone move) that cannot wait for the next read."""
    interfaces_store(host, gw.domain_interfaces_live(host.uri, vm.name if vm is not None else None), vm=vm)


def host_collect(host: Host) -> bool:
    """One bulk read of the host into the database. False (and the host marked unreachable)
    when it cannot be read."""
    try:
        result = inventory_sync(host)
        _audit_found_and_gone(host, result.found, result.gone)  # at once: the rows are visible now
        definitions_store(host, gw.domain_facts_live(host.uri))
        host_security_store(host)
        for hook in AFTER_COLLECT:
            hook(host)
    except PortalError as exc:
        host_mark_unreachable(host, exc.message)
        return False
    was_unreachable = Host.objects.filter(pk=host.pk, unreachable_since__isnull=False).exists()
    Host.objects.filter(pk=host.pk).update(collected_at=timezone.now(), unreachable_since=None, collect_error="")
    if was_unreachable:
        record(actor=None, action="vms.host.reachable", target=host, outcome="success")
    return True


def domain_refresh(host: Host, name: str, uuid: str, kind: str) -> VirtualMachine | None:
    """Bring one VM's row up to date after a lifecycle event (one domain read, not a host scan)."""
    vm = VirtualMachine.objects.filter(host=host, uuid=uuid).first()
    try:
        info = None if kind == "undefined" else gw.domain_get(host.uri, name)
    except NotFound:
        info = None
    if info is None or not info.persistent and info.state == "shut off":
        if vm is not None and vm.present:
            VirtualMachine.objects.filter(pk=vm.pk).update(present=False, last_state="")
            VmInterface.objects.filter(vm=vm).delete()
            vm.present = False
            _audit_found_and_gone(host, [], [vm])
        return vm
    live = _live_fields(info)
    with transaction.atomic():
        found = vm is None or not vm.present
        if vm is None:
            # a name freed by an undefined domain may still sit on a row that is not present
            vm = VirtualMachine(host=host, uuid=info.uuid)
        (vm.name, vm.last_state, vm.vcpus, vm.memory_kib, vm.present, vm.disk_capacity, vm.disk_allocation) = live
        vm.last_seen = timezone.now()
        if vm.pk is None:
            vm.save()
        else:
            vm.save(update_fields=_SYNCED)
        if found:  # in the row's transaction: whoever sees the row sees why it is there
            _audit_found_and_gone(host, [vm], [])
    try:
        definitions_store(host, gw.domain_facts_live(host.uri, name), vm=vm)
    except NotFound:  # undefined meanwhile: its own event follows
        return vm
    for hook in AFTER_DOMAIN_REFRESH:
        try:
            hook(host, vm, "found" if found else kind)
        except PortalError as exc:  # one app's reaction does not stop the others
            log.warning("after refreshing %s on %s: %s", vm.name, host.name, exc.message)
    return vm


@dataclass
class _HostFeed:
    host: Host
    watch: gw.DomainWatch | None = None
    next_read: float = 0.0
    pending: dict[str, tuple[str, str]] = field(default_factory=dict)  # uuid -> (name, kind)


class Collector:
    """Runs the feeds of every host until `stop` is set. One thread writes the database;
    libvirt's event thread only puts events on a queue."""

    def __init__(self, *, interval: float | None = None, tick: float = 0.5, host_names: list[str] | None = None):
        self.interval = interval if interval is not None else settings.COLLECTOR_INTERVAL
        self.tick = tick
        self.host_names = host_names
        self.stop = threading.Event()
        self._events: queue.Queue[tuple[int, gw.DomainEvent]] = queue.Queue()
        self._feeds: dict[int, _HostFeed] = {}

    def _hosts(self) -> list[Host]:
        qs = Host.objects.all()
        if self.host_names is not None:
            qs = qs.filter(name__in=self.host_names)
        return list(qs)

    def _ensure_watch(self, feed: _HostFeed) -> None:
        if feed.watch is not None and feed.watch.alive:
            return
        if feed.watch is not None:
            feed.watch.close()
            feed.watch = None
        host_id = feed.host.pk
        try:
            feed.watch = gw.domain_watch(feed.host.uri, lambda ev: self._events.put((host_id, ev)))
        except GatewayError as exc:
            host_mark_unreachable(feed.host, exc.message)
            return
        feed.next_read = 0  # (re)connected: read everything now, to repair what was missed

    def _drain_events(self) -> None:
        """Wait up to a tick for events; once one arrives, gather a burst for COALESCE seconds
        (one read per domain however many events it sent), then apply them."""
        timeout, until = self.tick, None
        while until is None or time.monotonic() < until:
            try:
                host_id, ev = self._events.get(timeout=timeout)
            except queue.Empty:
                break
            feed = self._feeds.get(host_id)
            if feed is not None:
                feed.pending[ev.uuid] = (ev.name, ev.kind)
            timeout = COALESCE
            until = until or time.monotonic() + self.tick  # a steady stream is applied at least every tick
        for feed in self._feeds.values():
            pending, feed.pending = feed.pending, {}
            for uuid, (name, kind) in pending.items():
                try:
                    domain_refresh(feed.host, name, uuid, kind)
                except PortalError as exc:
                    log.warning("refreshing %s on %s: %s", name, feed.host.name, exc.message)
                    feed.next_read = 0

    def run_once(self) -> None:
        close_old_connections()  # a long-running process outlives database connections
        hosts = self._hosts()
        for gone in set(self._feeds) - {h.pk for h in hosts}:
            feed = self._feeds.pop(gone)
            if feed.watch is not None:
                feed.watch.close()
        for host in hosts:
            feed = self._feeds.setdefault(host.pk, _HostFeed(host))
            feed.host = host
            self._ensure_watch(feed)
            if time.monotonic() >= feed.next_read:
                host_collect(host)
                feed.next_read = time.monotonic() + self.interval
        self._drain_events()

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                try:
                    self.run_once()
                except Exception:  # the collector must outlive any one bad read
                    log.exception("collector round failed")
                    self.stop.wait(self.tick)
        finally:
            for feed in self._feeds.values():
                if feed.watch is not None:
                    feed.watch.close()
