"""Virtual networks."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

import libvirt

from . import connection
from .connection import read_present
from .xml import network_isolated_xml, network_zone_xml


@dataclass(frozen=True)
class NetworkInfo:
    uuid: str
    name: str
    active: bool
    bridge: str
    forward_mode: str


def _read_network(net) -> NetworkInfo:
    root = ET.fromstring(net.XMLDesc(0))
    bridge = root.find("bridge")
    forward = root.find("forward")
    return NetworkInfo(
        uuid=net.UUIDString(),
        name=net.name(),
        active=bool(net.isActive()),
        bridge=bridge.get("name", "") if bridge is not None else "",
        forward_mode=(forward.get("mode", "nat") if forward is not None else "isolated"),
    )


def network_list(uri: str) -> list[NetworkInfo]:
    """Every network of the host; one removed while we read is left out."""
    return connection.call(
        uri,
        "list networks",
        lambda conn: sorted(read_present(conn.listAllNetworks(0), _read_network), key=lambda n: n.name),
    )


def network_ensure_isolated(uri: str, name: str, bridge: str) -> None:
    """Define (unless it exists), start and autostart a network with no <forward>."""

    def _ensure(conn):
        try:
            net = conn.networkLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
                raise
            net = conn.networkDefineXML(network_isolated_xml(name, bridge))
        if not net.isActive():
            net.create()
        net.setAutostart(1)

    connection.call(uri, name, _ensure)


def network_ensure_zone(uri: str, name: str, bridge: str, ipv4_cidr: str = "", ipv6_cidr: str = "") -> None:
    """Define (if absent), start and autostart a zone's isolated network. Idempotent."""

    def _define(conn):
        try:
            net = conn.networkLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
                raise
            net = conn.networkDefineXML(network_zone_xml(name, bridge, ipv4_cidr, ipv6_cidr))
        if not net.isActive():
            net.create()
        net.setAutostart(1)

    connection.call(uri, name, _define)


def network_exists(uri: str, name: str) -> bool:
    def _exists(conn):
        try:
            conn.networkLookupByName(name)
            return True
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
                return False
            raise

    return connection.call(uri, name, _exists)


def network_remove(uri: str, name: str) -> None:
    """Stop (if active) and undefine a network (a zone deleted by an admin)."""

    def _remove(conn):
        net = conn.networkLookupByName(name)
        if net.isActive():
            net.destroy()
        net.undefine()

    connection.call(uri, name, _remove)
