"""`manage.py storage_quota`: the seed's storage_quota.sh, through the same services,
permissions and audit as the portal. The actor is the system user unless --as USER."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.core.management.base import BaseCommand, CommandError

from apps.core.errors import PortalError
from apps.storage import selectors, services
from apps.storage.services import fmt_bytes
from apps.vms.services import vm_for_actor


class Command(BaseCommand):
    help = "Per-VM storage quotas: set, get, expand, alert-threshold, list, check."

    def add_arguments(self, parser):
        parser.add_argument("--as", dest="as_user", metavar="USER", help="act as this portal user (default: system)")
        parser.add_argument("--host", default=settings.DEFAULT_HOST_NAME, help="host of the VM (default: %(default)s)")
        sub = parser.add_subparsers(dest="verb", required=True)
        p = sub.add_parser("set", help="set the hard limit of VM to GiB")
        p.add_argument("vm")
        p.add_argument("gib")
        p.add_argument("--confirm", action="store_true", help="allow a limit below the current allocation")
        p = sub.add_parser("get", help="show the quota and usage of VM")
        p.add_argument("vm")
        p = sub.add_parser("expand", help="raise the hard limit of VM by GiB")
        p.add_argument("vm")
        p.add_argument("gib")
        p = sub.add_parser("alert-threshold", help="alert when VM uses PERCENT of its quota")
        p.add_argument("vm")
        p.add_argument("percent")
        sub.add_parser("list", help="every VM with its quota and usage")
        sub.add_parser("check", help="measure now; exit 1 when a VM is over its hard limit")

    def handle(self, *args, as_user=None, host=None, verb=None, **options):
        actor = self._actor(as_user)
        try:
            if verb == "list":
                return self._list(actor)
            if verb == "check":
                return self._check(actor)
            vm = vm_for_actor(actor, host, options["vm"])  # "not found" outside the scope, as on the pages
            if verb == "set":
                services.quota_set(actor=actor, vm=vm, limit_gib=options["gib"], confirmed=options["confirm"])
            elif verb == "expand":
                services.quota_expand(actor=actor, vm=vm, by_gib=options["gib"])
            elif verb == "alert-threshold":
                services.quota_set_threshold(actor=actor, vm=vm, percent=options["percent"])
            self._show(services.quota_get(actor=actor, vm=vm))
        except PermissionDenied as exc:
            raise CommandError(str(exc))
        except PortalError as exc:
            raise CommandError(exc.message)

    def _actor(self, username):
        if not username:
            return None  # the system user: audited as "system"
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None:
            raise CommandError(f"No active portal user named {username!r}.")
        return user

    def _show(self, q):
        quota = q.quota
        self.stdout.write(
            f"{q.vm.name}: quota {fmt_bytes(quota.limit_bytes)}{'' if quota.own_limit else ' (default)'}, "
            f"alert at {quota.alert_percent}%, on breach {quota.breach_action}; "
            f"allocated {fmt_bytes(q.allocation)} ({q.percent}%), provisioned {fmt_bytes(q.provisioned)}"
        )

    def _list(self, actor):
        hosts = selectors.overview_for(actor)
        self.stdout.write(f"{'HOST':12} {'VM':24} {'QUOTA':>12} {'ALLOCATED':>12} {'USE':>5} {'PROVISIONED':>12}")
        for h in hosts:
            for r in h.vms:
                self.stdout.write(
                    f"{h.host.name:12} {r.vm.name:24} {fmt_bytes(r.quota.limit_bytes):>12} "
                    f"{fmt_bytes(r.disks.allocation):>12} {r.percent:>4}% {fmt_bytes(r.disks.provisioned):>12}"
                )

    def _check(self, actor):
        report = services.storage_check(actor=actor)
        self.stdout.write(f"checked {report.vms} VMs and {report.pools} pools")
        for line in report.raised:
            self.stdout.write(f"alert: {line}")
        for line in report.cleared:
            self.stdout.write(f"cleared: {line}")
        for line in report.errors:
            self.stderr.write(f"error: {line}")
        if report.over_limit:
            for line in report.over_limit:
                self.stderr.write(f"over hard limit: {line}")
            raise CommandError(f"{len(report.over_limit)} VM(s) over their hard limit", returncode=1)
