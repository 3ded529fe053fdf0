from django.apps import AppConfig


class EncryptionConfig(AppConfig):
    name = "apps.encryption"
    label = "encryption"

    def ready(self):
        from . import services  # noqa: F401  (registers the job handlers)
