from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from apps.core.errors import PortalError
from apps.core.services import host_create


class Command(BaseCommand):
    help = "Add a hypervisor host (checks that the portal can connect to it). Acts as --as USER, an admin."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("uri", help="libvirt URI, e.g. qemu+ssh://root@hv2/system")
        parser.add_argument("--description", default="")
        parser.add_argument("--as", dest="actor", required=True, help="the admin on whose behalf the host is added")

    def handle(self, *args, **options):
        actor = get_user_model().objects.filter(username=options["actor"], is_active=True).first()
        if actor is None:
            raise CommandError(f"No active user {options['actor']!r}.")
        try:
            host = host_create(
                actor=actor, name=options["name"], uri=options["uri"], description=options["description"]
            )
        except PortalError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(self.style.SUCCESS(f"Host {host.name} added ({host.uri})."))
