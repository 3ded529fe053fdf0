"""`manage.py storage_quota`: the seed's storage_quota.sh, through the same forms, services,
permissions and audit as the portal. The actor is the system user unless --as USER."""

from __future__ import annotations

import argparse

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.core.management.base import BaseCommand, CommandError

from apps.core.errors import NotFound, PortalError
from apps.core.models import Host
from apps.core.validators import validate_name
from apps.storage import selectors, services
from apps.storage.forms import DefaultsForm, ExpandForm, PoolLimitForm, QuotaForm, ThresholdForm, validated
from apps.storage.models import BreachAction
from apps.storage.quota_rules import fmt_bytes
from apps.vms.services import vm_for_actor

ACTIONS = [value for value, _label in BreachAction.choices]
EXIT_OVER_LIMIT, EXIT_UNREADABLE = 1, 2

MODEL = """\
The quota model: a VM's hard limit caps the provisioned (virtual) size of its disks: a new
volume or a resize beyond it is refused, and `set` refuses a limit below what is already
provisioned. The alert threshold watches allocation (what the disks and their snapshots
really take) against the same limit: an alert at the threshold, the breach action (alert,
refuse growth, or suspend the VM) once allocation reaches the limit. VMs without their own
values use the portal-wide defaults (`defaults`), marked "(default)" by `list`.

`check` measures now: as the system, every VM and pool of every host (what Celery beat
runs); with --as USER, only what that user may change, acting and audited as them. It
exits 1 when a VM is over its hard limit and 2 when a host could not be read."""


class Command(BaseCommand):
    help = "Per-VM storage quotas, pool limits and defaults.\n\n" + MODEL

    def create_parser(self, prog_name, subcommand, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the model's paragraphs
        return parser

    def add_arguments(self, parser):
        parser.add_argument("--as", dest="as_user", metavar="USER", help="act as this portal user (default: system)")
        parser.add_argument("--host", default=settings.DEFAULT_HOST_NAME, help="host of the VM (default: %(default)s)")
        sub = parser.add_subparsers(dest="verb", required=True)
        p = sub.add_parser("set", help="set the hard limit of VM (caps its provisioned size) to GiB")
        p.add_argument("vm")
        p.add_argument("gib")
        p.add_argument("--confirm", action="store_true", help="allow a limit below the current allocation")
        p = sub.add_parser("get", help="show the quota and usage of VM")
        p.add_argument("vm")
        p = sub.add_parser("expand", help="raise the hard limit of VM to GiB (or --by GiB); never lowers it")
        p.add_argument("vm")
        p.add_argument("gib", nargs="?", help="the new hard limit in GiB")
        p.add_argument("--by", metavar="GIB", help="add this many GiB to the hard limit instead")
        p = sub.add_parser("alert-threshold", help="alert when VM's allocation reaches PERCENT of its quota")
        p.add_argument("vm")
        p.add_argument("percent")
        p = sub.add_parser("breach-action", help="what happens when VM's allocation reaches its quota")
        p.add_argument("vm")
        p.add_argument("action", choices=ACTIONS)
        p = sub.add_parser("trend", help="usage history of VM (or --pool POOL) and days until its limit")
        p.add_argument("vm", nargs="?")
        p.add_argument("--pool", help="a storage pool of --host instead of a VM")
        p = sub.add_parser("pool-limit", help="show or set the limits of POOL on --host")
        p.add_argument("pool")
        p.add_argument("--max-overcommit", metavar="RATIO", help='provisioned / capacity, e.g. 1.5 ("default")')
        p.add_argument("--reserve", metavar="PERCENT", help='free space kept in reserve ("default")')
        p = sub.add_parser("defaults", help="show or set the defaults of VMs and pools without their own")
        p.add_argument("--quota", metavar="GIB", help="default hard limit")
        p.add_argument("--alert", metavar="PERCENT", help="default alert threshold")
        p.add_argument("--action", choices=ACTIONS, help="default breach action")
        p.add_argument("--max-overcommit", metavar="RATIO", help="default pool maximum overcommit")
        p.add_argument("--reserve", metavar="PERCENT", help="default pool reserve")
        sub.add_parser("list", help="every VM with its quota, breach action and usage")
        sub.add_parser(
            "check", help="measure now; exit 1 when a VM is over its hard limit, 2 when a host is unreadable"
        )

    def handle(self, *args, as_user=None, host=None, verb=None, **options):
        actor = self._actor(as_user)
        try:
            if verb == "list":
                return self._list(actor)
            if verb == "check":
                return self._check(actor)
            if verb == "defaults":
                return self._defaults(actor, options)
            if verb == "pool-limit":
                return self._pool_limit(actor, self._host(host), options)
            if verb == "trend":
                return self._trend(actor, host, options)
            vm = vm_for_actor(actor, host, options["vm"])  # "not found" outside the scope, as on the pages
            if verb == "set":
                data = {"limit_gib": options["gib"], "confirm": "yes" if options["confirm"] else ""}
                form = self._form(QuotaForm(data, versioned=False), actor, "storage.quota.set", vm)
                services.quota_set(actor=actor, vm=vm, **form.service_args())
            elif verb == "expand":  # "expand VM 100": the new hard limit is 100 GiB (the seed's "Expand to")
                form = self._form(ExpandForm({"to_gib": options["gib"], "by_gib": options["by"]}), actor,
                                  "storage.quota.expand", vm)  # fmt: skip
                services.quota_expand(actor=actor, vm=vm, **form.service_args())
            elif verb == "alert-threshold":
                form = self._form(ThresholdForm({"percent": options["percent"]}), actor, "storage.quota.threshold", vm)
                services.quota_set_threshold(actor=actor, vm=vm, **form.service_args())
            elif verb == "breach-action":
                form = self._form(QuotaForm({"breach_action": options["action"]}, versioned=False), actor,
                                  "storage.quota.set", vm)  # fmt: skip
                services.quota_set(actor=actor, vm=vm, **form.service_args())
            self._show(services.quota_get(actor=actor, vm=vm))
        except PermissionDenied as exc:
            raise CommandError(str(exc))
        except PortalError as exc:
            raise CommandError(exc.message)

    @staticmethod
    def _form(form, actor, action: str, target, perm: str = "storage.change", obj=None):
        """The form, valid, or the refusal audited (as the page would) and raised."""
        return validated(form, actor=actor, action=action, target=target, perm=perm, obj=obj)

    def _actor(self, username):
        if not username:
            return None  # the system user: audited as "system"
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None:
            raise CommandError(f"No active portal user named {username!r}.")
        return user

    def _host(self, host_name: str) -> Host:
        host = Host.objects.filter(name=host_name).first()
        if host is None:
            raise NotFound(f"No host named {host_name!r}.")
        return host

    def _show(self, q):
        quota = q.quota
        provisioned_pct = round(100 * q.provisioned / quota.limit_bytes) if quota.limit_bytes else 0
        self.stdout.write(
            f"{q.vm.name}: quota {fmt_bytes(quota.limit_bytes)}{'' if quota.own_limit else ' (default)'}, "
            f"alert at {quota.alert_percent}%, on breach {quota.breach_action}; "
            f"allocated {fmt_bytes(q.allocation)} ({q.percent}%), provisioned {fmt_bytes(q.provisioned)} "
            f"({provisioned_pct}% of the hard limit)"
        )

    def _list(self, actor):
        from apps.vms.collector import host_collect

        for host in Host.objects.all():  # a command may read libvirt: list what the hosts hold now
            host_collect(host)
        hosts = selectors.overview_for(actor)
        self.stdout.write(
            f"{'HOST':12} {'VM':24} {'QUOTA':>20} {'ALERT':>5} {'ON BREACH':9} "
            f"{'PROVISIONED':>12} {'ALLOCATED':>12} {'USE':>5}"
        )
        for h in hosts:
            if h.error:
                self.stderr.write(f"{h.host.name}: {h.error}")
            for r in h.vms:
                quota = fmt_bytes(r.quota.limit_bytes) + ("" if r.quota.own_limit else " (default)")
                self.stdout.write(
                    f"{h.host.name:12} {r.name:24} {quota:>20} {r.quota.alert_percent:>4}% "
                    f"{r.quota.breach_action:9} {fmt_bytes(r.provisioned):>12} "
                    f"{fmt_bytes(r.allocation):>12} {r.percent:>4}%"
                )

    def _check(self, actor):
        report = services.storage_check(actor=actor)
        self.stdout.write(f"checked {report.vms} VMs and {report.pools} pools")
        for prefix, lines in (
            ("alert", report.raised),
            ("below the limit again", report.lowered),
            ("cleared", report.cleared),
            ("no longer alerting", report.eased),
            ("suspended", report.suspended),
            ("resumed", report.resumed),
        ):
            for line in lines:
                self.stdout.write(f"{prefix}: {line}")
        for line in report.errors:
            self.stderr.write(f"error: {line}")
        for line in report.over_limit:
            self.stderr.write(f"over hard limit: {line}")
        for line in report.unreadable:
            self.stderr.write(f"host unreadable: {line}")
        problems = []
        if report.over_limit:
            problems.append(f"{len(report.over_limit)} VM(s) over their hard limit")
        if report.unreadable:
            problems.append(f"{len(report.unreadable)} host(s) could not be read")
        if problems:
            code = EXIT_UNREADABLE if report.unreadable else EXIT_OVER_LIMIT
            raise CommandError("; ".join(problems), returncode=code)

    def _trend(self, actor, host_name, options):
        if options["pool"]:
            validate_name(options["pool"], "pool name")
            what, t = f"pool {options['pool']}", selectors.pool_trend(actor, self._host(host_name), options["pool"])
        elif options["vm"]:
            vm = vm_for_actor(actor, host_name, options["vm"])
            what, t = vm.name, selectors.vm_trend(actor, vm)
        else:
            raise CommandError("Name a VM, or give --pool POOL.")
        limit = "capacity" if options["pool"] else "quota"
        if not t.points:
            self.stdout.write(f"{what}: no usage samples yet (the periodic check records them).")
            return
        first, last = t.points[0], t.points[-1]
        self.stdout.write(
            f"{what}: {len(t.points)} samples since {first[0]:%Y-%m-%d %H:%M}; "
            f"now {fmt_bytes(last[1])} of its {limit} of {fmt_bytes(t.limit)}"
        )
        growth = "no measurable growth" if t.bytes_per_day is None else f"growth {fmt_bytes(t.bytes_per_day)}/day"
        if t.days_left is None:
            outlook = f"no growth toward the {limit}"
        elif t.days_left == 0:
            outlook = f"the {limit} is reached"
        else:
            outlook = f"full in about {t.days_left:.0f} days"
        self.stdout.write(f"{growth}; {outlook}")

    def _pool_limit(self, actor, host: Host, options):
        pool = options["pool"]
        row, effective = selectors.pool_limits_for(actor, host, pool)
        changing = options["max_overcommit"] is not None or options["reserve"] is not None
        if changing:

            def value(given, own):
                if given is None:  # not given: keep the pool's own value (or the default)
                    return "" if own is None else str(own)
                return "" if given.strip().lower() == "default" else given

            data = {"max_overcommit": value(options["max_overcommit"], getattr(row, "max_overcommit", None)),
                    "reserve_percent": value(options["reserve"], getattr(row, "reserve_percent", None))}  # fmt: skip
            target = ("pool", f"{host.name}/{pool}", pool)
            form = self._form(PoolLimitForm(data), actor, "storage.pool.limit", target, "storage.settings", host)
            services.pool_limit_set(actor=actor, host=host, pool=pool, **form.service_args())
            row, effective = selectors.pool_limits_for(actor, host, pool)

        def mark(own):
            return "" if own is not None else " (default)"

        self.stdout.write(
            f"pool {pool} on {host.name}: maximum overcommit {effective.max_overcommit}x"
            f"{mark(getattr(row, 'max_overcommit', None))}, reserve {effective.reserve_percent}%"
            f"{mark(getattr(row, 'reserve_percent', None))}"
        )

    def _defaults(self, actor, options):
        d = selectors.defaults_for(actor)
        given = {k: options[k] for k in ("quota", "alert", "action", "max_overcommit", "reserve")}
        if any(v is not None for v in given.values()):

            def pick(key, current):
                return current if given[key] is None else given[key]

            data = {"quota_gib": pick("quota", f"{d.quota_bytes / (1 << 30):g}"),
                    "alert_percent": pick("alert", d.alert_percent), "breach_action": pick("action", d.breach_action),
                    "max_overcommit": pick("max_overcommit", d.max_overcommit),
                    "reserve_percent": pick("reserve", d.reserve_percent), "version": d.version}  # fmt: skip
            target = ("storagedefaults", "1", "storage defaults")
            form = self._form(DefaultsForm(data), actor, "storage.settings.update", target, "storage.settings")
            d = services.defaults_update(actor=actor, **form.service_args())
        self.stdout.write(
            f"defaults: quota {fmt_bytes(d.quota_bytes)}, alert at {d.alert_percent}%, on breach {d.breach_action}; "
            f"pools: maximum overcommit {d.max_overcommit}x, reserve {d.reserve_percent}%"
        )
