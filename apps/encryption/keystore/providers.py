"""KEK providers: what wraps the disk keys (file, tpm2, passphrase, pkcs11); see the
package's docstring."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from apps.core.errors import InvalidInput, NotFound

from ..errors import KeyFileRejected, StoreSealed
from .common import (
    _CHECK_PLAINTEXT,
    KEK_BYTES,
    NONCE_BYTES,
    _b64,
    _remove,
    _unb64,
    argon2id,
    read_private_file,
    write_private_file,
)

if TYPE_CHECKING:
    from .store import KeyStore


log = logging.getLogger(__name__)

class KekProvider:
    """Wraps and unwraps with KEK version `version`. Subclasses keep the KEK where they can."""

    name = ""

    def __init__(self, store: KeyStore):
        self.store = store

    def sealed(self, version: int) -> bool:
        return False

    def create(self, version: int, **kwargs) -> None:
        raise NotImplementedError

    def retire(self, version: int) -> None:
        raise NotImplementedError

    def wrap(self, version: int, plaintext: bytes, aad: bytes) -> bytes:
        raise NotImplementedError

    def unwrap(self, version: int, blob: bytes, aad: bytes) -> bytes:
        raise NotImplementedError


class _LocalAesKek(KekProvider):
    """A provider whose KEK bytes this process can load (file, passphrase)."""

    def _kek(self, version: int) -> bytes:
        raise NotImplementedError

    def wrap(self, version: int, plaintext: bytes, aad: bytes) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return nonce + AESGCM(self._kek(version)).encrypt(nonce, plaintext, aad)

    def unwrap(self, version: int, blob: bytes, aad: bytes) -> bytes:
        return AESGCM(self._kek(version)).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)


class FileKek(_LocalAesKek):
    """A random master key file per version, in the KEK directory (apart from the key
    files): the store opens by itself after a reboot."""

    name = "file"

    def _path(self, version: int) -> Path:
        return self.store.require_kek_dir() / f"{self.store.store_id}-v{version}.kek"

    def _legacy_path(self, version: int) -> Path:
        """Where stores made before the KEK was kept apart held it: beside the keys."""
        return self.store.directory / "kek" / f"v{version}.kek"

    def _adopt_legacy(self, version: int) -> None:
        """Move a KEK left beside the keys (older stores) into the KEK directory."""
        legacy, path = self._legacy_path(version), self._path(version)
        if path.exists() or not legacy.exists():
            return
        write_private_file(path, read_private_file(legacy, "master key file"))
        _remove(legacy)
        try:
            legacy.parent.rmdir()
        except OSError:
            pass
        log.warning("moved KEK version %s of the key store out of the key directory into %s", version, path.parent)

    def create(self, version: int, **kwargs) -> None:
        self._adopt_legacy(version)
        path = self._path(version)
        if not path.exists():
            write_private_file(path, secrets.token_bytes(KEK_BYTES))

    def retire(self, version: int) -> None:
        _remove(self._path(version))
        _remove(self._legacy_path(version))

    def _kek(self, version: int) -> bytes:
        self._adopt_legacy(version)
        kek = read_private_file(self._path(version), "master key file")
        if len(kek) != KEK_BYTES:
            raise KeyFileRejected(f"The master key file v{version} has the wrong length; refusing to use it.")
        return kek


class Tpm2Kek(_LocalAesKek):
    """A random master key per version, sealed to the host's TPM 2.0: automatic unlock on
    boot, and a copy of the disks, the key store and the KEK directory opens nothing
    without this TPM."""

    name = "tpm2"

    def _blobs(self, version: int) -> tuple[Path, Path]:
        base = self.store.require_kek_dir() / f"{self.store.store_id}-v{version}.tpm2"
        return base.with_suffix(".tpm2pub"), base.with_suffix(".tpm2priv")

    def _tcti(self) -> str:
        tcti = self.store.tpm2.get("tcti")
        if not tcti:
            raise StoreSealed("No TPM is configured for the tpm2 KEK provider (ENCRYPTION_TPM2_TCTI).")
        return tcti

    def _lock(self) -> Path:
        return self.store.require_kek_dir() / ".tpm2.lock"

    def sealed(self, version: int) -> bool:
        return not all(p.exists() for p in self._blobs(version))

    def create(self, version: int, **kwargs) -> None:
        from ..gateways import tpm2

        pub, priv = self._blobs(version)
        if pub.exists() and priv.exists():
            return
        kek = secrets.token_bytes(KEK_BYTES)
        public, private = tpm2.seal(self._tcti(), kek.hex(), lock_file=self._lock())
        if tpm2.unseal(self._tcti(), public, private, lock_file=self._lock()).strip() != kek.hex():
            raise KeyFileRejected("The TPM did not give back the KEK it sealed; the key store was not changed.")
        write_private_file(priv, private, replace=True)
        write_private_file(pub, public, replace=True)

    def retire(self, version: int) -> None:
        for path in self._blobs(version):
            _remove(path)

    def _kek(self, version: int) -> bytes:
        from ..gateways import tpm2

        pub, priv = self._blobs(version)
        public = read_private_file(pub, "sealed KEK")
        private = read_private_file(priv, "sealed KEK")
        try:
            kek = bytes.fromhex(tpm2.unseal(self._tcti(), public, private, lock_file=self._lock()).strip())
        except ValueError:
            raise KeyFileRejected(f"The TPM-sealed KEK v{version} is not a key; refusing to use it.") from None
        if len(kek) != KEK_BYTES:
            raise KeyFileRejected(f"The TPM-sealed KEK v{version} has the wrong length; refusing to use it.")
        return kek


class PassphraseKek(_LocalAesKek):
    """Argon2id(passphrase, salt): sealed until an admin unseals the store."""

    name = "passphrase"

    def _runtime(self, version: int) -> Path:
        return self.store.runtime_dir / f"{self.store.store_id}-v{version}.kek"

    def sealed(self, version: int) -> bool:
        return not self._runtime(version).exists()

    def create(self, version: int, *, passphrase: bytes | None = None, **kwargs) -> None:
        if not passphrase:
            raise InvalidInput("A passphrase is needed to create a passphrase-protected key store.")
        meta = self.store.meta()
        params = meta.setdefault("passphrase", {})
        if str(version) in params:
            return
        salt = secrets.token_bytes(16)
        cost = {"memory_kib": self.store.kdf_memory_kib, "iterations": self.store.kdf_iterations}
        kek = argon2id(passphrase, salt, **cost)
        nonce = secrets.token_bytes(NONCE_BYTES)
        check = nonce + AESGCM(kek).encrypt(nonce, _CHECK_PLAINTEXT, self._check_aad(version))
        params[str(version)] = {"salt": _b64(salt), "check": _b64(check), **cost}
        self.store.save_meta(meta)
        write_private_file(self._runtime(version), kek, replace=True)

    def _check_aad(self, version: int) -> bytes:
        return f"{self.store.store_id}:passphrase:{version}".encode()

    def unseal(self, version: int, passphrase: bytes) -> None:
        params = self.store.meta().get("passphrase", {}).get(str(version))
        if params is None:
            raise NotFound(f"The key store has no passphrase KEK version {version}.")
        kek = argon2id(
            passphrase, _unb64(params["salt"]), memory_kib=params["memory_kib"], iterations=params["iterations"]
        )
        check = _unb64(params["check"])
        try:
            AESGCM(kek).decrypt(check[:NONCE_BYTES], check[NONCE_BYTES:], self._check_aad(version))
        except InvalidTag:
            raise InvalidInput("Wrong passphrase: the key store stays sealed.") from None
        write_private_file(self._runtime(version), kek, replace=True)

    def seal(self) -> None:
        for version in self.store.meta()["versions"]:
            _remove(self._runtime(version))

    def retire(self, version: int) -> None:
        meta = self.store.meta()
        meta.get("passphrase", {}).pop(str(version), None)
        self.store.save_meta(meta)
        _remove(self._runtime(version))

    def _kek(self, version: int) -> bytes:
        if self.sealed(version):
            raise StoreSealed("The key store is sealed: an admin must unseal it with its passphrase first.")
        return read_private_file(self._runtime(version), "unsealed KEK")


class Pkcs11Kek(KekProvider):
    """An AES-256 key inside a PKCS#11 token; AES-GCM runs in the token."""

    name = "pkcs11"

    def _label(self, version: int) -> str:
        return f"portal-kek-{self.store.store_id}-v{version}"

    def _session(self):
        import pkcs11

        cfg = self.store.pkcs11
        if not cfg.get("pin"):
            raise StoreSealed("The PKCS#11 PIN is not configured (ENCRYPTION_PKCS11_PIN_FILE).")
        try:
            lib = pkcs11.lib(cfg["library"])
            token = lib.get_token(token_label=cfg["token"])
            return token.open(rw=True, user_pin=cfg["pin"])
        except (pkcs11.PKCS11Error, RuntimeError) as exc:
            raise StoreSealed(f"The PKCS#11 token {cfg['token']!r} is not available ({type(exc).__name__}).") from None

    def _key(self, session, version: int):
        import pkcs11

        try:
            return session.get_key(label=self._label(version), key_type=pkcs11.KeyType.AES)
        except pkcs11.NoSuchKey:
            raise StoreSealed(f"KEK version {version} is not in the PKCS#11 token.") from None

    def sealed(self, version: int) -> bool:
        try:
            with self._session() as session:
                self._key(session, version)
        except StoreSealed:
            return True
        return False

    def create(self, version: int, **kwargs) -> None:
        import pkcs11
        from pkcs11 import Attribute

        with self._session() as session:
            try:
                session.get_key(label=self._label(version), key_type=pkcs11.KeyType.AES)
                return
            except pkcs11.NoSuchKey:
                pass
            session.generate_key(
                pkcs11.KeyType.AES,
                256,
                label=self._label(version),
                store=True,
                template={Attribute.EXTRACTABLE: False, Attribute.SENSITIVE: True},
            )

    def retire(self, version: int) -> None:
        import pkcs11

        with self._session() as session:
            try:
                session.get_key(label=self._label(version), key_type=pkcs11.KeyType.AES).destroy()
            except pkcs11.NoSuchKey:
                pass

    def _gcm(self, nonce: bytes, aad: bytes):
        from pkcs11 import Mechanism
        from pkcs11.mechanisms import GCMParams

        return {"mechanism": Mechanism.AES_GCM, "mechanism_param": GCMParams(nonce, aad, 128)}

    def wrap(self, version: int, plaintext: bytes, aad: bytes) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        with self._session() as session:
            return nonce + self._key(session, version).encrypt(plaintext, **self._gcm(nonce, aad))

    def unwrap(self, version: int, blob: bytes, aad: bytes) -> bytes:
        import pkcs11

        with self._session() as session:
            key = self._key(session, version)
            try:
                return bytes(key.decrypt(blob[NONCE_BYTES:], **self._gcm(blob[:NONCE_BYTES], aad)))
            except pkcs11.PKCS11Error:
                raise InvalidTag() from None


PROVIDERS = {p.name: p for p in (FileKek, Tpm2Kek, PassphraseKek, Pkcs11Kek)}

