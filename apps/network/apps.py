from django.apps import AppConfig


class NetworkConfig(AppConfig):
    name = "apps.network"
    label = "network"

    def ready(self):
        from apps.vms import collector

        from . import services  # noqa: F401  (registers the job handlers)
        from .services.firewall import firewall_on_domain_event

        if firewall_on_domain_event not in collector.AFTER_DOMAIN_REFRESH:  # a VM started outside: its rules at once
            collector.AFTER_DOMAIN_REFRESH.append(firewall_on_domain_event)
