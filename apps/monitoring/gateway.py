"""The outside world of notifications: an HTTP POST (webhooks, Alertmanager's API) and mail
(Django's SMTP backend). Plain values in, GatewayError out; never logs a secret."""

from __future__ import annotations

import urllib.error
import urllib.request

from django.core.mail import send_mail

from apps.core.errors import GatewayError, InvalidInput


def post_json(url: str, body: bytes, *, headers: dict[str, str], timeout: float) -> int:
    """POST `body` (JSON) to an http(s) URL; returns the status. Any non-2xx answer,
    refusal or timeout is a GatewayError naming the URL's host, not its query."""
    if not url.startswith(("http://", "https://")):
        raise InvalidInput("A notification URL must be an http:// or https:// URL.")
    where = urllib.request.urlparse(url).netloc
    request = urllib.request.Request(  # noqa: S310 (scheme checked above)
        url, data=body, method="POST", headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            response.read(65536)
            return response.status
    except urllib.error.HTTPError as exc:
        raise GatewayError(f"{where} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise GatewayError(f"{where} could not be reached: {reason}") from None


def send_email(subject: str, body: str, to: list[str]) -> None:
    try:
        send_mail(subject, body, None, to)
    except Exception as exc:  # smtplib and socket errors come in many types  # noqa: BLE001
        raise GatewayError(f"the mail server refused or could not be reached: {type(exc).__name__}: {exc}") from None
