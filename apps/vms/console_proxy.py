"""The console proxy: a websocket server (python `websockets`) on loopback that joins a
browser's noVNC to a VM's VNC unix socket, one session per one-time token.

`GET /console?token=...` (websocket upgrade): the token is redeemed through
console.console_redeem (signature, expiry, single use, permission, audit); then bytes are
relayed both ways unchanged (RFB: the VNC socket needs no password, the token was the
authentication) until either side closes, CONSOLE_MAX_SECONDS pass, or the user loses access
(disabled, role revoked: checked every RECHECK_SECONDS); the end is audited with the reason.
Run by `python manage.py console_proxy` (started by `make run`). Database work runs in
threads (Django's ORM is synchronous); the relay itself is asyncio."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import parse_qs, urlsplit

from django.conf import settings
from django.db import close_old_connections, connections
from django.http.request import split_domain_port, validate_host

from . import console

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
PATH = "/console"
RECHECK_SECONDS = 10.0  # how often an open session's user and permission are checked again


def _db(fn, *args, **kwargs):
    """Run ORM work in a worker thread, on a connection of its own closed afterwards (two
    short calls per session; no connection is left open in the executor's threads)."""

    def run():
        close_old_connections()
        try:
            return fn(*args, **kwargs)
        finally:
            connections.close_all()

    return asyncio.to_thread(run)


def _origin_allowed(origin: str | None) -> bool:
    """A browser's Origin must be one of ALLOWED_HOSTS (clients that send none, like the
    tests' and command-line ones, rely on the token alone)."""
    if not origin:
        return True
    host = urlsplit(origin).netloc
    domain, _port = split_domain_port(host)
    return bool(domain) and validate_host(domain, settings.ALLOWED_HOSTS)


async def _relay(ws, grant: console.ConsoleGrant) -> tuple[int, int, str]:
    reader, writer = await asyncio.open_unix_connection(grant.socket)
    counts = {"guest": 0, "browser": 0}

    async def to_guest():
        async for message in ws:
            if isinstance(message, str):  # RFB is binary; text frames are not ours
                continue
            counts["guest"] += len(message)
            writer.write(message)
            await writer.drain()
        return "browser closed"

    async def to_browser():
        while True:
            data = await reader.read(CHUNK)
            if not data:
                return "console closed"
            counts["browser"] += len(data)
            await ws.send(data)

    async def still_allowed():
        while True:
            await asyncio.sleep(RECHECK_SECONDS)
            why = await _db(console.console_still_allowed, grant)
            if why:
                return why

    tasks = [asyncio.create_task(to_guest()), asyncio.create_task(to_browser()), asyncio.create_task(still_allowed())]
    try:
        done, _pending = await asyncio.wait(tasks, timeout=settings.CONSOLE_MAX_SECONDS,
                                            return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        if not done:
            reason = "time limit"
        else:
            task = done.pop()
            exc = task.exception()
            reason = task.result() if exc is None else f"closed: {type(exc).__name__}"
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        writer.close()
    return counts["guest"], counts["browser"], reason


async def handle(ws) -> None:
    request = ws.request
    url = urlsplit(request.path)
    source_ip = request.headers.get("X-Real-IP") or (ws.remote_address[0] if ws.remote_address else None)
    if url.path.rstrip("/") != PATH:
        await ws.close(1008, "unknown path")
        return
    if not _origin_allowed(request.headers.get("Origin")):
        await ws.close(1008, "origin not allowed")
        return
    token = (parse_qs(url.query).get("token") or [""])[0]
    try:
        grant = await _db(console.console_redeem, token, source_ip=source_ip)
    except console.ConsoleRefused as exc:
        log.info("console refused from %s: %s", source_ip, exc.message)
        await ws.close(1008, exc.message[:120])
        return
    log.info("console session %s of %s opened from %s", grant.session_id, grant.vm_name, source_ip)
    to_guest = to_browser = 0
    reason = "error"
    try:
        to_guest, to_browser, reason = await _relay(ws, grant)
    except OSError as exc:
        reason = f"cannot reach the VNC socket: {exc.strerror or exc}"
        log.warning("console %s: %s", grant.vm_name, reason)
    finally:
        log.info("console session %s of %s ended: %s", grant.session_id, grant.vm_name, reason)
        await _db(console.console_end, grant, to_guest=to_guest, to_browser=to_browser, reason=reason)
        await ws.close()


async def serve(*, host: str | None = None, port: int | None = None, unix: str | None = None, ready=None,
                stop: asyncio.Event | None = None) -> None:  # fmt: skip
    """Serve until `stop` is set (forever without one). `ready(server)` is called once listening."""
    from websockets.asyncio.server import serve as ws_serve
    from websockets.asyncio.server import unix_serve

    kwargs = {"max_size": 4 * 1024 * 1024, "subprotocols": ["binary"], "select_subprotocol": _subprotocol,
              "server_header": None}  # fmt: skip
    if unix:
        ctx = unix_serve(handle, unix, **kwargs)
    else:
        port = settings.CONSOLE_PROXY_PORT if port is None else port  # 0: any free port (tests)
        ctx = ws_serve(handle, host or settings.CONSOLE_PROXY_BIND, port, **kwargs)
    async with ctx as server:
        if ready is not None:
            ready(server)
        await (stop.wait() if stop is not None else asyncio.Future())


def _subprotocol(_connection, offered):
    """noVNC offers none by default (older clients "binary"): accept either."""
    return "binary" if "binary" in offered else None
