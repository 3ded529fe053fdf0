"""The Prometheus export: custom collectors that read the database (which the state collector
keeps current) and, for the guests' counters, libvirt's bulk statistics call (one call per
host per scrape, cached for METRICS_LIBVIRT_CACHE_SECONDS so several scrapers or a retry do
not multiply it).

Reads only: nothing here writes to the database. Names and labels follow Prometheus
conventions (`portal_` prefix, base units, `_total` counters, `_timestamp_seconds`);
`promtool check metrics` runs over a real scrape in the tests.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache
from django.db.models import Count, DurationField, ExpressionWrapper, F, Min, Sum
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric, SummaryMetricFamily
from prometheus_client.samples import Sample

from apps.core.errors import PortalError
from apps.core.gateways import libvirt as gw

AUDIT_VERIFY_ACTION = "audit.chain.verify"
WORKER_HEARTBEAT_KEY = "monitoring:worker-heartbeat"
LAST_SCRAPE_KEY = "monitoring:last-scrape"
VM_STATES = ("running", "paused", "shutting down", "shut off", "crashed", "pmsuspended", "unknown")


def _ts(dt) -> float:
    return dt.timestamp()


class Family(Metric):
    """A gauge or counter family of prometheus-client that keeps its rows as (label values,
    value) and builds `samples` only when asked (generate_latest, the tests): render()
    writes the rows directly, each label set escaped once per scrape."""

    def __init__(self, name: str, documentation: str, kind: str, labels: list[str] | tuple[str, ...] = ()):
        super().__init__(name, documentation, kind)
        self.labelnames = tuple(labels)
        self.rows: list[tuple[tuple[str, ...], float]] = []

    def add_metric(self, labels, value) -> None:
        if labels.__class__ is not tuple:  # a scrape adds tens of thousands of rows: tuples pass as they are
            labels = tuple(labels)
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name} takes the labels {self.labelnames}, got {labels}")
        self.rows.append((labels, value))

    @property
    def samples(self) -> list[Sample]:
        name = f"{self.name}_total" if self.type == "counter" else self.name
        return [Sample(name, dict(zip(self.labelnames, v, strict=True)), float(x), None, None) for v, x in self.rows]

    @samples.setter
    def samples(self, _value) -> None:  # Metric.__init__ sets an empty list
        pass


def _gauge(name: str, doc: str, labels: list[str]) -> Family:
    return Family(name, doc, "gauge", labels)


def _counter(name: str, doc: str, labels: list[str] | None = None) -> Family:
    return Family(name, doc, "counter", labels or [])


# ------------------------------------------------------------------ the database


class DatabaseCollector:
    """Everything the portal already keeps in its database."""

    def collect(self):
        yield from self._hosts()
        yield from self._vms()
        yield from self._pools()
        yield from self._encryption()
        yield from self._alerts()
        yield from self._jobs()
        yield from self._audit()
        yield from self._posture()
        yield from self._worker()
        yield from self._network()
        yield from self._backups()

    def _hosts(self):
        from apps.core.models import Host

        up = _gauge("portal_host_up", "1 when the state collector's last read of the host succeeded", ["host"])
        collected = _gauge(
            "portal_host_collected_timestamp_seconds", "When the state collector last read the host", ["host"]
        )
        for name, collected_at, unreachable in Host.objects.values_list("name", "collected_at", "unreachable_since"):
            up.add_metric([name], 0 if unreachable is not None or collected_at is None else 1)
            if collected_at is not None:
                collected.add_metric([name], _ts(collected_at))
        yield up
        yield collected

    def _vms(self):
        from apps.encryption.models import EncryptedDisk
        from apps.storage.models import StorageDefaults, VmDiskState, VmQuota
        from apps.vms.models import VirtualMachine

        labels = ["host", "vm", "zone"]
        state = _gauge(
            "portal_vm_state", "The VM's state as last collected (1 for the current state)", [*labels, "state"]
        )
        vcpus = _gauge("portal_vm_vcpus", "Virtual CPUs of the VM", labels)
        memory = _gauge("portal_vm_memory_bytes", "Memory given to the VM", labels)
        provisioned = _gauge(
            "portal_vm_disk_provisioned_bytes", "Capacity of the VM's disks as the guest sees it", labels
        )
        allocated = _gauge(
            "portal_vm_disk_allocated_bytes", "Bytes the VM's disk files take on the host, snapshots included", labels
        )
        quota = _gauge("portal_vm_quota_limit_bytes", "The VM's storage quota (its own or the default)", labels)
        threshold = _gauge(
            "portal_vm_quota_alert_threshold_ratio", "Share of the quota at which an alert is raised", labels
        )
        encrypted = _gauge("portal_vm_encrypted_disks", "Encrypted disks of the VM that are ready", labels)

        defaults = StorageDefaults.objects.filter(id=1).values_list("quota_bytes", "alert_percent").first()
        default_limit, default_percent = defaults or (
            settings.STORAGE_DEFAULT_QUOTA_GIB << 30,
            settings.STORAGE_DEFAULT_ALERT_PERCENT,
        )
        quotas = {
            vm_id: (limit, percent)
            for vm_id, limit, percent in VmQuota.objects.values_list("vm_id", "limit_bytes", "alert_percent")
        }
        disks = {vm_id: (p, a) for vm_id, p, a in VmDiskState.objects.values_list("vm_id", "provisioned", "allocation")}
        enc = dict(
            EncryptedDisk.objects.filter(state=EncryptedDisk.State.READY)
            .values_list("vm_id")
            .annotate(n=Count("id"))
            .values_list("vm_id", "n")
        )
        rows = VirtualMachine.objects.filter(present=True).values_list(
            "pk", "host__name", "name", "zone", "last_state", "vcpus", "memory_kib", "disk_capacity", "disk_allocation"
        )
        for pk, host, name, zone, last_state, n_cpu, mem_kib, cap, alloc in rows.iterator(chunk_size=2000):
            lv = (host, name, zone)
            state.add_metric((host, name, zone, last_state or "unknown"), 1)
            vcpus.add_metric(lv, n_cpu)
            memory.add_metric(lv, mem_kib * 1024)
            p, a = disks.get(pk, (cap, alloc))
            provisioned.add_metric(lv, p)
            allocated.add_metric(lv, a)
            limit, percent = quotas.get(pk, (None, None))
            quota.add_metric(lv, limit or default_limit)
            threshold.add_metric(lv, (percent or default_percent) / 100)
            encrypted.add_metric(lv, enc.get(pk, 0))
        yield from (state, vcpus, memory, provisioned, allocated, quota, threshold, encrypted)

    def _pools(self):
        from apps.storage.models import PoolLimit, PoolState, StorageDefaults

        labels = ["host", "pool"]
        fams = {
            "capacity": _gauge("portal_pool_capacity_bytes", "Size of the storage pool", labels),
            "allocation": _gauge("portal_pool_allocation_bytes", "Bytes used in the storage pool", labels),
            "available": _gauge("portal_pool_available_bytes", "Bytes free in the storage pool", labels),
            "provisioned": _gauge(
                "portal_pool_provisioned_bytes", "Capacity promised to the pool's volumes (thin provisioning)", labels
            ),
        }
        volumes = _gauge("portal_pool_volumes", "Volumes in the storage pool", labels)
        active = _gauge("portal_pool_active", "1 when the storage pool is active", labels)
        reserve = _gauge("portal_pool_reserve_ratio", "Share of the pool kept free (pool limit)", labels)
        overcommit = _gauge("portal_pool_max_overcommit_ratio", "Provisioned / capacity the pool limit allows", labels)
        defaults = StorageDefaults.objects.filter(id=1).values_list("max_overcommit", "reserve_percent").first()
        d_over, d_reserve = defaults or (
            float(settings.STORAGE_DEFAULT_MAX_OVERCOMMIT),
            settings.STORAGE_DEFAULT_RESERVE_PERCENT,
        )
        limits = {
            (h, p): (o, r)
            for h, p, o, r in PoolLimit.objects.values_list("host_id", "pool", "max_overcommit", "reserve_percent")
        }
        rows = PoolState.objects.values_list(
            "host_id",
            "host__name",
            "name",
            "active",
            "capacity",
            "allocation",
            "available",
            "provisioned",
            "volume_count",
        )
        for host_id, host, name, is_active, cap, alloc, avail, prov, count in rows:
            lv = [host, name]
            for key, value in (("capacity", cap), ("allocation", alloc), ("available", avail), ("provisioned", prov)):
                fams[key].add_metric(lv, value)
            volumes.add_metric(lv, count)
            active.add_metric(lv, 1 if is_active else 0)
            o, r = limits.get((host_id, name), (None, None))
            overcommit.add_metric(lv, float(o if o is not None else d_over))
            reserve.add_metric(lv, (r if r is not None else d_reserve) / 100)
        yield from fams.values()
        yield from (volumes, active, reserve, overcommit)

    def _encryption(self):
        from apps.encryption.models import EncryptedDisk

        disks = _gauge("portal_encrypted_disks", "Encrypted disks by kind and state", ["host", "kind", "state"])
        for host, kind, st, n in (
            EncryptedDisk.objects.values_list("host__name", "kind", "state").annotate(n=Count("id")).order_by()
        ):
            disks.add_metric([host, kind, st], n)
        tested = _gauge(
            "portal_encrypted_disk_recovery_tested_timestamp_seconds",
            "When the disk's key escrow was last proven to open it (recovery test)",
            ["host", "vm", "disk"],
        )
        key_created = _gauge(
            "portal_encrypted_disk_key_created_timestamp_seconds",
            "When the disk's current key was made",
            ["host", "vm", "disk"],
        )
        for host, vm, target, tested_at, key_at in EncryptedDisk.objects.values_list(
            "host__name", "vm__name", "target", "recovery_tested_at", "key_created_at"
        ):
            if tested_at is not None:
                tested.add_metric([host, vm, target], _ts(tested_at))
            key_created.add_metric([host, vm, target], _ts(key_at))
        yield from (disks, tested, key_created)

    def _alerts(self):
        from apps.storage.models import StorageAlert

        from .models import MonitoringAlert

        fam = _gauge("portal_alerts_open", "Open alerts by source and level", ["source", "level"])
        counts = {("storage", lvl): 0 for lvl in StorageAlert.Level.values}
        counts |= {("posture", lvl): 0 for lvl in MonitoringAlert.Level.values}
        for level, n in (
            StorageAlert.objects.filter(state="open").values_list("level").annotate(n=Count("id")).order_by()
        ):
            counts[("storage", level)] = n
        for source, level, n in (
            MonitoringAlert.objects.filter(state="open")
            .values_list("source", "level")
            .annotate(n=Count("id"))
            .order_by()
        ):
            counts[(source, level)] = n
        for (source, level), n in sorted(counts.items()):
            fam.add_metric([source, level], n)
        yield fam

    def _jobs(self):
        from apps.core.models import Job

        jobs = _gauge("portal_jobs", "Jobs in the portal's job table by kind and state", ["kind", "state"])
        for kind, st, n in Job.objects.values_list("kind", "state").annotate(n=Count("id")).order_by():
            jobs.add_metric([kind, st], n)
        duration = SummaryMetricFamily(
            "portal_job_duration_seconds", "Run time of finished jobs by kind and outcome", labels=["kind", "outcome"]
        )
        took = ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField())
        for kind, st, n, total in (
            Job.objects.filter(state__in=Job.FINISHED, started_at__isnull=False, finished_at__isnull=False)
            .values_list("kind", "state")
            .annotate(n=Count("id"), total=Sum(took))
            .order_by()
        ):
            duration.add_metric([kind, st], count_value=n, sum_value=total.total_seconds() if total else 0.0)
        oldest = _gauge(
            "portal_jobs_oldest_queued_timestamp_seconds",
            "When the oldest job still waiting for a worker was queued",
            [],
        )
        first = Job.objects.filter(state=Job.State.QUEUED).aggregate(m=Min("created_at"))["m"]
        if first is not None:
            oldest.add_metric([], _ts(first))
        yield from (jobs, duration, oldest)

    def _audit(self):
        from apps.audit.models import AuditChainHead, AuditEvent

        head = AuditChainHead.objects.filter(id=1).values_list("count", flat=True).first()
        events = _counter("portal_audit_events", "Events written to the audit log")
        events.add_metric([], head or 0)
        yield events
        verify = (
            AuditEvent.objects.filter(action=AUDIT_VERIFY_ACTION)
            .order_by("-id")
            .values_list("created_at", "outcome")
            .first()
        )
        verified = _gauge(
            "portal_audit_chain_verified_timestamp_seconds", "When the audit hash chain was last verified", []
        )
        intact = _gauge("portal_audit_chain_intact", "1 when the last verification found the chain intact", [])
        if verify is not None:
            verified.add_metric([], _ts(verify[0]))
            intact.add_metric([], 1 if verify[1] == AuditEvent.Outcome.SUCCESS else 0)
        yield verified
        yield intact
        failures = _counter(
            "portal_auth_failures", "Failed sign-ins and re-authentications (audit log)", labels=["kind"]
        )
        failures.add_metric(["login"], AuditEvent.objects.filter(action="auth.login", outcome="failed").count())
        failures.add_metric(["reauth"], AuditEvent.objects.filter(action="auth.reauth.failed").count())
        yield failures

    def _posture(self):
        from .models import PostureResult, Status

        fam = _gauge(
            "portal_posture_check_status",
            "Host security posture checks (1 for the current status)",
            ["host", "check", "status"],
        )
        checked = _gauge("portal_posture_checked_timestamp_seconds", "When the posture checks last ran", ["host"])
        last: dict[str, float] = {}
        for host, key, st, at in PostureResult.objects.values_list("host__name", "key", "status", "checked_at"):
            for value in Status.values:
                fam.add_metric([host, key, value], 1 if value == st else 0)
            last[host] = max(last.get(host, 0.0), _ts(at))
        for host, at in sorted(last.items()):
            checked.add_metric([host], at)
        yield fam
        yield checked
        yield from self._lynis()

    def _lynis(self):
        from .models import LynisScan
        from .selectors import latest_lynis

        index = _gauge("portal_lynis_hardening_index", "Hardening index of the host's newest lynis scan", ["host"])
        warnings = _gauge("portal_lynis_warnings", "Warnings of the host's newest lynis scan", ["host"])
        when = _gauge("portal_lynis_scan_timestamp_seconds", "When the host was last scanned with lynis", ["host"])
        hosts = LynisScan.objects.values("host_id").distinct()
        for scan in latest_lynis(hosts).values():
            name = scan.host.name
            if scan.hardening_index is not None:
                index.add_metric([name], scan.hardening_index)
            warnings.add_metric([name], len(scan.warnings))
            when.add_metric([name], _ts(scan.finished_at))
        yield from (index, warnings, when)

    def _worker(self):
        beat = _gauge(
            "portal_worker_heartbeat_timestamp_seconds",
            "When a Celery worker last ran the heartbeat task from beat",
            [],
        )
        at = cache.get(WORKER_HEARTBEAT_KEY)
        if at is not None:
            beat.add_metric([], float(at))
        yield beat

    def _network(self):
        from apps.network.models import Quarantine

        quarantined = _gauge("portal_vm_quarantined", "1 while the VM is under quarantine", ["host", "vm", "incident"])
        active = Quarantine.objects.filter(released_at__isnull=True).values_list("vm__host__name", "vm__name",
                                                                                 "incident_id")  # fmt: skip
        for host, vm, incident in active:
            quarantined.add_metric([host, vm, incident], 1)
        yield quarantined

    def _backups(self):
        from django.db.models import Max

        from apps.backups.models import BackupRun, BackupVerification

        last = _gauge("portal_backup_last_success_timestamp_seconds",
                      "When the VM's latest good backup (succeeded, not pruned) finished", ["host", "vm"])  # fmt: skip
        runs = BackupRun.objects.filter(state=BackupRun.State.SUCCEEDED, forgotten_at__isnull=True, vm__isnull=False)
        good = runs.exclude(snapshot_id="").values("vm__host__name", "vm__name").annotate(at=Max("finished_at"))
        for row in good:
            if row["at"] is not None:
                last.add_metric([row["vm__host__name"], row["vm__name"]], _ts(row["at"]))
        ok = _gauge("portal_backup_verification_ok", "1 when the VM's latest backup verification passed, else 0",
                    ["host", "vm"])  # fmt: skip
        seen = set()
        latest = (BackupVerification.objects.filter(run__vm__isnull=False).order_by("-checked_at", "-pk")
                  .values_list("run__vm__host__name", "run__vm__name", "ok"))  # fmt: skip
        for host, vm, passed in latest.iterator():
            if (host, vm) not in seen:  # the newest verification of each VM
                seen.add((host, vm))
                ok.add_metric([host, vm], 1 if passed else 0)
        yield last
        yield ok


# ------------------------------------------------------------------ libvirt's bulk statistics


@dataclass
class _Read:
    at: float
    stats: list[gw.DomainRuntimeStats] | None
    error: str
    seconds: float


# a scrape waits this long for a host's statistics, then reports that host down (Prometheus'
# default scrape timeout is 10 s: a hung libvirtd must not fail the whole scrape)
LIBVIRT_WAIT_SECONDS = 8.0
_executor: ThreadPoolExecutor | None = None
_executor_pid = 0


def _readers() -> ThreadPoolExecutor:
    """The threads that read libvirt while the database collectors run (made lazily, and
    again in a forked child, which inherits no threads)."""
    global _executor, _executor_pid
    if _executor is None or _executor_pid != os.getpid():
        _executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="metrics-libvirt")
        _executor_pid = os.getpid()
    return _executor


class LibvirtStatsCollector:
    """Guest counters from one getAllDomainStats per host, cached for the scrape interval.
    The per-host lock makes concurrent scrapes share one call. `start()` sends the calls off
    in background threads when a scrape begins: libvirtd answers while the database
    collectors run, and collect() takes the answers."""

    def __init__(self):
        self._cache: dict[str, _Read] = {}
        self._locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._guard = threading.Lock()
        self._scrape = threading.local()
        self.reads: defaultdict[str, int] = defaultdict(int)  # libvirt calls made, per host

    def start(self) -> None:
        from apps.core.models import Host

        self._scrape.pending = {
            uri: _readers().submit(self.read, name, uri) for name, uri in Host.objects.values_list("name", "uri")
        }

    def _result(self, host: str, uri: str) -> _Read:
        pending = getattr(self._scrape, "pending", None) or {}
        future = pending.pop(uri, None)
        if future is None:
            return self.read(host, uri)
        try:
            return future.result(timeout=LIBVIRT_WAIT_SECONDS)
        except FutureTimeout:
            return _Read(time.monotonic(), None, f"no answer within {LIBVIRT_WAIT_SECONDS:g} s", LIBVIRT_WAIT_SECONDS)

    def clear(self) -> None:
        self._cache.clear()

    def read(self, host: str, uri: str) -> _Read:
        with self._guard:
            lock = self._locks[uri]
        with lock:
            cached = self._cache.get(uri)
            if cached is not None and time.monotonic() - cached.at < settings.METRICS_LIBVIRT_CACHE_SECONDS:
                return cached
            started = time.monotonic()
            self.reads[host] += 1
            try:
                result = _Read(started, gw.domain_runtime_stats(uri), "", 0.0)
            except PortalError as exc:
                result = _Read(started, None, exc.message, 0.0)
            result.seconds = time.monotonic() - started
            self._cache[uri] = result
            return result

    def collect(self):
        from apps.core.models import Host

        up = _gauge("portal_libvirt_up", "1 when the host's libvirt answered the last statistics read", ["host"])
        took = _gauge("portal_libvirt_stats_duration_seconds", "How long the last bulk statistics read took", ["host"])
        reads = _counter(
            "portal_libvirt_stats_reads", "Bulk statistics calls this process made to the host", labels=["host"]
        )
        lv = ["host", "vm"]
        cpu = _counter("portal_vm_cpu_seconds", "CPU time the guest used since it started", labels=lv)
        mem = _gauge("portal_vm_memory_current_bytes", "Memory the guest has now (balloon)", lv)
        rss = _gauge("portal_vm_memory_rss_bytes", "Resident memory of the guest's QEMU process", lv)
        ld = [*lv, "device"]
        c = {
            name: _counter(name, doc, ld)
            for name, doc in (
                ("portal_vm_disk_read_bytes", "Bytes read from the guest disk"),
                ("portal_vm_disk_written_bytes", "Bytes written to the guest disk"),
                ("portal_vm_disk_read_requests", "Read requests of the guest disk"),
                ("portal_vm_disk_write_requests", "Write requests of the guest disk"),
                ("portal_vm_network_receive_bytes", "Bytes the guest interface received"),
                ("portal_vm_network_transmit_bytes", "Bytes the guest interface sent"),
                ("portal_vm_network_receive_packets", "Packets the guest interface received"),
                ("portal_vm_network_transmit_packets", "Packets the guest interface sent"),
                ("portal_vm_network_receive_errors", "Receive errors of the guest interface"),
                ("portal_vm_network_transmit_errors", "Transmit errors of the guest interface"),
                ("portal_vm_network_receive_drops", "Received packets dropped on the guest interface"),
                ("portal_vm_network_transmit_drops", "Sent packets dropped on the guest interface"),
            )
        }
        for host, uri in Host.objects.values_list("name", "uri"):
            r = self._result(host, uri)
            up.add_metric([host], 0 if r.stats is None else 1)
            took.add_metric([host], r.seconds)
            reads.add_metric([host], self.reads[host])
            for d in r.stats or ():
                if d.state not in ("running", "paused"):
                    continue  # an inactive guest has no counters
                v = [host, d.name]
                cpu.add_metric(v, d.cpu_time_ns / 1e9)
                mem.add_metric(v, d.memory_current_kib * 1024)
                rss.add_metric(v, d.memory_rss_kib * 1024)
                for b in d.block:
                    dv = [*v, b.device]
                    c["portal_vm_disk_read_bytes"].add_metric(dv, b.read_bytes)
                    c["portal_vm_disk_written_bytes"].add_metric(dv, b.write_bytes)
                    c["portal_vm_disk_read_requests"].add_metric(dv, b.read_requests)
                    c["portal_vm_disk_write_requests"].add_metric(dv, b.write_requests)
                for n in d.net:
                    nv = [*v, n.device]
                    c["portal_vm_network_receive_bytes"].add_metric(nv, n.rx_bytes)
                    c["portal_vm_network_transmit_bytes"].add_metric(nv, n.tx_bytes)
                    c["portal_vm_network_receive_packets"].add_metric(nv, n.rx_packets)
                    c["portal_vm_network_transmit_packets"].add_metric(nv, n.tx_packets)
                    c["portal_vm_network_receive_errors"].add_metric(nv, n.rx_errors)
                    c["portal_vm_network_transmit_errors"].add_metric(nv, n.tx_errors)
                    c["portal_vm_network_receive_drops"].add_metric(nv, n.rx_drops)
                    c["portal_vm_network_transmit_drops"].add_metric(nv, n.tx_drops)
        self._scrape.pending = {}
        yield from (up, took, reads, cpu, mem, rss)
        yield from c.values()


libvirt_stats = LibvirtStatsCollector()
_registry = CollectorRegistry(auto_describe=False)
_registry.register(DatabaseCollector())
_registry.register(libvirt_stats)


def _escape_label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


def _float(value: float) -> str:
    if value.__class__ is int:  # counts and bytes: never NaN or infinite
        return repr(float(value))
    value = float(value)
    if value != value:
        return "NaN"
    if value in (math.inf, -math.inf):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text format (0.0.4) of the registry's families, as generate_latest
    writes it (tests compare the two sample by sample), but each label set is escaped and
    joined once per scrape instead of once per sample: a VM's labels repeat in every one
    of its families, and with 1,000 VMs generate_latest spent more time on them than
    libvirt's bulk call took."""
    out: list[str] = []
    label_text: dict[tuple, str] = {}
    for family in registry.collect():
        kind = family.type
        if kind not in ("gauge", "counter", "summary"):
            raise ValueError(f"render() writes gauges, counters and summaries, not {kind} ({family.name})")
        name = f"{family.name}_total" if kind == "counter" else family.name
        doc = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n")
        if isinstance(family, Family):
            names = family.labelnames
            order = sorted(range(len(names)), key=names.__getitem__)
            for values, value in family.rows:
                key = (names, values)
                text = label_text.get(key)
                if text is None:
                    pairs = ",".join(f'{names[i]}="{_escape_label_value(values[i])}"' for i in order)
                    text = label_text[key] = "{" + pairs + "}" if pairs else ""
                out.append(f"{name}{text} {_float(value)}\n")
            continue
        for sample in family.samples:
            labels = sample.labels
            if labels:
                key = tuple(labels.items())
                text = label_text.get(key)
                if text is None:
                    text = "{" + ",".join(f'{k}="{_escape_label_value(v)}"' for k, v in sorted(key)) + "}"
                    label_text[key] = text
            else:
                text = ""
            out.append(f"{sample.name}{text} {_float(sample.value)}\n")
    return "".join(out).encode()


def scrape() -> bytes:
    """One scrape in the Prometheus text format."""
    libvirt_stats.start()
    body = render(_registry)
    cache.set(LAST_SCRAPE_KEY, time.time(), None)
    return body
