import uuid

from . import context


def client_ip(request) -> str | None:
    # REMOTE_ADDR only: a client-supplied X-Forwarded-For must not write the audit log.
    return request.META.get("REMOTE_ADDR") or None


class RequestContextMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        rid = uuid.uuid4().hex
        request.request_id = rid
        with context.bound(client_ip(request), rid):
            response = self.get_response(request)
        response["X-Request-ID"] = rid
        return response
