from django.conf import settings
from django.db import transaction

from apps.audit.services import audited

from .errors import Conflict, InvalidInput
from .gateways import libvirt as gw
from .models import Host
from .validators import validate_name


def host_default() -> Host:
    """The host named by DEFAULT_HOST_NAME/LIBVIRT_URI, created on first use."""
    host, _ = Host.objects.get_or_create(
        name=settings.DEFAULT_HOST_NAME,
        defaults={"uri": settings.LIBVIRT_URI, "description": "Default host (LIBVIRT_URI)"},
    )
    return host


def host_create(*, actor, name: str, uri: str, description: str = "", check: bool = True) -> Host:
    """Add a hypervisor host. With check=True the portal connects to it first."""
    with audited(actor=actor, action="core.host.create", target=("host", "", name), perm="accounts.manage",
                 params={"uri": uri}) as ev:  # fmt: skip
        validate_name(name, "host name")
        if not uri or any(c.isspace() for c in uri) or "://" not in uri:
            raise InvalidInput(f"Invalid libvirt URI {uri!r}: expected e.g. qemu:///system or qemu+ssh://host/system.")
        if Host.objects.filter(name=name).exists():
            raise Conflict(f"A host named {name!r} already exists.")
        same = Host.objects.filter(uri=uri).values_list("name", flat=True).first()
        if same is not None:  # one libvirt daemon, one host: its VMs would be read and listed twice
            raise Conflict(f"Host {same!r} already reads {uri}: a libvirt daemon is added once.")
        if check:
            gw.host_version(uri)
        with transaction.atomic():
            host = Host.objects.create(name=name, uri=uri, description=description)
            ev.target = host
    if check:  # its first read now, so its VMs show at once; the collector keeps them current
        from apps.vms.collector import host_collect

        host_collect(host)
    return host
