"""Key escrow: a disk key wrapped to a recovery passphrase (Argon2id + AES-256-GCM), bound
to its disk, for the admin to keep offline."""

from __future__ import annotations

import json
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from apps.core.errors import InvalidInput

from .common import NONCE_BYTES, _b64, _unb64, argon2id

ESCROW_FORMAT = "hypervisor-portal-escrow-1"
MIN_RECOVERY_PASSPHRASE = 12


def escrow_wrap(key: bytes, passphrase: bytes, binding: dict, *, memory_kib: int, iterations: int) -> bytes:
    """The disk key wrapped to a recovery passphrase (Argon2id + AES-256-GCM), with the
    disk's identity as associated data. The passphrase is not kept anywhere."""
    if len(passphrase) < MIN_RECOVERY_PASSPHRASE:
        raise InvalidInput(f"The recovery passphrase must be at least {MIN_RECOVERY_PASSPHRASE} characters long.")
    salt = secrets.token_bytes(16)
    kek = argon2id(passphrase, salt, memory_kib=memory_kib, iterations=iterations)
    aad = json.dumps(binding, sort_keys=True, separators=(",", ":")).encode()
    nonce = secrets.token_bytes(NONCE_BYTES)
    document = {
        "format": ESCROW_FORMAT,
        "binding": binding,
        "kdf": {"name": "argon2id", "salt": _b64(salt), "memory_kib": memory_kib, "iterations": iterations, "lanes": 4},
        "cipher": "aes-256-gcm",
        "wrapped": _b64(nonce + AESGCM(kek).encrypt(nonce, key, aad)),
    }
    return json.dumps(document, sort_keys=True, indent=1).encode()


def escrow_unwrap(document: bytes, passphrase: bytes) -> tuple[dict, bytes]:
    """(binding, key) from an escrow file; InvalidInput for a wrong passphrase or a damaged file."""
    try:
        doc = json.loads(document)
        if doc.get("format") != ESCROW_FORMAT:
            raise ValueError
        binding, kdf = doc["binding"], doc["kdf"]
        if not isinstance(binding, dict):
            raise ValueError
        salt, blob = _unb64(kdf["salt"]), _unb64(doc["wrapped"])
        memory_kib, iterations = int(kdf["memory_kib"]), int(kdf["iterations"])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise InvalidInput("This is not a key escrow file of this portal (or it is damaged).") from None
    if not (8 <= memory_kib <= 1 << 20 and 1 <= iterations <= 16):  # at most 1 GiB: no DoS by upload
        raise InvalidInput("The escrow file asks for an unreasonable key derivation cost; refusing it.")
    kek = argon2id(passphrase, salt, memory_kib=memory_kib, iterations=iterations)
    aad = json.dumps(binding, sort_keys=True, separators=(",", ":")).encode()
    try:
        key = AESGCM(kek).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except InvalidTag:
        raise InvalidInput("Wrong recovery passphrase, or the escrow file was altered.") from None
    return binding, key
