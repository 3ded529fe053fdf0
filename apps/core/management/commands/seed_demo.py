"""Seed a demo host: a dir storage pool in the image directory (PORTAL_IMAGE_DIR/demo, where
QEMU can reach it), two isolated libvirt networks, three small VMs (one running) and one user
of every role. Idempotent: reuses what exists, and says so when what exists is elsewhere."""

import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from apps.accounts.models import Role, RoleAssignment
from apps.audit.services import record
from apps.core.checks import qemu_blocked
from apps.core.errors import Conflict
from apps.core.gateways import libvirt as gw
from apps.core.gateways.libvirt import domain_xml
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
        self.notices: list[str] = []
        host = host_default()
        pool_dir = self._demo_pool(host.uri)
        for net, bridge in NETWORKS.items():
            gw.network_ensure_isolated(host.uri, net, bridge)
        existing = {d.name: d for d in gw.domain_list(host.uri)}
        for name, _zone, network, running in VMS:
            uuid = None
            domain = existing.get(name)
            if domain is not None and not self._on_pool(domain, pool_dir):
                uuid = self._move_off_old_disk(host.uri, domain, pool_dir)
                if uuid is None:
                    continue
            if domain is None or uuid:
                vol = gw.volume_find(host.uri, POOL, f"{name}.qcow2") or gw.volume_create(
                    host.uri, POOL, f"{name}.qcow2", 1 << 30
                )
                xml = domain_xml(
                    name=name, memory_mib=64, vcpus=1, disk_paths=[vol.path], networks=[network], uuid=uuid
                )
                gw.domain_define(host.uri, xml)
            state = gw.domain_state(host.uri, name)
            try:
                if running and state == "shut off":
                    gw.domain_start(host.uri, name)
                elif running and state == "paused":
                    gw.domain_resume(host.uri, name)
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
            params={
                "pool": POOL,
                "pool_path": str(pool_dir),
                "networks": list(NETWORKS),
                "vms": [v[0] for v in VMS],
                "users": USERS,
                "notices": self.notices,
            },
        )
        self.stdout.write(
            self.style.SUCCESS(
                f"Demo host {host.name} ({host.uri}) ready: pool {POOL}, "
                f"networks {', '.join(NETWORKS)}, VMs {', '.join(v[0] for v in VMS)}."
            )
        )
        self.stdout.write(f"Demo users (also in {Path(settings.VAR_DIR) / 'demo-credentials.txt'}, mode 0600):")
        for user, password in creds.items():
            self.stdout.write(f"  {user:10s} {password}")
        if "admin" in creds:  # admins must use two-factor sign-in: say so before the browser does
            self.stdout.write("  (admin enrols two-factor sign-in at its first sign-in: any TOTP app, e.g. Aegis)")

    def _say(self, notice: str) -> None:
        self.notices.append(notice)
        self.stdout.write(self.style.WARNING(notice))

    def _demo_pool(self, uri: str) -> Path:
        """The demo pool's directory, IMAGE_DIR/demo. A pool of that name defined elsewhere
        (by an earlier clone) is reused while it holds images QEMU can reach; else it is
        defined again here, deleting nothing. Either way, say so."""
        wanted = Path(settings.IMAGE_DIR) / "demo"
        pool = next((p for p in gw.pool_list(uri) if p.name == POOL), None)
        if pool is not None and Path(pool.path) != wanted:
            old = Path(pool.path)
            stale = self._why_stale(old)
            if stale is None:
                self._say(
                    f"Demo pool {POOL} is at {old} (defined by an earlier clone), not at {wanted}: reusing it and "
                    f"the demo VMs on it. To move it, run `virsh pool-destroy {POOL}; virsh pool-undefine {POOL}` "
                    "(its files stay) and seed_demo again."
                )
                gw.pool_ensure_dir(uri, POOL, str(old))
                return old
            gw.pool_remove(uri, POOL, delete_volumes=False)
            self._say(f"Demo pool {POOL} was at {old} ({stale}): defined again at {wanted}; nothing was deleted.")
        gw.pool_ensure_dir(uri, POOL, str(wanted))
        return wanted

    @staticmethod
    def _why_stale(old: Path) -> str | None:
        if not old.is_dir():
            return "its directory is gone"
        if not any(old.iterdir()):
            return "it is empty"
        found = qemu_blocked(old)
        if found:
            user, blocked = found
            return f"QEMU ({user}) cannot reach it: {blocked.path} has mode {blocked.mode:04o}"
        return None

    @staticmethod
    def _on_pool(domain, pool_dir: Path) -> bool:
        return all(Path(disk.path).parent == pool_dir for disk in domain.disks)

    def _move_off_old_disk(self, uri: str, domain, pool_dir: Path) -> str | None:
        """A demo VM whose disk is outside the demo pool: define it again (same UUID) on a disk
        in the pool when it is shut off, and return its UUID; leave a running one alone."""
        old = ", ".join(disk.path for disk in domain.disks)
        if domain.state != "shut off":
            self._say(
                f"{domain.name} is {domain.state} on {old}, outside the demo pool {pool_dir}: left as it is; "
                "shut it down and run seed_demo again to move it."
            )
            return None
        gw.domain_undefine(uri, domain.name)
        self._say(f"{domain.name} had its disk at {old}, outside the demo pool: defined again on a disk in {pool_dir}.")
        return domain.uuid

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
