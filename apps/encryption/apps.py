from django.apps import AppConfig


class EncryptionConfig(AppConfig):
    name = "apps.encryption"
    label = "encryption"

    def ready(self):
        from apps.vms import services as vm_services

        from . import checks, services  # noqa: F401  (registers the system check and the job handlers)

        # the portal's own start/stop of a VM opens and closes its encrypted disks
        if services.unlock_hook not in vm_services.BEFORE_START:
            vm_services.BEFORE_START.append(services.unlock_hook)
            vm_services.AFTER_STOP.append(services.lock_hook)
