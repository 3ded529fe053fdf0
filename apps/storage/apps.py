from django.apps import AppConfig


class StorageConfig(AppConfig):
    name = "apps.storage"
    label = "storage"

    def ready(self):
        from . import services  # noqa: F401  (registers the job handlers)
