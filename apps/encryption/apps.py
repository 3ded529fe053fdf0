from django.apps import AppConfig


class EncryptionConfig(AppConfig):
    name = "apps.encryption"
    label = "encryption"

    def ready(self):
        from . import checks, services  # noqa: F401  (registers the system check and the job handlers)
