"""The project's own errors. Their message is written for the person at the browser or the
terminal; one place (PortalErrorMiddleware) turns them into a page or a toast."""


class PortalError(Exception):
    """An error whose message a person can read and act on."""

    status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidInput(PortalError):
    status = 400


class NotFound(PortalError):
    status = 404


class Conflict(PortalError):
    """The object is not in a state that allows the action (e.g. resume a running VM)."""

    status = 409


class GatewayError(PortalError):
    """The outside world (libvirt, a command) failed."""

    status = 502


class GatewayTimeout(GatewayError):
    status = 504
