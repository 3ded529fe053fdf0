from django.conf import settings

from .models import Host


def host_default() -> Host:
    """The host named by DEFAULT_HOST_NAME/LIBVIRT_URI, created on first use."""
    host, _ = Host.objects.get_or_create(
        name=settings.DEFAULT_HOST_NAME,
        defaults={"uri": settings.LIBVIRT_URI, "description": "Default host (LIBVIRT_URI)"},
    )
    return host
