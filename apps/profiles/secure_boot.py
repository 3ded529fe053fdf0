"""A profile's own secure-boot keys: `firmware.keys` = {"pk": PEM, "kek": [PEM, ...],
"db": [PEM, ...]}, X.509 certificates (public; the private keys stay with whoever signs the
guest's boot loader). Checked here with the cryptography package, each with a clear error
naming the key; enrolled into a per-VM copy of OVMF's empty varstore (OVMF_VARS_4M.fd) by
the create job (apps/core/gateways/firmware.py), which the domain then names as its NVRAM."""

from __future__ import annotations

import os
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from django.conf import settings

from apps.core.errors import InvalidInput

MIN_RSA_BITS = 2048  # OVMF verifies RSA signatures (PK and KEK: RSA-2048 by the UEFI spec)
PEM_BEGIN = "-----BEGIN CERTIFICATE-----"


def _certificate(where: str, pem, expiry: bool) -> x509.Certificate:
    if not isinstance(pem, str) or PEM_BEGIN not in pem:
        raise InvalidInput(f"firmware.keys.{where}: not a PEM certificate (it must contain {PEM_BEGIN}).")
    if pem.count(PEM_BEGIN) != 1:
        raise InvalidInput(f"firmware.keys.{where}: one certificate per entry (this one holds {pem.count(PEM_BEGIN)}).")
    if "PRIVATE KEY" in pem:
        raise InvalidInput(f"firmware.keys.{where}: holds a private key; give the certificate only, never the key.")
    try:
        cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise InvalidInput(f"firmware.keys.{where}: the PEM certificate does not parse ({str(exc)[:120]}).") from None
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise InvalidInput(
            f"firmware.keys.{where}: {type(key).__name__.removeprefix('_').replace('PublicKey', '')} key; "
            "UEFI secure boot (OVMF) verifies RSA keys only."
        )
    if key.key_size < MIN_RSA_BITS:
        raise InvalidInput(f"firmware.keys.{where}: RSA-{key.key_size} is too weak; at least RSA-{MIN_RSA_BITS}.")
    if expiry and cert.not_valid_after_utc < datetime.now(UTC):
        raise InvalidInput(f"firmware.keys.{where}: the certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}.")
    return cert


def keys_check(keys: dict, *, expiry: bool = True) -> dict[str, list[str]]:
    """{"pk": [subject], "kek": [...], "db": [...]} of a valid `firmware.keys`; else
    InvalidInput naming the entry. `expiry`: refuse an expired certificate too (enrolling one
    into a new VM; a VM already made keeps its keys, so its later edits do not ask)."""
    out = {"pk": [_certificate("pk", keys.get("pk"), expiry).subject.rfc4514_string()]}
    for kind in ("kek", "db"):
        out[kind] = [_certificate(f"{kind}[{i}]", pem, expiry).subject.rfc4514_string()
                     for i, pem in enumerate(keys[kind])]  # fmt: skip
    return out


def vars_path(vm_name: str) -> str:
    """Where the VM's own varstore goes (libvirt's NVRAM directory, libvirt's naming)."""
    return os.path.join(settings.VMS_NVRAM_DIR, f"{vm_name}_VARS.fd")


def vars_create(vm_name: str, owner: str, keys: dict) -> str:
    """The VM's varstore with the profile's keys enrolled (a copy of the empty template)."""
    from apps.core.gateways import firmware

    keys_check(keys)
    return firmware.vars_enroll(settings.VMS_OVMF_VARS_TEMPLATE, vars_path(vm_name), owner=owner, pk=keys["pk"],
                                kek=list(keys["kek"]), db=list(keys["db"]))  # fmt: skip
