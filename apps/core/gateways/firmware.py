"""UEFI variable stores (OVMF_VARS): a per-VM copy of OVMF's empty varstore with a profile's
own secure-boot keys (PK, KEK, db) enrolled, and the certificates a varstore holds.

Through `virt-fw-vars` (PyPI virt-firmware): argv lists and timeouts, through
apps.core.runner. The certificates are public; they go to the command as files in a
private temporary directory (a certificate is no secret, but argv is no place for 4 KiB of
PEM). The file is written beside its final path and renamed into place: a failed
enrolment leaves no half-written varstore behind."""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile

from .. import runner
from ..errors import GatewayError

# the venv's own script first (requirements.txt installs virt-firmware there), else PATH
VIRT_FW_VARS = os.path.join(os.path.dirname(sys.executable), "virt-fw-vars")
TIMEOUT = 60


def _tool() -> str:
    if os.access(VIRT_FW_VARS, os.X_OK):
        return VIRT_FW_VARS
    found = shutil.which("virt-fw-vars")
    if not found:
        raise GatewayError("virt-fw-vars is not installed on this host (pip install virt-firmware).")
    return found


def vars_tool_available() -> bool:
    try:
        _tool()
    except GatewayError:
        return False
    return True


def vars_enroll(template: str, output: str, *, owner: str, pk: str, kek: list[str], db: list[str]) -> str:
    """Write `output`: the varstore `template` with PK set to `pk`, the KEK and db
    certificates added (PEM strings; `owner` the signature owner GUID) and secure boot on."""
    if not os.path.isfile(template):
        raise GatewayError(f"The UEFI varstore template {template} does not exist (install Debian's ovmf).")
    directory = os.path.dirname(output) or "."
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="portal-sbkeys-") as tmp:
        argv = [_tool(), "--input", template]

        def pem_file(kind: str, index: int, pem: str) -> str:
            path = os.path.join(tmp, f"{kind}{index}.pem")
            with open(path, "w", encoding="ascii") as fh:
                fh.write(pem)
            return path

        argv += ["--set-pk", owner, pem_file("pk", 0, pk)]
        for index, pem in enumerate(kek):
            argv += ["--add-kek", owner, pem_file("kek", index, pem)]
        for index, pem in enumerate(db):
            argv += ["--add-db", owner, pem_file("db", index, pem)]
        partial = os.path.join(directory, f".{os.path.basename(output)}.partial")
        argv += ["--secure-boot", "--output", partial]
        try:
            runner.run(argv, timeout=TIMEOUT)
            os.chmod(partial, 0o600)
            os.replace(partial, output)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
    return output


def vars_remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


_VAR = re.compile(r"^name=(\S+) ")
_SUBJECT = re.compile(r"^\s+subject (.*)$")


def vars_certificates(path: str) -> dict[str, list[str]]:
    """{variable name: [certificate subjects]} of the X.509 certificates a varstore holds
    (PK, KEK, db, ...), as `virt-fw-vars --print --verbose` reads them, and "SecureBootEnable"
    as ["on"] or ["off"]."""
    out = runner.run([_tool(), "--input", path, "--print", "--verbose"], timeout=TIMEOUT).stdout
    found: dict[str, list[str]] = {}
    current = ""
    for line in out.splitlines():
        if m := _VAR.match(line):
            current = m.group(1)
            found.setdefault(current, [])
        elif m := _SUBJECT.match(line):
            found[current].append(m.group(1).strip())
        elif current == "SecureBootEnable" and "bool:" in line:
            found[current] = [line.split("bool:", 1)[1].strip().lower()]
    return found
