from apps.core.views_util import permission_required, render_page

from . import services


@permission_required("network.view")
def network_list(request):
    return render_page(request, "network/networks.html", {"hosts": services.networks_for(request.user)})
