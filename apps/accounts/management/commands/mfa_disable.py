from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from apps.accounts import mfa
from apps.core.errors import PortalError


class Command(BaseCommand):
    help = (
        "Turn a user's two-factor sign-in off (their authenticator and recovery codes stop "
        "working): the way back in when the last admin lost both. Audited as auth.mfa.disable."
    )

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--as", dest="as_user", metavar="USER", help="act as this portal user (default: system)")

    def handle(self, *args, **options):
        users = get_user_model().objects
        user = users.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"No user {options['username']!r}.")
        actor = None
        if options["as_user"]:
            actor = users.filter(username=options["as_user"], is_active=True).first()
            if actor is None:
                raise CommandError(f"No active user {options['as_user']!r}.")
        try:
            mfa.mfa_disable(actor=actor, user=user)
        except PortalError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(self.style.SUCCESS(f"Two-factor sign-in is off for {user.username}; they enrol again."))
