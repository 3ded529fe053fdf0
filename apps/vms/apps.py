from django.apps import AppConfig


class VmsConfig(AppConfig):
    name = "apps.vms"
    label = "vms"

    def ready(self):
        from . import services  # noqa: F401  (registers the job handlers)
