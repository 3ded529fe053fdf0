"""TPM 2.0 through tpm2-tools: seal a small secret to the TPM's storage hierarchy and unseal
it again. Only the sealed object's public and private blobs leave the TPM (the private blob
is encrypted by the TPM's own storage key: useless on another TPM); the secret goes in on
stdin (`tpm2_create -i -`) and comes out on stdout (`tpm2_unseal`), never in argv, a file or
a log line. The secret must be text (the callers pass hex).

Without a resource manager (a bare swtpm, or /dev/tpm0) every tool leaves its transient
objects loaded and a TPM holds only a few (swtpm: 3), so each sequence runs under a lock
file and every step flushes the transient objects after itself; the saved contexts in the
working directory load them again (with /dev/tpmrm0 the kernel's resource manager does
this per connection).
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from apps.core import runner
from apps.core.errors import GatewayError

TIMEOUT = 30


def _env(tcti: str) -> dict[str, str]:
    return {**os.environ, "TPM2TOOLS_TCTI": tcti}


def _tool(tcti: str, argv: list[str], *, stdin: bytes | None = None) -> runner.Result:
    """Run one tpm2-tools step, then flush the transient objects it left in the TPM."""
    try:
        return runner.run(argv, stdin=stdin, env=_env(tcti), timeout=TIMEOUT)
    finally:
        runner.run(["tpm2_flushcontext", "-t"], env=_env(tcti), timeout=TIMEOUT, check=False)


@contextmanager
def _session(tcti: str, lock_file: Path):
    """A private working directory holding the primary key's saved context, under the lock.
    The primary key (ECC P-256: quick to derive, unlike RSA on a hardware TPM) derives from
    the TPM's owner seed: the same key every time."""
    with open(lock_file, "a") as lock, tempfile.TemporaryDirectory(prefix="portal-tpm2-") as work:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            primary = os.path.join(work, "primary.ctx")
            _tool(tcti, ["tpm2_createprimary", "-Q", "-C", "o", "-G", "ecc", "-c", primary])
            yield work, primary
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def seal(tcti: str, secret: str, *, lock_file: Path) -> tuple[bytes, bytes]:
    """(public blob, private blob) of `secret` sealed under the owner hierarchy's primary key."""
    with _session(tcti, lock_file) as (work, primary):
        pub, priv = os.path.join(work, "sealed.pub"), os.path.join(work, "sealed.priv")
        _tool(tcti, ["tpm2_create", "-Q", "-C", primary, "-i", "-", "-u", pub, "-r", priv], stdin=secret.encode())
        return Path(pub).read_bytes(), Path(priv).read_bytes()


def unseal(tcti: str, public: bytes, private: bytes, *, lock_file: Path) -> str:
    """The secret sealed in (public, private); GatewayError if this TPM cannot unseal it."""
    with _session(tcti, lock_file) as (work, primary):
        pub, priv, obj = (os.path.join(work, name) for name in ("sealed.pub", "sealed.priv", "sealed.ctx"))
        Path(pub).write_bytes(public)
        Path(priv).write_bytes(private)
        try:
            _tool(tcti, ["tpm2_load", "-Q", "-C", primary, "-u", pub, "-r", priv, "-c", obj])
        except GatewayError:
            raise GatewayError(
                "The TPM cannot load the sealed KEK: it was sealed by another TPM, or the TPM was cleared."
            ) from None
        return _tool(tcti, ["tpm2_unseal", "-c", obj]).stdout
