"""System check: production keeps the PBKDF cost of LUKS key slots and of the passphrase
KEK at safe levels. Only the test settings (ENCRYPTION_ALLOW_WEAK_PBKDF = True) may lower it."""

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
    problem = kek_dir_problem(settings.ENCRYPTION_KEY_DIR, settings.ENCRYPTION_KEK_FILE_DIR)
    if problem:
        return [Error(problem, id="encryption.E004")]
    return []
