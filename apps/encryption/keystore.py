"""The envelope-encrypted key store.

Every disk key (64 random bytes) lives in its own file under `<dir>/disks/`, encrypted with
AES-256-GCM under a key-encryption key (KEK). The key id, the VM's UUID, the volume path,
the creation time and the KEK provider and version are the associated data: a file copied
over another disk's file, or edited, fails to decrypt. Directories are 0700, files 0400,
both owned by the portal's user, and written atomically (temp file, fsync, rename, fsync
of the directory). Files with another mode or owner are refused, not repaired.

KEK providers (one per store, chosen per host by settings.ENCRYPTION_KEK_PROVIDER):
- `file`: a random 256-bit master key per version in its own directory, apart from the
  keys it wraps (settings.ENCRYPTION_KEK_FILE_DIR, by default /etc/hypervisor-portal/kek,
  outside the state directory; a KEK directory inside the key directory is refused).
  Automatic unlock on boot; it protects the keys only as far as that directory is kept
  apart (other disk, other backups) from the key files.
- `tpm2`: the same kind of random master key, sealed to the host's TPM 2.0 (tpm2-tools,
  settings.ENCRYPTION_TPM2_TCTI). Only the sealed blobs lie in the KEK directory; only this
  host's TPM unseals them, for each use, and the KEK is never written anywhere.
- `passphrase`: Argon2id of an admin's passphrase. The store stays sealed until an admin
  unseals it; the derived KEK is then kept in the runtime directory (a tmpfs such as /run,
  0400) where the workers read it, and a reboot or `seal()` removes it.
- `pkcs11`: a non-extractable AES-256 key in a PKCS#11 token (SoftHSM2, an HSM); wrapping
  happens inside the token, the KEK never reaches this process.

Rotation adds KEK version N+1, re-wraps every key file (skipping those already at N+1, so
an interrupted rotation resumes), then retires version N. No disk is touched.
Nothing here logs, prints or raises with key material.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import stat
import tempfile
import uuid as uuidlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from apps.core.errors import InvalidInput, NotFound

from .errors import KeyFileRejected, StoreSealed

log = logging.getLogger(__name__)

DISK_KEY_BYTES = 64
KEK_BYTES = 32
NONCE_BYTES = 12
FORMAT = 1
_CHECK_PLAINTEXT = b"hypervisor-portal key store check"
RESTORE_HINT = "Restore it from escrow: the disk's page, or `vm_encryption restore-key VM --escrow FILE`."


# ------------------------------------------------------------------ atomic files


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (0700) if missing; refuse one with another mode or owner."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise KeyFileRejected(f"{path} is not a directory; the key store refuses to use it.")
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) != 0o700:
        raise KeyFileRejected(
            f"The key directory {path} has mode {stat.S_IMODE(st.st_mode):04o} and owner {st.st_uid}; "
            f"it must be 0700 and owned by uid {os.geteuid()}. Fix it before using the key store."
        )
    return path


def write_private_file(path: Path, data: bytes, *, replace: bool = False) -> None:
    """Write `data` to `path` atomically, mode 0400, in its (0700) directory. Without
    `replace`, an existing file is never overwritten, even one created meanwhile: the new
    file is linked in (link fails if the name exists), not renamed over it."""
    directory = ensure_private_dir(path.parent)
    if path.exists() and not replace:
        raise KeyFileRejected(f"{path} already exists; refusing to overwrite a key file.")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o400)
        if replace:
            os.rename(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise KeyFileRejected(f"{path} already exists; refusing to overwrite a key file.") from None
            os.unlink(tmp)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_private_file(path: Path, what: str = "key file") -> bytes:
    """Read a 0400 file owned by us, refusing symlinks, other modes and other owners."""
    ensure_private_dir(path.parent)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise NotFound(f"The {what} {path.name} is missing from the key store.") from None
    except OSError:
        raise KeyFileRejected(f"The {what} {path.name} is not a regular file; refusing to use it.") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        mode = stat.S_IMODE(st.st_mode)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or mode != 0o400:
            raise KeyFileRejected(
                f"The {what} {path.name} has mode {mode:04o} (owner uid {st.st_uid}); it must be 0400 and "
                f"owned by uid {os.geteuid()}. It may have been tampered with: refusing to use it."
            )
        return fh.read()


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode(), validate=True)


def argon2id(passphrase: bytes, salt: bytes, *, memory_kib: int, iterations: int, length: int = 32) -> bytes:
    return Argon2id(salt=salt, length=length, iterations=iterations, lanes=4, memory_cost=memory_kib).derive(passphrase)


# ------------------------------------------------------------------ KEK providers


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
        from .gateways import tpm2

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
        from .gateways import tpm2

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


# ------------------------------------------------------------------ the store


def kek_dir_problem(key_dir: Path, kek_dir: Path) -> str:
    """Why `kek_dir` may not hold the KEK of the keys in `key_dir` ("" when it may): a KEK
    in the same tree as the keys it wraps is copied, backed up and stolen with them."""
    keys, kek = os.path.realpath(key_dir), os.path.realpath(kek_dir)
    if os.path.commonpath([keys, kek]) in (keys, kek):
        return (
            f"The KEK directory {kek_dir} lies inside (or holds) the key directory {key_dir}: the key-encryption "
            "key must be kept apart from the keys it wraps. Set ENCRYPTION_KEK_FILE_DIR to a root-only directory "
            "outside the key directory (default /etc/hypervisor-portal/kek)."
        )
    return ""


@dataclass(frozen=True)
class StoredKey:
    key_id: str
    vm_uuid: str
    volume: str
    created: str
    kek_provider: str
    kek_version: int

    @property
    def created_at(self) -> datetime:
        return datetime.fromisoformat(self.created)


class KeyStore:
    def __init__(
        self,
        directory: Path,
        *,
        provider: str = "file",
        runtime_dir: Path | None = None,
        kdf_memory_kib: int = 65536,
        kdf_iterations: int = 3,
        pkcs11: dict | None = None,
        kek_dir: Path | None = None,
        tpm2: dict | None = None,
    ):
        if provider not in PROVIDERS:
            raise InvalidInput(f"Unknown KEK provider {provider!r}: choose one of {', '.join(PROVIDERS)}.")
        self.directory = Path(directory)
        self.kek_dir = Path(kek_dir) if kek_dir else None
        self.tpm2 = tpm2 or {}
        if self.kek_dir is not None:
            problem = kek_dir_problem(self.directory, self.kek_dir)
            if problem:
                raise KeyFileRejected(problem)
        self.runtime_dir = Path(runtime_dir) if runtime_dir else self.directory / "run"
        self.provider_name = provider
        self.kdf_memory_kib = kdf_memory_kib
        self.kdf_iterations = kdf_iterations
        self.pkcs11 = pkcs11 or {}

    def require_kek_dir(self) -> Path:
        if self.kek_dir is None:
            raise KeyFileRejected(
                "No KEK directory is configured (ENCRYPTION_KEK_FILE_DIR): the KEK must not lie beside the keys."
            )
        return ensure_private_dir(self.kek_dir)

    # -- metadata: provider, KEK versions, passphrase salts (nothing secret)

    @property
    def _meta_path(self) -> Path:
        return self.directory / "store.json"

    def initialized(self) -> bool:
        return self._meta_path.exists()

    def meta(self) -> dict:
        if not self.initialized():
            raise StoreSealed(f"The key store in {self.directory} is not initialised yet.")
        return json.loads(read_private_file(self._meta_path, "key store metadata"))

    def save_meta(self, meta: dict) -> None:
        write_private_file(self._meta_path, json.dumps(meta, sort_keys=True, indent=1).encode(), replace=True)

    @property
    def store_id(self) -> str:
        return self.meta()["store_id"]

    @property
    def provider(self) -> KekProvider:
        return PROVIDERS[self.meta()["provider"] if self.initialized() else self.provider_name](self)

    def initialize(self, *, passphrase: bytes | None = None) -> None:
        """Create the store (idempotent). The passphrase provider needs its first passphrase."""
        ensure_private_dir(self.directory)
        ensure_private_dir(self.directory / "disks")
        if self.initialized():
            return
        if self.provider_name == "passphrase" and not passphrase:
            raise StoreSealed("The key store is not initialised: an admin must set its passphrase first.")
        meta = {
            "format": FORMAT,
            "store_id": uuidlib.uuid4().hex[:12],
            "provider": self.provider_name,
            "current": 1,
            "versions": [1],
        }
        self.save_meta(meta)
        try:
            self.provider.create(1, passphrase=passphrase)
        except BaseException:
            _remove(self._meta_path)
            raise

    def current_version(self) -> int:
        return int(self.meta()["current"])

    def sealed(self) -> bool:
        if not self.initialized():
            return self.provider_name == "passphrase"
        return self.provider.sealed(self.current_version())

    def require_unsealed(self) -> None:
        if not self.initialized():
            self.initialize()
        if self.sealed():
            raise StoreSealed("The key store is sealed: an admin must unseal it with its passphrase first.")

    def unseal(self, passphrase: bytes) -> None:
        provider = self.provider
        if not isinstance(provider, PassphraseKek):
            raise InvalidInput("This key store does not use a passphrase: there is nothing to unseal.")
        for version in self.meta()["versions"]:
            provider.unseal(version, passphrase)

    def seal(self) -> None:
        provider = self.provider
        if not isinstance(provider, PassphraseKek):
            raise InvalidInput("Only a passphrase-protected key store can be sealed.")
        provider.seal()

    # -- disk keys

    def _key_path(self, key_id: str) -> Path:
        if not key_id.isalnum():
            raise InvalidInput("Malformed key id.")
        return self.directory / "disks" / f"{key_id}.key"

    @staticmethod
    def _aad(key_id: str, vm_uuid: str, volume: str, created: str, provider: str, version: int) -> bytes:
        bound = {
            "key_id": key_id,
            "vm_uuid": str(vm_uuid),
            "volume": volume,
            "created": created,
            "kek_provider": provider,
            "kek_version": version,
        }
        return json.dumps(bound, sort_keys=True, separators=(",", ":")).encode()

    def new_key_id(self) -> str:
        return uuidlib.uuid4().hex

    def put(self, *, key_id: str, vm_uuid: str, volume: str, key: bytes, replace: bool = False) -> StoredKey:
        """Store `key` for (vm, volume) under the current KEK."""
        self.require_unsealed()
        created = datetime.now(UTC).isoformat(timespec="seconds")
        version = self.current_version()
        provider = self.provider
        aad = self._aad(key_id, vm_uuid, volume, created, provider.name, version)
        blob = provider.wrap(version, key, aad)
        record = {
            "format": FORMAT,
            "key_id": key_id,
            "vm_uuid": str(vm_uuid),
            "volume": volume,
            "created": created,
            "kek_provider": provider.name,
            "kek_version": version,
            "wrapped": _b64(blob),
        }
        write_private_file(self._key_path(key_id), json.dumps(record, sort_keys=True).encode(), replace=replace)
        return StoredKey(key_id, str(vm_uuid), volume, created, provider.name, version)

    def describe(self, key_id: str) -> StoredKey:
        record = self._record(key_id)
        return StoredKey(
            record["key_id"],
            record["vm_uuid"],
            record["volume"],
            record["created"],
            record["kek_provider"],
            int(record["kek_version"]),
        )

    def _record(self, key_id: str) -> dict:
        try:
            raw = read_private_file(self._key_path(key_id))
        except NotFound as exc:
            raise NotFound(f"{exc.message} {RESTORE_HINT}") from None
        try:
            record = json.loads(raw)
            record["wrapped"], record["created"], int(record["kek_version"])  # noqa: B018
        except (ValueError, KeyError, TypeError):
            raise KeyFileRejected(
                f"The key file {key_id} is damaged (not a key record); refusing to use it. {RESTORE_HINT}"
            ) from None
        return record

    def get(self, *, key_id: str, vm_uuid: str, volume: str) -> bytes:
        """The key of (vm, volume). The caller says which disk it expects: a file from
        another disk, or an altered one, fails authentication and is refused."""
        record = self._record(key_id)
        provider = PROVIDERS.get(record.get("kek_provider"))
        if provider is None or record.get("kek_provider") != self.meta()["provider"]:
            raise KeyFileRejected(f"The key file {key_id} names an unknown KEK provider; refusing to use it.")
        version = int(record["kek_version"])
        aad = self._aad(key_id, vm_uuid, volume, record["created"], record["kek_provider"], version)
        try:
            key = provider(self).unwrap(version, _unb64(record["wrapped"]), aad)
        except (InvalidTag, ValueError):
            raise KeyFileRejected(
                f"The key file {key_id} does not decrypt for this disk: it was altered or belongs to another "
                f"VM or volume. Refusing to use it. {RESTORE_HINT}"
            ) from None
        if len(key) != DISK_KEY_BYTES:
            raise KeyFileRejected(f"The key file {key_id} holds a key of the wrong length; refusing to use it.")
        return key

    def delete(self, key_id: str) -> None:
        _remove(self._key_path(key_id))

    def key_ids(self) -> list[str]:
        disks = self.directory / "disks"
        if not disks.exists():
            return []
        return sorted(p.stem for p in disks.glob("*.key"))

    # -- KEK rotation

    def rotation_begin(self, *, passphrase: bytes | None = None) -> int:
        """Create KEK version N+1 and make it current (idempotent while a rotation runs)."""
        self.require_unsealed()
        meta = self.meta()
        current = int(meta["current"])
        if len(meta["versions"]) > 1:  # a rotation is already under way: resume it
            return current
        new = current + 1
        self.provider.create(new, passphrase=passphrase)
        meta = self.meta()
        meta["versions"] = [*meta["versions"], new]
        meta["current"] = new
        self.save_meta(meta)
        return new

    def rewrap(self, key_id: str) -> bool:
        """Re-wrap one key under the current KEK, keeping its binding; False if already done."""
        record = self._record(key_id)
        current = self.current_version()
        if int(record["kek_version"]) == current:
            return False
        key = self.get(key_id=key_id, vm_uuid=record["vm_uuid"], volume=record["volume"])
        provider = self.provider
        aad = self._aad(key_id, record["vm_uuid"], record["volume"], record["created"], provider.name, current)
        record.update(kek_version=current, wrapped=_b64(provider.wrap(current, key, aad)))
        write_private_file(self._key_path(key_id), json.dumps(record, sort_keys=True).encode(), replace=True)
        return True

    def rotation_finish(self) -> list[int]:
        """Retire every KEK version but the current one, once no key file uses them."""
        meta = self.meta()
        current = int(meta["current"])
        for key_id in self.key_ids():
            if int(self._record(key_id)["kek_version"]) != current:
                raise KeyFileRejected(f"The key file {key_id} is not re-wrapped yet; old KEKs are kept.")
        retired = [v for v in meta["versions"] if v != current]
        for version in retired:
            self.provider.retire(version)
        meta = self.meta()
        meta["versions"] = [current]
        self.save_meta(meta)
        return retired


# ------------------------------------------------------------------ escrow

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
