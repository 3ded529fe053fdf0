"""libvirt secrets (the passphrases of QEMU-LUKS volumes).

Secret values arrive as bytes from the key store and go straight to secretSetValue: never
into XML, argv, a log line or an error message.
"""

from __future__ import annotations

import libvirt

from . import connection
from .xml import secret_xml


def secret_ensure(uri: str, *, usage_volume: str, description: str) -> str:
    """Define (or find) the libvirt secret of a volume; returns its UUID."""

    def _ensure(conn):
        try:
            return conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_VOLUME, usage_volume).UUIDString()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_SECRET:
                raise
        return conn.secretDefineXML(secret_xml(usage_volume=usage_volume, description=description), 0).UUIDString()

    return connection.call(uri, "define secret", _ensure)


def secret_set_value(uri: str, secret_uuid: str, value: bytes) -> None:
    connection.call(
        uri, f"secret {secret_uuid}", lambda conn: conn.secretLookupByUUIDString(secret_uuid).setValue(value, 0)
    )


def secret_remove(uri: str, secret_uuid: str) -> None:
    """Undefine the secret (nothing to do when it is already gone)."""

    def _remove(conn):
        try:
            conn.secretLookupByUUIDString(secret_uuid).undefine()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_SECRET:
                raise

    connection.call(uri, f"secret {secret_uuid}", _remove)
