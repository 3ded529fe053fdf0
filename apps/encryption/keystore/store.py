"""The key store: one AES-256-GCM envelope file per disk key under the store's directory,
wrapped by the configured KEK provider, with versioned KEKs and their rotation."""

from __future__ import annotations

import json
import os
import uuid as uuidlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag

from apps.core.errors import InvalidInput, NotFound

from ..errors import KeyFileRejected, StoreSealed
from .common import (
    DISK_KEY_BYTES,
    FORMAT,
    RESTORE_HINT,
    _b64,
    _remove,
    _unb64,
    ensure_private_dir,
    read_private_file,
    write_private_file,
)
from .providers import PROVIDERS, KekProvider, PassphraseKek


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

