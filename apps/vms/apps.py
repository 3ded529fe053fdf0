from django.apps import AppConfig


class VmsConfig(AppConfig):
    name = "apps.vms"
    label = "vms"

    def ready(self):
        from . import collector, services  # noqa: F401  (registers the job handlers)
        from .history import revisions_collect

        if revisions_collect not in collector.AFTER_COLLECT:  # configuration history: changes made outside
            collector.AFTER_COLLECT.append(revisions_collect)
