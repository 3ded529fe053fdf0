from django.contrib.auth.views import login_not_required
from django.shortcuts import render


@login_not_required
def forbidden(request, exception=None):
    return render(
        request, "error.html", {"status": 403, "message": str(exception) or "You may not do this."}, status=403
    )


@login_not_required
def not_found(request, exception=None):
    return render(
        request, "error.html", {"status": 404, "message": "There is nothing here, or you may not see it."}, status=404
    )
