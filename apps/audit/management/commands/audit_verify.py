from django.core.management.base import BaseCommand, CommandError

from apps.audit.services import verify_chain


class Command(BaseCommand):
    help = "Walk the audit hash chain and name the first event that was altered or removed."

    def handle(self, *args, **options):
        checked, bad, reason = verify_chain()
        if reason:
            where = f"event #{bad.pk} ({bad})" if bad else "the end of the log"
            raise CommandError(f"Audit chain broken at {where}: {reason}. {checked} events before it are intact.")
        self.stdout.write(self.style.SUCCESS(f"Audit chain intact: {checked} events verified."))
