from apps.core.views_util import permission_required, render_page

from . import services


@permission_required("storage.view")
def pool_list(request):
    return render_page(request, "storage/pools.html", {"hosts": services.pools_for(request.user)})
