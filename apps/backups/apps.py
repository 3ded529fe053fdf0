from django.apps import AppConfig


class BackupsConfig(AppConfig):
    name = "apps.backups"
    label = "backups"

    def ready(self):
        from . import services  # noqa: F401  (registers the job handlers)
