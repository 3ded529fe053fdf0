"""Snapshots of a domain (libvirt's domain snapshots, internal or external)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

import libvirt

from . import connection
from .xml import snapshot_xml


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    created: int
    state: str
    description: str = ""


def snapshot_list(uri: str, name: str) -> list[SnapshotInfo]:
    """The snapshots of domain `name`, oldest first."""

    def _list(conn):
        dom = conn.lookupByName(name)
        result = []
        for snap in dom.listAllSnapshots(0):
            root = ET.fromstring(snap.getXMLDesc(0))
            result.append(
                SnapshotInfo(
                    name=snap.getName(),
                    created=int(root.findtext("creationTime") or 0),
                    state=root.findtext("state") or "",
                    description=root.findtext("description") or "",
                )
            )
        return sorted(result, key=lambda s: s.created)

    return connection.call(uri, name, _list)


def snapshot_create(uri: str, name: str, snapshot: str, description: str = "") -> None:
    xml = snapshot_xml(snapshot, description)
    connection.call(uri, f"{name}/{snapshot}", lambda conn: conn.lookupByName(name).snapshotCreateXML(xml, 0))


def snapshot_delete(uri: str, name: str, snapshot: str) -> None:
    connection.call(
        uri, f"{name}/{snapshot}", lambda conn: conn.lookupByName(name).snapshotLookupByName(snapshot, 0).delete(0)
    )


def snapshot_create_disk_only(uri: str, name: str, snapshot_xml: str) -> None:
    """Freeze a running guest's disks: a disk-only external snapshot without metadata (the
    guest now writes into new overlay files; the old files stay still until committed)."""
    flags = (
        libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
        | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
        | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
    )
    connection.call(uri, name, lambda conn: conn.lookupByName(name).snapshotCreateXML(snapshot_xml, flags))
