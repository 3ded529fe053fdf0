from django.apps import AppConfig


class StorageConfig(AppConfig):
    name = "apps.storage"
    label = "storage"

    def ready(self):
        from apps.vms import collector

        from . import services  # noqa: F401  (registers the job handlers)
        from .services.collect import storage_collect

        if storage_collect not in collector.AFTER_COLLECT:
            collector.AFTER_COLLECT.append(storage_collect)
