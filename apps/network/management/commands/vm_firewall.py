"""`manage.py vm_firewall`: the seed's per_vm_firewall.sh, through the same forms, services,
permissions and audit as the pages. The actor is the system user unless --as USER."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.core.management.base import BaseCommand, CommandError

from apps.audit.services import refused
from apps.core.errors import NotFound, PortalError
from apps.core.management.follow import follow_job
from apps.core.models import Host
from apps.core.validators import validate_name
from apps.network import services
from apps.network.forms import ReleaseForm, RuleForm, ZoneEditForm, ZoneForm, errors_text
from apps.network.models import FirewallApply, FirewallRule, Quarantine, Zone
from apps.vms.services import vm_for_actor


class Command(BaseCommand):
    help = ("Per-VM firewall rules, security zones and quarantine. Rules are enforced by `apply`, which "
            "shows the diff and rolls back unless `confirm APPLY_ID` follows within FIREWALL_CONFIRM_SECONDS.")

    def add_arguments(self, parser):
        parser.add_argument("--as", dest="as_user", metavar="USER", help="act as this portal user (default: system)")
        parser.add_argument("--host", default=settings.DEFAULT_HOST_NAME, help="host (default: %(default)s)")
        sub = parser.add_subparsers(dest="verb", required=True)
        p = sub.add_parser("list", help="rules with their counters (of VM, or of every VM and zone)")
        p.add_argument("vm", nargs="?")
        p = sub.add_parser("add", help="add a rule to VM (or --zone NAME for a zone-wide rule)")
        p.add_argument("vm", nargs="?")
        p.add_argument("--zone", help="a zone-wide rule of this zone")
        p.add_argument("--direction", required=True, help="in (to the VM) or out (from it)")
        p.add_argument("--protocol", default="any", help="tcp, udp, icmp, icmpv6 or any")
        p.add_argument("--ports", default="", help="22 or 8000-8080")
        p.add_argument("--remote", default="", help="source (in) or destination (out) CIDR, IPv4 or IPv6")
        p.add_argument("--remote-zone", default="", help="or a zone")
        p.add_argument("--action", required=True, help="accept or drop")
        p.add_argument("--comment", default="")
        p.add_argument("--position", default=None)
        p = sub.add_parser("delete", help="delete rule RULE_ID")
        p.add_argument("rule_id", type=int)
        p = sub.add_parser("apply", help="show the diff and apply; confirm within the time or it rolls back")
        p.add_argument("--diff-only", action="store_true", help="show the diff, apply nothing")
        p = sub.add_parser("confirm", help="confirm apply APPLY_ID")
        p.add_argument("apply_id", type=int)
        sub.add_parser("check", help="roll back overdue applies, detect and repair drift (what beat runs)")
        p = sub.add_parser("move", help="move VM to ZONE (interfaces re-attached, zone label changed)")
        p.add_argument("vm")
        p.add_argument("zone")
        p = sub.add_parser("quarantine", help="isolate VM: links down, traffic dropped, suspended, snapshot (a job, "
                                              "followed until it ends)")  # fmt: skip
        p.add_argument("vm")
        p.add_argument("--reason", default="")
        p.add_argument("--no-wait", action="store_true", help="queue the job and return")
        p.add_argument("--timeout", type=float, default=600, help="seconds to follow the job")
        p = sub.add_parser("release", help="end VM's quarantine (needs --reason)")
        p.add_argument("vm")
        p.add_argument("--reason", required=True)
        z = sub.add_parser("zone", help="zones: list, create, edit, delete").add_subparsers(dest="zone_verb",
                                                                                             required=True)  # fmt: skip
        z.add_parser("list")
        p = z.add_parser("create")
        p.add_argument("name")
        p.add_argument("--kind", required=True, help="secure, untrusted, vpn-only or custom")
        for opt in ("description", "network-name", "bridge", "uplink", "ipv4-cidr", "ipv6-cidr", "policy-in",
                    "policy-out"):  # fmt: skip
            p.add_argument(f"--{opt}", default="")
        p.add_argument("--host-access", action="store_true")
        p.add_argument("--nat", action="store_true", help="masquerade what leaves by the uplink (needs --uplink)")
        p = z.add_parser("edit")
        p.add_argument("name")
        for opt in ("description", "uplink", "policy-in", "policy-out"):
            p.add_argument(f"--{opt}", default=None)
        p.add_argument("--host-access", choices=["yes", "no"], default=None)
        p.add_argument("--nat", choices=["yes", "no"], default=None,
                       help="masquerade what leaves by the uplink (needs --uplink)")
        p.add_argument("--host-services", default=None, help="with host access, only these (comma separated: "
                                                             "ssh,dns,dhcp,ntp,http,https,ping; '' for every one)")
        p = z.add_parser("delete")
        p.add_argument("name")
        p.add_argument("--yes", action="store_true", help="confirm")

    def handle(self, *args, as_user=None, host=None, verb=None, **o):
        actor = self._actor(as_user)
        try:
            host = self._host(host)
            if verb == "zone":
                return self._zone(actor, host, o)
            if verb == "list":
                return self._list(actor, host, o["vm"])
            if verb == "add":
                return self._add(actor, host, o)
            if verb == "delete":
                services.rule_delete(actor=actor, rule_id=o["rule_id"])
                return self.stdout.write(f"rule #{o['rule_id']} deleted; `apply` to enforce")
            if verb == "apply":
                return self._apply(actor, host, o["diff_only"])
            if verb == "confirm":
                a = services.firewall_confirm(actor=actor, host=host, apply_id=o["apply_id"])
                return self.stdout.write(f"apply #{a.pk} confirmed")
            if verb == "check":
                r = services.firewall_check(host)
                return self.stdout.write(f"rolled back: {r.rolled_back or 'none'}; drift: "
                                         f"{'found and repaired' if r.drift else 'none'}")  # fmt: skip
            vm = vm_for_actor(actor, host.name, o["vm"])
            if verb == "move":
                zone = Zone.objects.filter(host=host, name=o["zone"]).first()
                if zone is None:
                    raise NotFound(f"No zone named {o['zone']!r} on {host}.")
                applies = services.vm_zone_move(actor=actor, vm=vm, zone=zone)
                return self.stdout.write(f"{vm.name} moved to zone {zone.name}{services.MOVE_MESSAGES[applies]}")
            if verb == "quarantine":
                job = services.vm_quarantine(actor=actor, vm=vm, reason=o["reason"])
                return self._follow_quarantine(job, o)
            if verb == "release":
                form = ReleaseForm({"reason": o["reason"]})
                if not form.is_valid():
                    refused(actor=actor, action="network.vm.release", target=vm, error=errors_text(form),
                            perm="network.change")  # fmt: skip
                    raise CommandError(errors_text(form))
                return self._steps(services.vm_release(actor=actor, vm=vm, reason=form.cleaned_data["reason"]))
        except PermissionDenied as exc:
            raise CommandError(str(exc))
        except PortalError as exc:
            raise CommandError(exc.message)

    def _actor(self, username):
        if not username:
            return None
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None:
            raise CommandError(f"No active portal user named {username!r}.")
        return user

    def _host(self, name: str) -> Host:
        validate_name(name, "host name")
        host = Host.objects.filter(name=name).first()
        if host is None:
            raise NotFound(f"No host named {name!r}.")
        return host

    def _list(self, actor, host, vm_name):
        rules = FirewallRule.objects.filter(zone__host=host).select_related("vm", "zone", "remote_zone")
        if vm_name:
            rules = rules.filter(vm=vm_for_actor(actor, host.name, vm_name))
        counters = services.firewall_counters(actor=actor, host=host)
        self.stdout.write(f"{'id':>5} {'owner':<24} {'pos':>4} {'dir':<3} {'proto':<6} {'ports':<11} "
                          f"{'remote':<20} {'action':<6} {'packets':>8} {'bytes':>10}  comment")  # fmt: skip
        for r in rules:
            if actor is not None and not _may_view(actor, r):
                continue
            owner = r.vm.name if r.vm_id else f"zone:{r.zone.name}"
            remote = r.remote_cidr or (f"zone:{r.remote_zone.name}" if r.remote_zone_id else "any")
            p, b = counters.get(r.pk, (0, 0))
            self.stdout.write(f"{r.pk:>5} {owner:<24} {r.position:>4} {r.direction:<3} {r.protocol:<6} "
                              f"{r.ports or '-':<11} {remote:<20} {r.action:<6} {p:>8} {b:>10}  {r.comment}")
        for q in Quarantine.objects.filter(vm__host=host, released_at__isnull=True).select_related("vm"):
            self.stdout.write(f"QUARANTINED {q.vm.name} since {q.started_at:%Y-%m-%d %H:%M} ({q.incident_id})")
        last = FirewallApply.objects.filter(host=host).first()
        if last is not None:
            self.stdout.write(f"last apply #{last.pk}: {last.get_state_display()} by {last.actor_name}")

    def _add(self, actor, host, o):
        if bool(o["vm"]) == bool(o["zone"]):
            raise CommandError("Name a VM, or give --zone NAME for a zone-wide rule (not both).")
        vm = vm_for_actor(actor, host.name, o["vm"]) if o["vm"] else None
        zone = None
        if o["zone"]:
            zone = Zone.objects.filter(host=host, name=o["zone"]).first()
            if zone is None:
                raise NotFound(f"No zone named {o['zone']!r} on {host}.")
        form = RuleForm({"direction": o["direction"], "protocol": o["protocol"], "ports": o["ports"],
                         "remote": o["remote"], "remote_zone": o["remote_zone"], "action": o["action"],
                         "comment": o["comment"], "position": o["position"] or ""}, host=host)  # fmt: skip
        if not form.is_valid():
            refused(actor=actor, action="network.rule.add", target=vm or zone, perm="network.change",
                    params={"input": {k: str(v)[:100] for k, v in form.data.items()}}, error=errors_text(form))
            raise CommandError(errors_text(form))
        d = form.cleaned_data
        rule = services.rule_add(actor=actor, vm=vm, zone=zone, direction=d["direction"], protocol=d["protocol"],
                                 action=d["action"], ports=d["ports"], remote_cidr=d["remote"],
                                 remote_zone=d["remote_zone"], comment=d["comment"], position=d["position"])
        self.stdout.write(f"rule #{rule.pk} added; `apply` to enforce")

    def _apply(self, actor, host, diff_only):
        preview = services.firewall_preview(actor=actor, host=host)
        self.stdout.write("\n".join(preview.diff) if preview.diff else "no change against the running ruleset")
        if diff_only:
            return
        a = services.firewall_apply(actor=actor, host=host)
        self.stdout.write(f"apply #{a.pk} loaded: run `vm_firewall confirm {a.pk}` before {a.deadline:%H:%M:%S} "
                          "or it rolls back")  # fmt: skip

    def _follow_quarantine(self, job, o):
        self.stdout.write(f"incident {job.params['incident']}")
        problem = follow_job(self, job, no_wait=o["no_wait"], timeout=o["timeout"])
        if o["no_wait"]:
            return
        q = Quarantine.objects.filter(incident_id=job.params["incident"]).first()
        if q is None:
            raise CommandError(problem or f"job {job.pk} {job.state}")
        self._steps(q)

    def _steps(self, q):
        self.stdout.write(f"incident {q.incident_id}")
        for s in q.steps:
            self.stdout.write(f"  {s['step']:<20} {'held' if s['ok'] else 'FAILED'}  {s['detail']}")
        if not all(s["ok"] for s in q.steps):
            raise CommandError("Some steps failed (see above and the audit log).")

    def _zone(self, actor, host, o):
        verb = o["zone_verb"]
        if verb == "list":
            for z in Zone.objects.filter(host=host):
                self.stdout.write(f"{z.name:<20} {z.kind:<10} bridge={z.bridge} network={z.network_name} "
                                  f"({z.network_state}) in={z.policy_in} out={z.policy_out} "
                                  f"host={_host_access(z)}{' nat' if z.nat else ''} {z.description}")  # fmt: skip
            return
        if verb == "create":
            data = {k.replace("-", "_"): o.get(k.replace("-", "_")) for k in
                    ("description", "network-name", "bridge", "uplink", "ipv4-cidr", "ipv6-cidr", "policy-in",
                     "policy-out")}  # fmt: skip
            data.update(name=o["name"], kind=o["kind"], host_access=o["host_access"], nat=o["nat"])
            form = ZoneForm(data)
            if not form.is_valid():
                refused(actor=actor, action="network.zone.create", target=("zone", "", o["name"][:100]), obj=host,
                        perm="network.zones", error=errors_text(form))  # fmt: skip
                raise CommandError(errors_text(form))
            zone, job = services.zone_create(actor=actor, host=host, **form.cleaned_data)
            return self.stdout.write(f"zone {zone.name} created (bridge {zone.bridge}); job #{job.pk} defines "
                                     f"its network {zone.network_name}")  # fmt: skip
        zone = Zone.objects.filter(host=host, name=o["name"]).first()
        if zone is None:
            raise NotFound(f"No zone named {o['name']!r} on {host}.")
        if verb == "edit":
            data = {"description": zone.description if o["description"] is None else o["description"],
                    "uplink": zone.uplink if o["uplink"] is None else o["uplink"],
                    "policy_in": o["policy_in"] or zone.policy_in, "policy_out": o["policy_out"] or zone.policy_out,
                    "host_access": zone.host_access if o["host_access"] is None else o["host_access"] == "yes",
                    "nat": zone.nat if o["nat"] is None else o["nat"] == "yes",
                    "host_services": zone.host_services if o["host_services"] is None else
                    [s.strip() for s in o["host_services"].split(",") if s.strip()]}  # fmt: skip
            form = ZoneEditForm(data)
            if not form.is_valid():
                refused(actor=actor, action="network.zone.edit", target=zone, obj=host, perm="network.zones",
                        error=errors_text(form))  # fmt: skip
                raise CommandError(errors_text(form))
            services.zone_edit(actor=actor, zone=zone, **form.cleaned_data)
            return self.stdout.write(f"zone {zone.name} changed; `apply` to enforce")
        if verb == "delete":
            job = services.zone_delete(actor=actor, zone=zone, confirmed=o["yes"])
            return self.stdout.write(f"zone {o['name']} deleted; job #{job.pk} removes its network")


def _host_access(zone) -> str:
    if not zone.host_access:
        return "no"
    return ",".join(zone.host_services) if zone.host_services else "yes"


def _may_view(actor, rule) -> bool:
    from apps.accounts.permissions import has_perm

    return has_perm(actor, "network.view", rule.vm if rule.vm_id else rule.zone)
