"""`manage.py vm_backup`: the seed's snapshots_backups.sh, through the same services,
permissions and audit as the Backups page. The actor is the system user unless --as USER.

  vm_backup run --all --destination DIR        back up every VM (or: run VM [VM...])
  vm_backup run --policy NAME                  the VMs and destination of a policy
  vm_backup list [--vm VM]                     last good / last verified per VM, recent runs
  vm_backup restore RUN --name NEW --pool POOL restore backup RUN as a new VM
  vm_backup restore RUN --in-place --yes       put the (shut-off) VM's disks back as they were
  vm_backup verify RUN                         restore into scratch, compare checksums, restic check
  vm_backup prune --destination DIR --keep-last N [--keep-daily N ...]   (or --policy NAME: its VMs, as beat)
  vm_backup policy-add NAME --destination DIR [--zone Z | --vms A,B] [--every HOURS] [--keep-* N]

Jobs are queued for the workers and followed until they end (--no-wait returns at once)."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.core.management.base import BaseCommand, CommandError

from apps.accounts.permissions import restrict
from apps.backups import selectors, services
from apps.backups.models import BackupPolicy, BackupRepository, BackupRun
from apps.core.errors import NotFound, PortalError
from apps.core.management.follow import follow_job
from apps.core.models import Job
from apps.core.units import format_bytes
from apps.vms.models import VirtualMachine
from apps.vms.services import vm_for_actor

KEEP = ("keep_last", "keep_daily", "keep_weekly", "keep_monthly")


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser):
        parser.add_argument("--as", dest="as_user", metavar="USER", help="act as this portal user (default: system)")
        parser.add_argument("--host", default=settings.DEFAULT_HOST_NAME, help="host of the VMs (default: %(default)s)")
        parser.add_argument("--no-wait", action="store_true", help="queue the jobs and return")
        parser.add_argument("--timeout", type=int, default=6 * 3600, help="seconds to wait for each job")
        sub = parser.add_subparsers(dest="verb", required=True)
        p = sub.add_parser("run", help="back up VMs now")
        p.add_argument("vms", nargs="*", metavar="VM")
        p.add_argument("--all", action="store_true", help="every VM (that --as USER may back up)")
        p.add_argument("--destination", help="repository directory, under BACKUP_ALLOWED_ROOTS")
        p.add_argument("--policy", help="the VMs and destination of this policy")
        p = sub.add_parser("list", help="last good and last verified backup per VM, and recent runs")
        p.add_argument("--vm")
        p = sub.add_parser("restore", help="restore backup RUN as a new VM (or --in-place, the VM shut off)")
        p.add_argument("run", type=int)
        p.add_argument("--name", help="name of the new VM")
        p.add_argument("--pool", help="storage pool for its disks")
        p.add_argument("--in-place", action="store_true", help="replace the VM's disks (previous files kept)")
        p.add_argument("--yes", action="store_true", help="confirm a restore in place")
        p = sub.add_parser("verify", help="restore backup RUN into scratch space and check it")
        p.add_argument("run", type=int)
        p = sub.add_parser("prune", help="apply retention to a repository")
        p.add_argument("--destination")
        p.add_argument("--policy")
        p = sub.add_parser("policy-add", help="add a backup policy (beat runs it every --every hours)")
        p.add_argument("name")
        p.add_argument("--destination", required=True)
        p.add_argument("--zone")
        p.add_argument("--vms", help="comma-separated VM names")
        p.add_argument("--every", type=int, default=24, metavar="HOURS")
        for sp in (sub.choices["prune"], p):
            for keep in KEEP:
                sp.add_argument(f"--{keep.replace('_', '-')}", dest=keep, type=int, default=None, metavar="N")

    def handle(self, *args, as_user=None, verb=None, **o):
        actor = self._actor(as_user)
        try:
            getattr(self, f"_{verb.replace('-', '_')}")(actor, o)
        except PermissionDenied as exc:
            raise CommandError(str(exc)) from None
        except PortalError as exc:
            raise CommandError(exc.message) from None

    def _actor(self, username):
        if not username:
            return None
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None:
            raise CommandError(f"No active portal user named {username!r}.")
        return user

    # ------------------------------------------------------------ verbs

    def _run(self, actor, o):
        policy = self._policy(o["policy"]) if o["policy"] else None
        destination = o["destination"] or (policy.destination if policy else None)
        if not destination:
            raise CommandError("Give --destination DIR (or --policy NAME).")
        if policy and not (o["all"] or o["vms"]):
            vms = list(services.backup_policy_vms(policy).filter(host__name=o["host"]))
        elif o["all"] == bool(o["vms"]):
            raise CommandError("Name the VMs to back up, or give --all (not both).")
        elif o["all"]:
            qs = VirtualMachine.objects.filter(present=True, host__name=o["host"]).select_related("host")
            vms = list(restrict(qs, actor, "backups.run"))
        else:
            vms = [vm_for_actor(actor, o["host"], name) for name in o["vms"]]  # "not found" outside the scope
        if not vms:
            raise CommandError("No VM to back up.")
        runs, failures = [], []
        for vm in vms:
            try:
                runs.append(services.backup_start(actor=actor, vm=vm, destination=destination, policy=policy))
            except PortalError as exc:
                failures.append(f"{vm.name}: {exc.message}")
                self.stderr.write(failures[-1])
        for run in runs:
            if not self._follow(run.job, o):
                failures.append(f"{run.vm_name}: {run.job.error or 'not finished'}")
        if failures:
            raise CommandError(f"{len(failures)} of {len(vms)} backups failed. " + " ".join(failures))

    def _list(self, actor, o):
        statuses = selectors.vm_statuses(actor)
        if o["vm"]:
            statuses = [s for s in statuses if s.vm.name == o["vm"]]
        for s in statuses:
            good = f"#{s.last_good.pk} {s.last_good.finished_at:%Y-%m-%d %H:%M}" if s.last_good else "NONE"
            verified = f"{s.last_verified.checked_at:%Y-%m-%d %H:%M}" if s.last_verified else "never"
            flag = "  (verification overdue)" if s.last_good and s.verification_overdue else ""
            self.stdout.write(f"{s.vm.host.name}/{s.vm.name}: last good {good}; last verified {verified}{flag}")
        for run in selectors.recent_runs(actor, 20):
            if o["vm"] and run.vm_name != o["vm"]:
                continue
            state = "failed (interrupted)" if selectors.interrupted(run) else run.state
            self.stdout.write(
                f"  #{run.pk} {run.vm_name} {state} {run.snapshot_id or '-'} {format_bytes(run.bytes_total)} "
                f"{run.repository.path} {run.error}"
            )

    def _restore(self, actor, o):
        run = self._run_row(actor, o["run"])
        if o["in_place"]:
            job = services.backup_restore_in_place(actor=actor, run=run, confirmed=o["yes"])
            kept = ", ".join(services.restore_in_place_kept(run, job.pk))
            self.stdout.write(f"A copy of each disk before the restore is kept at {kept}: remove it when satisfied.")
        elif not (o["name"] and o["pool"]):
            raise CommandError("Give --name NEW and --pool POOL, or --in-place --yes.")
        else:
            job = services.backup_restore(actor=actor, run=run, new_name=o["name"], pool=o["pool"])
        if not self._follow(job, o):
            raise CommandError("The restore failed.")

    def _verify(self, actor, o):
        run = self._run_row(actor, o["run"])
        if not self._follow(services.backup_verify(actor=actor, run=run), o):
            raise CommandError("The verification failed.")

    def _prune(self, actor, o):
        policy = self._policy(o["policy"]) if o["policy"] else None
        destination = o["destination"] or (policy.destination if policy else None)
        if not destination:
            raise CommandError("Give --destination DIR (or --policy NAME).")
        path = services.validate_destination(destination)
        repository = BackupRepository.objects.filter(path=path).first()
        if repository is None:
            raise CommandError(f"The portal has no backup repository at {path}.")
        keep = services.policy_retention(policy) if policy else {}
        keep.update({k: o[k] for k in KEEP if o.get(k) is not None})
        scope = policy if policy and path == services.validate_destination(policy.destination) else None
        job = services.backup_prune(actor=actor, repository=repository, policy=scope,  # as beat: the policy's VMs
                                    **{k: keep.get(k) or 0 for k in KEEP})  # fmt: skip
        if not self._follow(job, o):
            raise CommandError("The prune failed.")

    def _policy_add(self, actor, o):
        selector = "zone" if o["zone"] else "names" if o["vms"] else "all"
        keep = {k: o[k] for k in KEEP if o.get(k) is not None}
        policy = services.backup_policy_create(
            actor=actor, name=o["name"], destination=o["destination"], selector=selector, zone=o["zone"] or "",
            vm_names=[n.strip() for n in (o["vms"] or "").split(",") if n.strip()], interval_hours=o["every"], **keep,
        )  # fmt: skip
        self.stdout.write(self.style.SUCCESS(f"policy {policy.name} added ({policy.destination})"))

    # ------------------------------------------------------------ helpers

    def _policy(self, name: str) -> BackupPolicy:
        policy = BackupPolicy.objects.filter(name=name).first()
        if policy is None:
            raise CommandError(f"No backup policy named {name!r}.")
        return policy

    def _run_row(self, actor, pk: int) -> BackupRun:
        if actor is None:
            run = BackupRun.objects.select_related("vm", "host", "repository").filter(pk=pk).first()
            if run is None:
                raise NotFound(f"No backup #{pk}.")
            return run
        return selectors.run_for(actor, pk)

    def _follow(self, job: Job, o) -> bool:
        problem = follow_job(self, job, no_wait=o["no_wait"], timeout=o["timeout"])
        if problem:
            self.stderr.write(problem)
        return problem is None
