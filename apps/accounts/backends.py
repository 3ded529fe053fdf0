"""Django's model backend, with the signed-in user of every request read as a prepared read
(apps/core/prepared.py): the same row and the same checks, without the ORM building the
query again on each request."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import ValidationError

from apps.core.prepared import Prepared


def _user_by_pk(shape, p):
    return get_user_model()._default_manager.filter(pk=p["pk"]).values()


_USER_READ = Prepared(get_user_model(), _user_by_pk)


class PortalModelBackend(ModelBackend):
    def get_user(self, user_id):
        try:
            pk = get_user_model()._meta.pk.to_python(user_id)
        except (ValidationError, TypeError, ValueError):  # a session with a malformed id: nobody
            return None
        user = _USER_READ.first((), {"pk": pk})
        return user if self.user_can_authenticate(user) else None
