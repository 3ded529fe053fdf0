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

Modules: `common` (sizes, atomic private files, Argon2id), `providers` (the KEK providers),
`store` (KeyStore), `escrow` (recovery-passphrase escrow documents).
"""

from .common import DISK_KEY_BYTES, argon2id, ensure_private_dir, read_private_file, write_private_file
from .escrow import ESCROW_FORMAT, MIN_RECOVERY_PASSPHRASE, escrow_unwrap, escrow_wrap
from .providers import PROVIDERS, FileKek, KekProvider, PassphraseKek, Pkcs11Kek, Tpm2Kek
from .store import KeyStore, StoredKey, kek_dir_problem

__all__ = [
    "DISK_KEY_BYTES",
    "ESCROW_FORMAT",
    "MIN_RECOVERY_PASSPHRASE",
    "PROVIDERS",
    "FileKek",
    "KekProvider",
    "KeyStore",
    "PassphraseKek",
    "Pkcs11Kek",
    "StoredKey",
    "Tpm2Kek",
    "argon2id",
    "ensure_private_dir",
    "escrow_unwrap",
    "escrow_wrap",
    "kek_dir_problem",
    "read_private_file",
    "write_private_file",
]
