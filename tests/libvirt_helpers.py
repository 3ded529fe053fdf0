"""libvirt calls only tests (and scripts/clean-test-resources.py, which removes what cut-short
test runs left) need: the portal itself never removes a network."""

from __future__ import annotations

from apps.core.gateways.libvirt import connection


def network_remove(uri: str, name: str) -> None:
    """Stop (if active) and undefine a network."""

    def _remove(conn):
        net = conn.networkLookupByName(name)
        if net.isActive():
            net.destroy()
        net.undefine()

    connection.call(uri, name, _remove)
