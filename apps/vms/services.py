"""VM inventory, lifecycle and snapshots. Every change is a job; every request, refusal
and outcome is audited."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from apps.accounts.permissions import authorize, has_perm
from apps.audit.services import audited, record, refused
from apps.core import jobs
from apps.core.errors import Conflict, InvalidInput, NotFound
from apps.core.gateways import libvirt as gw
from apps.core.models import Host, Job
from apps.core.validators import validate_name

from .models import VirtualMachine

# action -> (states it may start from, permission, confirmation needed)
LIFECYCLE = {
    "start": ({"shut off", "crashed"}, "vms.operate", False),
    "shutdown": ({"running", "paused"}, "vms.operate", True),
    "force_off": ({"running", "paused", "shutting down", "crashed", "pmsuspended"}, "vms.operate", True),
    "suspend": ({"running"}, "vms.operate", False),
    "resume": ({"paused"}, "vms.operate", False),
}
LABELS = {"start": "Start", "shutdown": "Shut down", "force_off": "Force off", "suspend": "Suspend", "resume": "Resume"}


def actions_for(state: str) -> list[tuple[str, str, bool]]:
    """(action, label, needs confirmation) for each lifecycle action possible from `state`."""
    return [(a, LABELS[a], spec[2]) for a, spec in LIFECYCLE.items() if state in spec[0]]


# the state each action leads to: re-running a job that already reached it is a no-op
_RESULT_STATE = {
    "start": "running",
    "shutdown": "shut off",
    "force_off": "shut off",
    "suspend": "paused",
    "resume": "running",
}
_GATEWAY = {
    "start": gw.domain_start,
    "shutdown": gw.domain_shutdown,
    "force_off": gw.domain_force_off,
    "suspend": gw.domain_suspend,
    "resume": gw.domain_resume,
}


@dataclass
class SyncResult:
    rows: list[tuple[VirtualMachine, gw.DomainInfo]]
    found: list[VirtualMachine]  # new to the portal (defined outside it, or before it ran)
    gone: list[VirtualMachine]  # no longer listed by libvirt

    def __iter__(self):  # a SyncResult reads as its rows
        return iter(self.rows)


def _live_fields(d: gw.DomainInfo) -> tuple:
    return (d.name, d.state, d.vcpus, d.memory_kib, True, sum(x.capacity for x in d.disks),
            sum(x.allocation for x in d.disks))  # fmt: skip


_SYNCED = ["name", "last_state", "vcpus", "memory_kib", "present", "disk_capacity", "disk_allocation", "last_seen"]


def inventory_sync(host: Host, domains: list[gw.DomainInfo] | None = None) -> SyncResult:
    """Read every domain of the host in bulk (or take `domains`, already read) and bring the
    VM rows up to date: a constant number of queries whatever the number of VMs, and writes
    only for rows that changed."""
    if domains is None:
        domains = gw.domain_list(host.uri)
    now = timezone.now()
    existing = {str(vm.uuid): vm for vm in VirtualMachine.objects.filter(host=host).defer("security")}
    to_create, to_update, found = [], [], []
    for d in domains:
        vm = existing.get(d.uuid)
        live = _live_fields(d)
        if vm is None:
            vm = VirtualMachine(host=host, uuid=d.uuid)
            to_create.append(vm)
        elif (vm.name, vm.last_state, vm.vcpus, vm.memory_kib, vm.present, vm.disk_capacity,
              vm.disk_allocation) != live:  # fmt: skip
            if not vm.present:
                found.append(vm)
            to_update.append(vm)
        else:
            continue
        (vm.name, vm.last_state, vm.vcpus, vm.memory_kib, vm.present, vm.disk_capacity, vm.disk_allocation) = live
        vm.last_seen = now
    seen = {d.uuid for d in domains}
    # a VM being created (apps/profiles) has its row before libvirt defines it: not gone
    gone = [vm for uuid, vm in existing.items() if uuid not in seen and vm.present and vm.last_state != "creating"]
    for vm in gone:
        vm.present = False
    if gone or to_update or to_create:
        with transaction.atomic():
            if gone:
                VirtualMachine.objects.bulk_update(gone, ["present"])
            if to_update:
                VirtualMachine.objects.bulk_update(to_update, _SYNCED)
            if to_create:
                VirtualMachine.objects.bulk_create(to_create)
        existing = {str(vm.uuid): vm for vm in VirtualMachine.objects.filter(host=host).defer("security")}
    rows = []
    for d in domains:
        vm = existing.get(d.uuid)
        if vm is not None:
            vm.host = host  # the rows are shown with their host: no query per row
            rows.append((vm, d))
    new = {str(vm.uuid) for vm in to_create + found}
    return SyncResult(rows=rows, found=[vm for vm, _ in rows if str(vm.uuid) in new], gone=gone)


def inventory_for(user) -> list[VirtualMachine]:
    """The VMs the user may see, as the state collector last read them (no libvirt call)."""
    from .selectors import vms_visible_to

    authorize(user, "vms.view", anywhere=True, action="vms.inventory.view")
    return list(vms_visible_to(user).order_by("host__name", "name"))


def vm_for(user, host_name: str, vm_name: str, perm: str = "vms.view") -> VirtualMachine:
    """The VM, if the user may see it (NotFound otherwise, so hidden VMs stay hidden).
    A refused lookup is audited: it is how a forged request for another scope shows up.
    It reads the database only: the state collector keeps the rows current (a VM defined
    a moment ago shows once the collector has read its host)."""
    return _lookup(user, host_name, vm_name, system=False)


def vm_for_actor(actor, host_name: str, vm_name: str) -> VirtualMachine:
    """vm_for for management commands: actor None is the system user (no --as), who sees
    every VM; a portal user (--as USER) gets the pages' answer, "not found" for a VM outside
    their scope, audited as a refused lookup, never a "no permission" that confirms it exists."""
    return _lookup(actor, host_name, vm_name, system=actor is None)


def _lookup(user, host_name: str, vm_name: str, *, system: bool) -> VirtualMachine:
    target = ("virtualmachine", "", f"{host_name}/{vm_name}"[:200])
    with audited(actor=user, action="vms.vm.lookup", target=target) as ev:
        ev.recorded = True  # a lookup is an event only when it is refused
        validate_name(host_name, "host name")
        validate_name(vm_name, "VM name")
    vm = VirtualMachine.objects.select_related("host").filter(host__name=host_name, name=vm_name, present=True).first()
    if vm is None or not (system or has_perm(user, "vms.view", vm)):
        hidden = vm is not None
        record(actor=user, action="vms.vm.lookup", target=vm or target, outcome="denied" if hidden else "failed",
               error="outside the user's scope" if hidden else "no such VM")  # fmt: skip
        # the same words whether it is hidden or absent
        raise NotFound(f"No VM named {vm_name!r} on host {host_name!r}{'' if system else ' that you can see'}.")
    return vm


def vm_detail(*, actor, vm: VirtualMachine) -> tuple[gw.DomainInfo, list[gw.SnapshotInfo]]:
    authorize(actor, "vms.view", vm, action="vms.vm.view")
    try:
        return gw.domain_get(vm.host.uri, vm.name), gw.snapshot_list(vm.host.uri, vm.name)
    except NotFound:
        if vm.last_state != "creating":
            raise
        # a VM being created (apps/profiles): its row exists before libvirt defines it
        return gw.DomainInfo(str(vm.uuid), vm.name, "creating", vm.vcpus, vm.memory_kib), []


def vm_lifecycle(*, actor, vm: VirtualMachine, action: str, confirmed: bool = False) -> Job:
    """Ask for a lifecycle action; it runs as a job."""
    kind = f"vms.vm.{action}"
    if action not in LIFECYCLE:
        refused(actor=actor, action="vms.vm.action", target=vm, params={"action": action}, error="unknown action")
        raise InvalidInput(f"Unknown action {action!r}. Choose one of: {', '.join(LIFECYCLE)}.")
    allowed_from, perm, needs_confirmation = LIFECYCLE[action]
    with audited(actor=actor, action=kind, target=vm, perm=perm) as ev:
        if needs_confirmation and not confirmed:
            raise InvalidInput(f"{action.replace('_', ' ').capitalize()} of {vm.name} needs confirmation.")
        state = gw.domain_state(vm.host.uri, vm.name)
        if state not in allowed_from:
            raise Conflict(f"Cannot {action.replace('_', ' ')} {vm.name}: it is {state}.")
        return _enqueue(ev, actor, kind, vm, {"action": action})


def _enqueue(ev, actor, kind: str, vm: VirtualMachine, params: dict) -> Job:
    """The job; its request is audited by job_enqueue ("requested"), its end by job_run."""
    with transaction.atomic():
        job = jobs.job_enqueue(actor=actor, kind=kind, target=vm, host=vm.host, params=params)
    ev.recorded = True
    return job


def vm_lifecycle_now(*, actor, vm: VirtualMachine, action: str, audit_action: str | None = None,
                     params: dict | None = None) -> str:  # fmt: skip
    """Run a lifecycle action at once, in this process, for a service that must act now
    (the storage check suspending a VM over its quota, and resuming it after): the same
    permission (the system actor, None, is allowed) and the same work as the job, audited
    under `audit_action` (default vms.vm.<action>). Returns the VM's new state."""
    with audited(actor=actor, action=audit_action or f"vms.vm.{action}", target=vm, perm=LIFECYCLE[action][1],
                 params=params):  # fmt: skip
        return _lifecycle_apply(vm, action, lambda percent, message="": None)


def _run_lifecycle(job: Job, progress: jobs.Progress) -> dict:
    action = job.params["action"]
    vm = VirtualMachine.objects.select_related("host").get(pk=job.target_id)
    authorize(jobs.job_actor(job), LIFECYCLE[action][1], vm, action=job.kind)
    return {"state": _lifecycle_apply(vm, action, progress)}


def _lifecycle_apply(vm: VirtualMachine, action: str, progress: jobs.Progress) -> str:
    """The work of a lifecycle action (idempotent: a VM already in the action's resulting
    state is left alone), the other apps' hooks, and the VM row's new state."""
    uri = vm.host.uri
    state = gw.domain_state(uri, vm.name)
    if state == _RESULT_STATE[action] and action != "shutdown":
        progress(90, f"{vm.name} is already {state}")
    else:
        progress(20, f"{action.replace('_', ' ')} {vm.name}")
        if action == "start":
            for hook in BEFORE_START:
                hook(vm, progress)
        _GATEWAY[action](uri, vm.name)
    if action == "shutdown":
        progress(60, "shutdown requested; the guest OS decides when to power off")
    state = gw.domain_state(uri, vm.name)
    if state == "shut off":
        for hook in AFTER_STOP:
            hook(vm, progress)
    VirtualMachine.objects.filter(pk=vm.pk).update(last_state=state, last_seen=timezone.now())
    return state


# Other apps hook into the lifecycle jobs (registered in their AppConfig.ready): the
# encryption app opens a VM's encrypted disks before it starts and closes them once it is off.
BEFORE_START: list = []  # hook(vm, progress); raising a PortalError keeps the VM off
AFTER_STOP: list = []  # hook(vm, progress)


for _action in LIFECYCLE:
    jobs.handler(f"vms.vm.{_action}")(_run_lifecycle)


def snapshot_create(*, actor, vm: VirtualMachine, name: str, description: str = "") -> Job:
    kind = "vms.snapshot.create"
    with audited(actor=actor, action=kind, target=vm, perm="vms.snapshot", params={"snapshot": name}) as ev:
        validate_name(name, "snapshot name")
        if len(description) > 500:
            raise InvalidInput("The description is limited to 500 characters.")
        if any(s.name == name for s in gw.snapshot_list(vm.host.uri, vm.name)):
            raise Conflict(f"{vm.name} already has a snapshot named {name!r}.")
        return _enqueue(ev, actor, kind, vm, {"snapshot": name, "description": description})


@jobs.handler("vms.snapshot.create")
def _run_snapshot_create(job: Job, progress: jobs.Progress) -> dict:
    vm = VirtualMachine.objects.select_related("host").get(pk=job.target_id)
    authorize(jobs.job_actor(job), "vms.snapshot", vm, action=job.kind)
    name = job.params["snapshot"]
    if any(s.name == name for s in gw.snapshot_list(vm.host.uri, vm.name)):
        progress(90, f"snapshot {name} already exists")  # re-delivered job: already done
    else:
        progress(10, f"creating snapshot {name}")
        gw.snapshot_create(vm.host.uri, vm.name, name, job.params.get("description", ""))
    return {"snapshot": name}


def snapshot_delete(*, actor, vm: VirtualMachine, name: str, confirmed: bool = False) -> Job:
    kind = "vms.snapshot.delete"
    with audited(actor=actor, action=kind, target=vm, perm="vms.snapshot", params={"snapshot": name}) as ev:
        validate_name(name, "snapshot name")
        if not confirmed:
            raise InvalidInput(f"Deleting snapshot {name} of {vm.name} needs confirmation.")
        if not any(s.name == name for s in gw.snapshot_list(vm.host.uri, vm.name)):
            raise NotFound(f"{vm.name} has no snapshot named {name!r}.")
        return _enqueue(ev, actor, kind, vm, {"snapshot": name})


@jobs.handler("vms.snapshot.delete")
def _run_snapshot_delete(job: Job, progress: jobs.Progress) -> dict:
    vm = VirtualMachine.objects.select_related("host").get(pk=job.target_id)
    authorize(jobs.job_actor(job), "vms.snapshot", vm, action=job.kind)
    name = job.params["snapshot"]
    if any(s.name == name for s in gw.snapshot_list(vm.host.uri, vm.name)):
        progress(10, f"deleting snapshot {name}")
        gw.snapshot_delete(vm.host.uri, vm.name, name)
    else:
        progress(90, f"snapshot {name} is already gone")
    return {"snapshot": name}


def snapshot_create_now(*, actor, vm: VirtualMachine, name: str, description: str = "") -> str:
    """A snapshot taken at once (a quarantine's forensic snapshot), with memory state when
    the VM runs or is paused; audited as `vms.snapshot.create`."""
    validate_name(name, "snapshot name")
    with audited(actor=actor, action="vms.snapshot.create", target=vm, perm="vms.snapshot", params={"snapshot": name}):
        gw.snapshot_create(vm.host.uri, vm.name, name, description)
    return name
