"""Serve the VM console proxy (apps/vms/console_proxy.py) on loopback or a unix socket."""

import asyncio
import ipaddress

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.vms import console_proxy


class Command(BaseCommand):
    help = "Serve the websocket proxy that joins browsers' consoles to VMs' VNC unix sockets."

    def add_arguments(self, parser):
        parser.add_argument("--bind", default=settings.CONSOLE_PROXY_BIND, help="loopback address (127.0.0.1, ::1)")
        parser.add_argument("--port", type=int, default=settings.CONSOLE_PROXY_PORT)
        parser.add_argument("--unix", default="", help="listen on this unix socket instead (for a reverse proxy)")

    def handle(self, *args, bind, port, unix, **options):
        if not unix:
            try:
                loopback = ipaddress.ip_address(bind).is_loopback
            except ValueError:
                loopback = bind == "localhost"
            if not loopback:
                raise CommandError(f"The console proxy listens on loopback only (127.0.0.1, ::1), not {bind}: "
                                   "put a TLS reverse proxy in front of it.")  # fmt: skip
        where = unix or f"{bind}:{port}"

        def ready(_server):
            self.stdout.write(f"console proxy listening on {where}", ending="\n")
            self.stdout.flush()

        try:
            asyncio.run(console_proxy.serve(host=bind, port=port, unix=unix or None, ready=ready))
        except KeyboardInterrupt:
            pass
