"""`manage.py libvirt_hook prepare|release DOMAIN --uuid UUID --vm-id ID`, called by the
libvirt qemu hook (scripts/libvirt-hook-qemu) with the domain XML on stdin: opens the VM's
encrypted disks before libvirt starts it, closes them once it is released. It never calls
libvirt (libvirtd is waiting for the hook). Exit 0: done, or not a VM of this portal;
exit 1 with the reason on stderr: libvirt refuses the start and shows that reason."""

from __future__ import annotations

import sys

from django.core.management.base import BaseCommand, CommandError

from apps.core.errors import PortalError
from apps.encryption.services.hook import hook_prepare, hook_release


class Command(BaseCommand):
    # called by libvirtd while it starts a domain: no system check may run here (the images
    # check asks libvirt, which would wait on the very start that called us)
    requires_system_checks = []
    help = "Called by the libvirt qemu hook: open (prepare) or close (release) a VM's encrypted disks."

    def add_arguments(self, parser):
        parser.add_argument("operation", choices=["prepare", "release"])
        parser.add_argument("domain")
        parser.add_argument("--uuid", required=True)
        parser.add_argument("--vm-id", type=int, default=None)

    def handle(self, *args, **o):
        xml = sys.stdin.read() if not sys.stdin.isatty() else ""
        try:
            if o["operation"] == "prepare":
                opened = hook_prepare(vm_id=o["vm_id"], uuid=o["uuid"], xml=xml)
                if opened:
                    self.stderr.write(f"hypervisor-portal: opened the encrypted disks {', '.join(opened)}")
            else:
                hook_release(vm_id=o["vm_id"], uuid=o["uuid"])
        except PortalError as exc:
            raise CommandError(f"hypervisor-portal refuses to start {o['domain']}: {exc.message}") from None
