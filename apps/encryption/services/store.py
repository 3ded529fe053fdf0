"""The key store as a whole: status, initialise, unseal/seal (passphrase KEK) and KEK
rotation. Unseal and a passphrase KEK's rotation take a passphrase the admin types: the
Argon2id derivation runs here, in the request, and only the derived KEK reaches the
runtime directory (tmpfs) the workers read; rotation's slow part (re-wrapping every key
file) is a job that carries no secret."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from django.db import transaction

from apps.accounts import throttle
from apps.accounts.permissions import authorize
from apps.audit import context as audit_context
from apps.audit.services import audited
from apps.core import jobs
from apps.core.errors import Conflict, InvalidInput
from apps.core.jobs import job_actor
from apps.core.models import Host, Job

from ..keystore import PassphraseKek
from .common import get_store

STORE_TARGET = ("keystore", "", "key store")
MIN_STORE_PASSPHRASE = 12


def _require_strong(passphrase: str, what: str = "The store passphrase") -> None:
    if len(passphrase) < MIN_STORE_PASSPHRASE:
        raise InvalidInput(f"{what} must be at least {MIN_STORE_PASSPHRASE} characters long.")


def _unseal_throttle_key() -> tuple[str, str]:
    """Unseal guesses are throttled like sign-ins (apps.accounts.throttle), counted per
    store (this host) and per address."""
    return f"store-unseal:{socket.gethostname()}", audit_context.source_ip.get() or "store-unseal-local"


@dataclass(frozen=True)
class StoreStatus:
    provider: str
    initialized: bool
    sealed: bool
    kek_version: int
    kek_versions: tuple[int, ...]
    keys: int
    kek_dir: str = ""

    @property
    def rotating(self) -> bool:
        return len(self.kek_versions) > 1

    @property
    def protection(self) -> str:
        """What protects the disk keys today, in words for the Encryption page."""
        return {
            "file": f"a master key file in {self.kek_dir}, apart from the key files but on this host and readable "
            "by its root: anyone with root on the host, or with both directories, can unwrap every disk key.",
            "passphrase": "a key derived from an admin's passphrase; the store stays sealed after every reboot "
            "until an admin unseals it.",
            "pkcs11": "a non-extractable key inside a PKCS#11 token (HSM); the key never leaves the token.",
            "tpm2": f"a master key sealed to this host's TPM 2.0 (sealed blobs in {self.kek_dir}); only this "
            "host's TPM unseals it, so a copy of the disks and the key store opens nothing elsewhere.",
        }.get(self.provider, self.provider)

    @property
    def recommended(self) -> bool:
        """The seed recommends an HSM or a TPM, off the key files' host and disks."""
        return self.provider in ("pkcs11", "tpm2")


def store_status(*, actor) -> StoreStatus:
    authorize(actor, "encryption.view", anywhere=True, action="encryption.store.view")
    store = get_store()
    if not store.initialized():
        return StoreStatus(store.provider_name, False, store.sealed(), 0, (), 0, str(store.kek_dir or ""))
    meta = store.meta()
    return StoreStatus(
        meta["provider"],
        True,
        store.sealed(),
        int(meta["current"]),
        tuple(meta["versions"]),
        len(store.key_ids()),
        str(store.kek_dir or ""),
    )


def store_initialize(*, actor, passphrase: str = "") -> StoreStatus:
    action = "encryption.store.initialize"
    authorize(actor, "encryption.keys", anywhere=True, action=action)
    store = get_store()
    with audited(actor=actor, action=action, target=STORE_TARGET) as ev:
        if store.provider_name == "passphrase" and not store.initialized():
            _require_strong(passphrase)
        store.initialize(passphrase=passphrase.encode() or None)
        ev.params["provider"] = store.provider_name
    return store_status(actor=actor)


def store_unseal(*, actor, passphrase: str) -> None:
    action = "encryption.store.unseal"
    authorize(actor, "encryption.keys", anywhere=True, action=action)
    store = get_store()
    who, address = _unseal_throttle_key()
    with audited(actor=actor, action=action, target=STORE_TARGET):
        if throttle.is_locked(who, address):
            raise Conflict("Too many wrong store passphrases: unsealing is refused for a while; try again later.")
        if not store.initialized():  # the first unseal sets the passphrase
            _require_strong(passphrase)
            store.initialize(passphrase=passphrase.encode())
        else:
            try:
                store.unseal(passphrase.encode())
            except InvalidInput:
                throttle.note_failure(who, address)
                raise
        throttle.clear(who, address)


def store_seal(*, actor, confirmed: bool = False) -> None:
    """Seal a passphrase store: no encrypted disk opens until an admin unseals it.
    Refused unless `confirmed`."""
    action = "encryption.store.seal"
    authorize(actor, "encryption.keys", anywhere=True, action=action)
    with audited(actor=actor, action=action, target=STORE_TARGET):
        if not confirmed:
            raise InvalidInput("Sealing the key store needs confirmation.")
        get_store().seal()


def kek_rotate(*, actor, host: Host, new_passphrase: str = "", confirmed: bool = False) -> Job:
    """Create KEK version N+1 (for a passphrase store, from `new_passphrase`, derived here)
    and enqueue the job that re-wraps every key file and retires version N. Refused unless
    `confirmed`."""
    action = "encryption.kek.rotate"
    authorize(actor, "encryption.keys", anywhere=True, action=action)
    store = get_store()
    with audited(actor=actor, action=action, target=STORE_TARGET) as ev:
        if not confirmed:
            raise InvalidInput("Rotating the key-encryption key needs confirmation.")
        store.require_unsealed()
        if isinstance(store.provider, PassphraseKek) and len(store.meta()["versions"]) == 1:
            if len(new_passphrase) < MIN_STORE_PASSPHRASE:
                raise InvalidInput(
                    f"Type the new store passphrase (at least {MIN_STORE_PASSPHRASE} characters) to rotate its KEK."
                )
        version = store.rotation_begin(passphrase=new_passphrase.encode() or None)
        with transaction.atomic():
            job = jobs.job_enqueue(actor=actor, kind=action, target=host, host=host, params={"kek_version": version})
        ev.recorded = True  # job_enqueue recorded "requested", the job records its end
    return job


@jobs.handler("encryption.kek.rotate")
def _run_kek_rotate(job: Job, progress: jobs.Progress) -> dict:
    authorize(job_actor(job), "encryption.keys", anywhere=True, action=job.kind)
    store = get_store()
    store.require_unsealed()
    key_ids = store.key_ids()
    rewrapped = 0
    for index, key_id in enumerate(key_ids):
        if store.rewrap(key_id):
            rewrapped += 1
        progress(5 + 85 * (index + 1) // max(len(key_ids), 1), f"re-wrapped {index + 1} of {len(key_ids)} keys")
    retired = store.rotation_finish()
    return {"kek_version": store.current_version(), "rewrapped": rewrapped, "retired": retired}
