"""System checks: production keeps the PBKDF cost of LUKS key slots and of the passphrase
KEK at safe levels (only the test settings, ENCRYPTION_ALLOW_WEAK_PBKDF = True, may lower
it); the KEK directory lies outside the key directory; the tpm2 provider has a TPM."""

import os

from django.conf import settings
from django.core.checks import Error, register

from .keystore import kek_dir_problem

MIN_LUKS_MEMORY_KIB = 262144  # below cryptsetup's 1 GiB default only on small hosts
MIN_KDF_MEMORY_KIB = 65536  # RFC 9106's second recommended Argon2id option


@register("security")
def pbkdf_cost(app_configs, **kwargs):
    if getattr(settings, "ENCRYPTION_ALLOW_WEAK_PBKDF", False):
        return []
    errors = []
    if settings.ENCRYPTION_PBKDF_MEMORY_KIB < MIN_LUKS_MEMORY_KIB or 0 < settings.ENCRYPTION_PBKDF_FORCE_ITERATIONS < 4:
        errors.append(
            Error(
                "The LUKS PBKDF cost is lowered (ENCRYPTION_PBKDF_MEMORY_KIB / ENCRYPTION_PBKDF_FORCE_ITERATIONS).",
                hint=f"Use at least {MIN_LUKS_MEMORY_KIB} KiB and 4 iterations outside tests.",
                id="encryption.E001",
            )
        )
    if settings.ENCRYPTION_KDF_MEMORY_KIB < MIN_KDF_MEMORY_KIB or settings.ENCRYPTION_KDF_ITERATIONS < 3:
        errors.append(
            Error(
                "The Argon2id cost of the passphrase KEK and escrow files is lowered.",
                hint=f"Use ENCRYPTION_KDF_MEMORY_KIB >= {MIN_KDF_MEMORY_KIB} and ENCRYPTION_KDF_ITERATIONS >= 3.",
                id="encryption.E002",
            )
        )
    if settings.ENCRYPTION_DEVICE_MAPPER not in ("cryptsetup", "simulated"):
        errors.append(Error("ENCRYPTION_DEVICE_MAPPER must be cryptsetup or simulated.", id="encryption.E003"))
    return errors


@register("security")
def kek_apart(app_configs, **kwargs):
    """The KEK never lies beside the keys it wraps: refused at start-up (and by the store)."""
    errors = []
    problem = kek_dir_problem(settings.ENCRYPTION_KEY_DIR, settings.ENCRYPTION_KEK_FILE_DIR)
    if problem:
        errors.append(Error(problem, id="encryption.E004"))
    tcti = settings.ENCRYPTION_TPM2_TCTI
    if settings.ENCRYPTION_KEK_PROVIDER == "tpm2" and tcti.startswith("device:"):
        device = tcti.partition(":")[2]
        if not os.path.exists(device):
            errors.append(
                Error(
                    f"The tpm2 KEK provider is chosen but this host has no TPM at {device}.",
                    hint="Use a host with a TPM 2.0, set ENCRYPTION_TPM2_TCTI, or choose another provider.",
                    id="encryption.E005",
                )
            )
    return errors
