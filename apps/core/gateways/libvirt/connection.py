"""Connections: one per process and URI, opened lazily (never at import time), reopened
when libvirtd restarts; libvirt's errors translated into the project's own.

Every libvirt request of the package goes through `call`, which is also the one place a
test counts or forbids libvirt calls. `read_present` is the one loop that leaves out what
other clients removed between listing and reading it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from typing import TypeVar

import libvirt

from apps.core.errors import Conflict, GatewayError, NotFound

T = TypeVar("T")
R = TypeVar("R")

# libvirt prints every error to stderr by default; we report them ourselves.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

_lock = threading.Lock()
_connections: dict[str, libvirt.virConnect] = {}
_owner_pid = os.getpid()

_RECONNECT_CODES = {
    libvirt.VIR_ERR_SYSTEM_ERROR,
    libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_INVALID_CONN,
}
_NOT_FOUND_CODES = {
    libvirt.VIR_ERR_NO_DOMAIN: "VM",
    libvirt.VIR_ERR_NO_STORAGE_POOL: "storage pool",
    libvirt.VIR_ERR_NO_STORAGE_VOL: "volume",
    libvirt.VIR_ERR_NO_NETWORK: "network",
    libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT: "snapshot",
    libvirt.VIR_ERR_NO_SECRET: "secret",
}
_CONFLICT_CODES = {libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_ERR_OPERATION_FAILED}

_VANISHED = {
    libvirt.VIR_ERR_NO_STORAGE_POOL,
    libvirt.VIR_ERR_NO_STORAGE_VOL,
    libvirt.VIR_ERR_NO_DOMAIN,
    libvirt.VIR_ERR_NO_NETWORK,
}


def _translate(exc: libvirt.libvirtError, what: str) -> GatewayError | NotFound | Conflict:
    code = exc.get_error_code()
    message = exc.get_error_message() or str(exc)
    if code in _NOT_FOUND_CODES:
        kind = _NOT_FOUND_CODES[code]
        return NotFound(f"{kind[0].upper()}{kind[1:]} not found: {what}")
    if code in _CONFLICT_CODES:
        return Conflict(f"{what}: {message}")
    return GatewayError(f"libvirt could not complete the request ({what}): {message}")


def _open(uri: str) -> libvirt.virConnect:
    global _owner_pid
    with _lock:
        if os.getpid() != _owner_pid:  # forked (Celery prefork): never share a socket
            _connections.clear()
            _owner_pid = os.getpid()
        conn = _connections.get(uri)
        if conn is not None:
            try:
                if conn.isAlive():
                    return conn
            except libvirt.libvirtError:
                pass
            _connections.pop(uri, None)
        try:
            conn = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            raise GatewayError(f"Cannot connect to the hypervisor at {uri}: {exc.get_error_message()}") from None
        _connections[uri] = conn
        return conn


def _drop(uri: str) -> None:
    with _lock:
        conn = _connections.pop(uri, None)
    if conn is not None:
        try:
            conn.close()
        except libvirt.libvirtError:
            pass


def _alive(conn: libvirt.virConnect) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False


def call(uri: str, what: str, fn: Callable[[libvirt.virConnect], T]) -> T:
    """Run fn(connection); reconnect once if libvirtd went away; translate errors."""
    for attempt in (1, 2):
        conn = _open(uri)
        try:
            return fn(conn)
        except libvirt.libvirtError as exc:
            if attempt == 1 and (exc.get_error_code() in _RECONNECT_CODES or not _alive(conn)):
                _drop(uri)
                continue
            raise _translate(exc, what) from None
    raise AssertionError("unreachable")


def _vanished(exc: libvirt.libvirtError) -> bool:
    """Removed (or its pool stopped) between being listed and being read."""
    return exc.get_error_code() in _VANISHED or (
        exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID and "not active" in (exc.get_error_message() or "")
    )


def read_present(items: Iterable[T], read: Callable[[T], R]) -> list[R]:
    """read(item) for each listed item, leaving out the items that vanished (removed, or
    their pool stopped) between being listed and being read: other clients manage pools,
    volumes, domains and networks too. Any other libvirt error surfaces."""
    result = []
    for item in items:
        try:
            result.append(read(item))
        except libvirt.libvirtError as exc:
            if not _vanished(exc):
                raise
    return result
