from apps.accounts.permissions import authorize, has_perm
from apps.core.gateways import libvirt as gw
from apps.core.models import Host


def networks_for(user) -> list[tuple[Host, list[gw.NetworkInfo]]]:
    authorize(user, "network.view", anywhere=True, action="network.networks.view")
    return [(host, gw.network_list(host.uri)) for host in Host.objects.all() if has_perm(user, "network.view", host)]
