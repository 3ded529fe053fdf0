"""Seed a demo host: a dir storage pool under var/, two isolated libvirt networks, three
small VMs (one running) and one user of every role. Idempotent: reuses what exists."""

import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from apps.accounts.models import Role, RoleAssignment
from apps.audit.services import record
from apps.core.errors import Conflict
from apps.core.gateways import libvirt_gw as gw
from apps.core.gateways.libvirt_xml import domain_xml
from apps.core.services import host_default
from apps.vms.models import VirtualMachine
from apps.vms.services import inventory_sync

POOL = "portal-demo"
NETWORKS = {"portal-secure": "virbr-psecure", "portal-untrusted": "virbr-puntrust"}
VMS = [  # name, zone, network, running
    ("demo-web", "untrusted", "portal-untrusted", True),
    ("demo-db", "secure", "portal-secure", False),
    ("demo-build", "default", "portal-secure", False),
]
USERS = [r.value for r in Role]


class Command(BaseCommand):
    help = "Create (or reuse) the demo host, pool, networks, VMs and users; print the credentials."

    def handle(self, *args, **options):
        host = host_default()
        pool_dir = Path(settings.VAR_DIR) / "pools" / "demo"
        pool_dir.mkdir(parents=True, exist_ok=True)
        gw.ensure_dir_pool(host.uri, POOL, str(pool_dir))
        for net, bridge in NETWORKS.items():
            gw.ensure_isolated_network(host.uri, net, bridge)
        existing = {d.name for d in gw.list_domains(host.uri)}
        for name, _zone, network, running in VMS:
            if name not in existing:
                vol = gw.find_volume(host.uri, POOL, f"{name}.qcow2") or gw.create_volume(
                    host.uri, POOL, f"{name}.qcow2", 1 << 30
                )
                gw.define_domain(
                    host.uri, domain_xml(name=name, memory_mib=64, vcpus=1, disk_paths=[vol.path], networks=[network])
                )
            state = gw.domain_state(host.uri, name)
            try:
                if running and state == "shut off":
                    gw.start_domain(host.uri, name)
                elif running and state == "paused":
                    gw.resume_domain(host.uri, name)
            except Conflict:  # changed state under us: leave it as it is
                pass
        inventory_sync(host)
        for name, zone, _net, _running in VMS:
            VirtualMachine.objects.filter(host=host, name=name).update(zone=zone)
        creds = self._users()
        record(
            actor=None,
            action="core.demo.seed",
            target=host,
            outcome="success",
            params={"pool": POOL, "networks": list(NETWORKS), "vms": [v[0] for v in VMS], "users": USERS},
        )
        self.stdout.write(
            self.style.SUCCESS(
                f"Demo host {host.name} ({host.uri}) ready: pool {POOL}, "
                f"networks {', '.join(NETWORKS)}, VMs {', '.join(v[0] for v in VMS)}."
            )
        )
        self.stdout.write("Demo users (also in var/demo-credentials.txt, mode 0600):")
        for user, password in creds.items():
            self.stdout.write(f"  {user:10s} {password}")

    def _users(self) -> dict[str, str]:
        path = Path(settings.VAR_DIR) / "demo-credentials.txt"
        creds: dict[str, str] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                user, _, password = line.partition(" ")
                if user and password:
                    creds[user] = password
        User = get_user_model()
        for role in USERS:
            password = creds.get(role) or secrets.token_urlsafe(12)
            creds[role] = password
            user, _ = User.objects.get_or_create(username=role, defaults={"email": f"{role}@example.invalid"})
            user.set_password(password)
            user.is_active = True
            user.save()
            RoleAssignment.objects.get_or_create(
                user=user, role=role, scope="global", host=None, zone="", vm=None, defaults={"created_by": "seed"}
            )
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
        path.write_text("".join(f"{u} {p}\n" for u, p in creds.items()))
        return creds
