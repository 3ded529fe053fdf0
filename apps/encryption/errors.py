from apps.core.errors import Conflict


class StoreSealed(Conflict):
    """The key store's KEK is not available (passphrase provider not unsealed, token absent)."""


class KeyFileRejected(Conflict):
    """A key file failed a check (mode, owner, tampered bytes, moved from another disk)."""
