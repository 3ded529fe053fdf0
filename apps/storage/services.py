from apps.accounts.permissions import has_perm, require
from apps.core.gateways import libvirt_gw as gw
from apps.core.models import Host


def pools_for(user) -> list[tuple[Host, list[gw.PoolInfo]]]:
    """Storage pools of every host the user may see, read from libvirt in bulk."""
    require(user, "storage.view", anywhere=True, action="storage.pools.view")
    return [(host, gw.list_pools(host.uri)) for host in Host.objects.all() if has_perm(user, "storage.view", host)]
