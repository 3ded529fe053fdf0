import logging
import signal

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from apps.core.models import Host
from apps.vms.collector import Collector


class Command(BaseCommand):
    help = (
        "Run the state collector: keeps VM state in the database from libvirt's lifecycle events "
        "and a periodic bulk read of every host (COLLECTOR_INTERVAL). Runs until stopped. "
        "--check: exit 1 if a host has not been read for three intervals (a health check)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", action="append", dest="hosts", help="only this host (repeatable)")
        parser.add_argument("--interval", type=int, help="seconds between bulk reads (default COLLECTOR_INTERVAL)")
        parser.add_argument("--check", action="store_true", help="report stale hosts and exit")

    def handle(self, *args, hosts=None, interval=None, check=False, **options):
        if interval is not None and interval < 1:
            raise CommandError("--interval must be at least 1 second.")
        if check:
            return self._check()
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        collector = Collector(interval=interval, host_names=hosts)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: collector.stop.set())
        self.stdout.write(f"collector: watching {', '.join(hosts) if hosts else 'every host'}")
        self.stdout.flush()
        collector.run()
        self.stdout.write("collector: stopped")

    def _check(self):
        from django.conf import settings

        limit = timezone.now() - timezone.timedelta(seconds=3 * settings.COLLECTOR_INTERVAL)
        stale = [h for h in Host.objects.all() if h.unreachable_since or not h.collected_at or h.collected_at < limit]
        for h in stale:
            since = h.unreachable_since or h.collected_at
            self.stdout.write(f"{h.name}: stale since {since or 'never read'} {h.collect_error}".rstrip())
        if stale:
            raise CommandError(f"{len(stale)} host(s) stale")
        self.stdout.write("every host is current")
