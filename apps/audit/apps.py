from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "apps.audit"
    label = "audit"

    def ready(self):
        from . import auth_events  # noqa: F401  (login, logout and failed-login events)
