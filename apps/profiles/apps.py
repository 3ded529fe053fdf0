from django.apps import AppConfig


class ProfilesConfig(AppConfig):
    name = "apps.profiles"
    label = "profiles"

    def ready(self):
        from . import provision  # noqa: F401  (registers the VM create and delete job handlers)
