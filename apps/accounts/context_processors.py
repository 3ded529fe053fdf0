from .permissions import permissions_of


def permissions(request):
    user = getattr(request, "user", None)
    return {"portal_perms": permissions_of(user) if user is not None else set()}
