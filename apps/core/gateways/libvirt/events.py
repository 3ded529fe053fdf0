"""Domain lifecycle events, for the state collector.

libvirt delivers events only to a process that registered an event loop implementation
*before* it opened the connection, and runs that loop itself. `domain_watch` does both: one
daemon thread per process runs libvirt's default loop; each watch has a connection of its
own (never the shared request connection of `connection.call`) with keepalive, so a libvirtd that
goes away is noticed within seconds and the watch reports itself closed.

Callbacks receive plain `DomainEvent` values on the event thread: keep them short (put the
event on a queue). libvirt's errors and constants stay in this module.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import libvirt

from apps.core.errors import GatewayError

# virDomainEventType, in libvirt's order
_KINDS = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "pmsuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}

KEEPALIVE_INTERVAL = 5  # seconds between keepalive probes
KEEPALIVE_COUNT = 3  # unanswered probes before the connection counts as dead

_loop_lock = threading.Lock()
_loop_thread: threading.Thread | None = None


@dataclass(frozen=True)
class DomainEvent:
    uuid: str
    name: str
    kind: str  # defined, undefined, started, suspended, resumed, stopped, shutdown, pmsuspended, crashed


def _run_loop() -> None:
    while True:
        libvirt.virEventRunDefaultImpl()


def _ensure_event_loop() -> None:
    """Register libvirt's default event loop once per process and run it in a daemon thread."""
    global _loop_thread
    with _loop_lock:
        if _loop_thread is not None and _loop_thread.is_alive():
            return
        if _loop_thread is None:
            libvirt.virEventRegisterDefaultImpl()
        _loop_thread = threading.Thread(target=_run_loop, name="libvirt-events", daemon=True)
        _loop_thread.start()


class DomainWatch:
    """A live subscription to one host's domain lifecycle events."""

    def __init__(self, uri: str, on_event: Callable[[DomainEvent], None]):
        _ensure_event_loop()
        self.uri = uri
        self._closed = threading.Event()
        try:
            self._conn = libvirt.open(uri)
            self._conn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
            self._conn.registerCloseCallback(lambda _conn, _reason, _opaque: self._closed.set(), None)
            self._callback = self._conn.domainEventRegisterAny(
                None,
                libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                lambda _conn, dom, event, _detail, _opaque: on_event(
                    DomainEvent(uuid=dom.UUIDString(), name=dom.name(), kind=_KINDS.get(event, "unknown"))
                ),
                None,
            )
        except libvirt.libvirtError as exc:
            self._closed.set()
            raise GatewayError(f"Cannot watch the hypervisor at {uri}: {exc.get_error_message()}") from None

    @property
    def alive(self) -> bool:
        if self._closed.is_set():
            return False
        try:
            return bool(self._conn.isAlive())
        except libvirt.libvirtError:
            return False

    def close(self) -> None:
        if getattr(self, "_conn", None) is None:
            return
        try:
            if not self._closed.is_set():
                self._conn.domainEventDeregisterAny(self._callback)
                self._conn.unregisterCloseCallback()
            self._conn.close()
        except libvirt.libvirtError:
            pass
        self._closed.set()
        self._conn = None


def domain_watch(uri: str, on_event: Callable[[DomainEvent], None]) -> DomainWatch:
    """Subscribe to the host's domain lifecycle events (GatewayError if it cannot be reached)."""
    return DomainWatch(uri, on_event)
