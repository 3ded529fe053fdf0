from django.core.management.base import BaseCommand, CommandError

from apps.audit import chain


class Command(BaseCommand):
    help = (
        "Verify the audit log's keyed hash chain (and the anchor written outside the database); "
        "name the first event that was altered or removed."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--incremental",
            action="store_true",
            help="verify only from the last verified event on, as the beat job does (and move its checkpoint)",
        )

    def handle(self, *args, **options):
        if options["incremental"]:
            result, info = chain.verify_incremental()
            scope = f"events #{info['from_id'] + 1} to #{result.last_id}" if result.intact else ""
        else:
            result = chain.verify_full()
            scope = "the whole log"
        if not result.intact:
            where = f"event #{result.bad_id}" if result.bad_id else "the end of the log"
            raise CommandError(
                f"Audit chain broken at {where}: {result.reason}. {result.checked} events before it are intact."
            )
        anchor = " and matches its anchor" if chain.anchors_enabled() and chain.read_anchor() else ""
        self.stdout.write(
            self.style.SUCCESS(f"Audit chain intact{anchor}: {result.checked} events verified ({scope}).")
        )
