from django.apps import AppConfig


class NetworkConfig(AppConfig):
    name = "apps.network"
    label = "network"

    def ready(self):
        from apps.vms import collector

        from . import services  # noqa: F401  (registers the job handlers)
        from .services.nics import nics_sync

        if nics_sync not in collector.AFTER_COLLECT:  # the collector keeps the VMs' NICs (MACs) current
            collector.AFTER_COLLECT.append(nics_sync)
