"""cryptsetup, the only way this project touches a LUKS header.

Keys travel on stdin (`--key-file -`) or, when a command needs two (luksAddKey), the second
through a pipe named /dev/fd/N: never in argv, the environment, a log line or an error.
Every function takes plain values and raises the project's own errors.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field

from apps.core import runner
from apps.core.errors import Conflict, GatewayError, InvalidInput
from apps.core.gateways import host_paths

CRYPTSETUP = "cryptsetup"
WRONG_KEY_STATUS = 2  # cryptsetup's exit status for "No key available with this passphrase"
# in-place encryption moves the data to make room for the header: the image grows by this
ENCRYPT_RESERVE_BYTES = 32 << 20
NEEDS_REPAIR = "requires reencryption recovery"  # cryptsetup: "... Run repair first."


@dataclass(frozen=True)
class LuksParams:
    """How a new LUKS2 header or key slot is made (from settings; tests lower the PBKDF)."""

    cipher: str = "aes-xts-plain64"
    key_size: int = 512
    pbkdf: str = "argon2id"
    pbkdf_memory_kib: int = 1048576
    iter_time_ms: int = 2000
    force_iterations: int = 0

    def pbkdf_args(self) -> list[str]:
        args = ["--pbkdf", self.pbkdf]
        if self.pbkdf.startswith("argon2"):
            args += ["--pbkdf-memory", str(self.pbkdf_memory_kib)]
        if self.force_iterations:
            args += ["--pbkdf-force-iterations", str(self.force_iterations)]
        else:
            args += ["--iter-time", str(self.iter_time_ms)]
        return args

    def format_args(self) -> list[str]:
        return ["--type", "luks2", "--cipher", self.cipher, "--key-size", str(self.key_size), *self.pbkdf_args()]


@dataclass(frozen=True)
class KeySlot:
    slot: int
    pbkdf: str
    memory_kib: int = 0
    iterations: int = 0


@dataclass(frozen=True)
class LuksInfo:
    version: int
    uuid: str
    cipher: str
    key_size: int  # bits
    data_offset: int  # bytes
    sector_size: int
    slots: tuple[KeySlot, ...] = field(default_factory=tuple)
    reencrypt_pending: bool = False
    # killed while writing a block ("in-reencryption" segment): `cryptsetup repair` first
    reencrypt_crashed: bool = False

    @property
    def pbkdf(self) -> str:
        return ", ".join(sorted({s.pbkdf for s in self.slots})) or "-"

    @property
    def slot_numbers(self) -> list[int]:
        return [s.slot for s in self.slots]


def _run(argv: list[str], *, key: bytes | None = None, timeout: float = 120, check: bool = True, pass_fds=(), cwd=None):
    return runner.run([CRYPTSETUP, *argv], stdin=key, timeout=timeout, check=check, pass_fds=pass_fds, cwd=cwd)


@contextmanager
def _workdir(workdir: str):
    """cryptsetup's in-place encryption writes a temporary header (LUKS2-temp-*.new) to its
    working directory: give it a private one, and sweep what a killed run left behind."""
    os.makedirs(workdir, mode=0o700, exist_ok=True)
    try:
        yield workdir
    finally:
        for name in os.listdir(workdir):
            if name.startswith("LUKS2-temp-"):
                try:
                    os.unlink(os.path.join(workdir, name))
                except FileNotFoundError:
                    pass


@contextmanager
def _secret_fd(secret: bytes):
    """A pipe whose read end holds `secret`; yields (fd, "/dev/fd/N") for argv."""
    if len(secret) > 60000:  # must fit in the pipe buffer: nobody reads before we return
        raise ValueError("secret too large for a pipe")
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, secret)
        os.close(write_fd)
        write_fd = -1
        yield read_fd, f"/dev/fd/{read_fd}"
    finally:
        if write_fd >= 0:
            os.close(write_fd)
        os.close(read_fd)


def _check_path(path: str) -> None:
    if not os.path.isfile(path) and not os.path.exists(path):
        raise InvalidInput(f"{path} does not exist.")


def is_luks(path: str) -> bool:
    _check_path(path)
    return _run(["isLuks", path], check=False).returncode == 0


def luks_format(path: str, key: bytes, params: LuksParams, *, timeout: float = 600) -> None:
    """Write a new LUKS2 header with `key` in slot 0 (refuses a device that is already LUKS)."""
    if is_luks(path):
        raise Conflict(f"{path} is already a LUKS device; refusing to format it.")
    _run(
        ["luksFormat", "-q", *params.format_args(), "--key-file", "-", "--key-slot", "0", path],
        key=key,
        timeout=timeout,
    )


def test_key(path: str, key: bytes, *, slot: int | None = None, header: str | None = None) -> bool:
    """True when `key` opens a key slot of the header (`open --test-passphrase`: no mapping)."""
    argv = ["open", "--test-passphrase", "--key-file", "-"]
    if slot is not None:
        argv += ["--key-slot", str(slot)]
    if header:
        argv += ["--header", header]
    result = _run([*argv, path], key=key, check=False, timeout=300)
    if result.returncode == 0:
        return True
    if result.returncode == WRONG_KEY_STATUS:
        return False
    raise GatewayError(f"cryptsetup could not read the LUKS header of {path}: {_last_line(result.stderr)}")


def add_key(path: str, existing_key: bytes, new_key: bytes, params: LuksParams) -> int:
    """Add `new_key` to a free slot (authorised by `existing_key`); returns the slot."""
    before = set(dump(path).slot_numbers)
    with _secret_fd(new_key) as (fd, fd_path):
        result = _run(
            ["luksAddKey", "-q", *params.pbkdf_args(), "--key-file", "-", path, fd_path],
            key=existing_key,
            check=False,
            pass_fds=(fd,),
            timeout=600,
        )
    if result.returncode == WRONG_KEY_STATUS:
        raise InvalidInput(f"The current key does not open {path}; no key slot was added.")
    if result.returncode != 0:
        raise GatewayError(f"cryptsetup could not add a key slot to {path}: {_last_line(result.stderr)}")
    added = set(dump(path).slot_numbers) - before
    if len(added) != 1:
        raise GatewayError(f"cryptsetup reported success but no new key slot appeared on {path}.")
    return added.pop()


def kill_slot(path: str, slot: int, remaining_key: bytes) -> None:
    """Remove key slot `slot`; `remaining_key` (of another slot) proves the disk stays openable."""
    result = _run(["luksKillSlot", "-q", "--key-file", "-", path, str(slot)], key=remaining_key, check=False)
    if result.returncode == WRONG_KEY_STATUS:
        raise InvalidInput(f"The remaining key does not open {path}; slot {slot} was kept.")
    if result.returncode != 0:
        raise GatewayError(f"cryptsetup could not remove key slot {slot} of {path}: {_last_line(result.stderr)}")


def header_backup(path: str, destination: str) -> None:
    """Save the LUKS header of `path` to `destination` (a new file, mode 0400)."""
    if os.path.exists(destination):
        raise Conflict(f"{destination} already exists.")
    tmp = f"{destination}.tmp-{os.getpid()}"
    try:
        _run(["luksHeaderBackup", path, "--header-backup-file", tmp])
        os.chmod(tmp, 0o400)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.rename(tmp, destination)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _fsync_dir(os.path.dirname(destination))


def reencrypt_encrypt(path: str, key: bytes, params: LuksParams, *, timeout: float, workdir: str) -> None:
    """Encrypt a plain image in place (offline). Its last ENCRYPT_RESERVE_BYTES must be free
    (the caller grows the image first); cryptsetup moves the data forward to fit the header.
    Interrupted, the header records where it stopped: `reencrypt_resume` continues."""
    with _workdir(workdir) as cwd:
        _run(
            [
                "reencrypt",
                "-q",
                "--encrypt",
                *params.format_args(),
                "--reduce-device-size",
                f"{ENCRYPT_RESERVE_BYTES >> 20}M",
                "--force-offline-reencrypt",
                "--key-file",
                "-",
                path,
            ],
            key=key,
            timeout=timeout,
            cwd=cwd,
        )


def reencrypt_resume(path: str, key: bytes, *, timeout: float, workdir: str) -> None:
    """Finish an interrupted re-encryption from where its header says it stopped. A run
    killed while it wrote a block leaves a header that needs `cryptsetup repair` first
    ("Device requires reencryption recovery"): repaired here, then resumed."""
    argv = ["reencrypt", "-q", "--resume-only", "--force-offline-reencrypt", "--key-file", "-", path]
    with _workdir(workdir) as cwd:
        result = _run(argv, key=key, timeout=timeout, check=False, cwd=cwd)
        if result.returncode != 0 and NEEDS_REPAIR in result.stderr:
            reencrypt_repair(path, key, timeout=timeout)
            result = _run(argv, key=key, timeout=timeout, check=False, cwd=cwd)
    if result.returncode == WRONG_KEY_STATUS:
        raise InvalidInput(f"The stored key does not open {path}; the re-encryption cannot resume.")
    if result.returncode != 0:
        raise GatewayError(f"cryptsetup could not resume the re-encryption of {path}: {_last_line(result.stderr)}")


def reencrypt_repair(path: str, key: bytes, *, timeout: float) -> None:
    """Recover the header of a re-encryption killed mid-block (it replays the block from the
    checkpoint in the header); the key, on stdin, unlocks the volume key for that."""
    result = _run(["repair", "-q", "--key-file", "-", path], key=key, timeout=timeout, check=False)
    if result.returncode == WRONG_KEY_STATUS:
        raise InvalidInput(f"The stored key does not open {path}; its interrupted re-encryption cannot be repaired.")
    if result.returncode != 0:
        raise GatewayError(
            f"cryptsetup could not repair the interrupted re-encryption of {path}: {_last_line(result.stderr)}"
        )


def dump(path: str) -> LuksInfo:
    """Parse the header: JSON metadata for LUKS2, the text dump for LUKS1 (QEMU's format)."""
    if not is_luks(path):
        raise InvalidInput(f"{path} is not a LUKS device.")
    text = _run(["luksDump", path]).stdout
    version = int(_field(text, "Version") or "1")
    if version == 2:
        return _parse_luks2(json.loads(_run(["luksDump", "--dump-json-metadata", path]).stdout), text)
    return _parse_luks1(text)


def _parse_luks2(meta: dict, text: str) -> LuksInfo:
    segments = meta.get("segments", {})
    crypt = next((s for _k, s in sorted(segments.items()) if s.get("type") == "crypt"), {})
    digests_key_size = 0
    slots = []
    for number, slot in sorted(meta.get("keyslots", {}).items(), key=lambda kv: int(kv[0])):
        if slot.get("type") != "luks2":  # e.g. the "reencrypt" slot of an unfinished re-encryption
            continue
        kdf = slot.get("kdf", {})
        digests_key_size = digests_key_size or int(slot.get("key_size", 0)) * 8
        slots.append(
            KeySlot(
                slot=int(number),
                pbkdf=kdf.get("type", ""),
                memory_kib=int(kdf.get("memory", 0) or 0),
                iterations=int(kdf.get("time", 0) or kdf.get("iterations", 0) or 0),
            )
        )
    requirements = meta.get("config", {}).get("requirements", {}).get("mandatory", [])
    return LuksInfo(
        version=2,
        uuid=_field(text, "UUID"),
        cipher=crypt.get("encryption", ""),
        key_size=digests_key_size,
        data_offset=int(crypt.get("offset", 0) or 0),
        sector_size=int(crypt.get("sector_size", 512) or 512),
        slots=tuple(slots),
        reencrypt_pending=any("reencrypt" in r for r in requirements),
        reencrypt_crashed=any("in-reencryption" in s.get("flags", []) for s in segments.values()),
    )


def _parse_luks1(text: str) -> LuksInfo:
    slots = []
    for m in re.finditer(r"^Key Slot (\d+): ENABLED\n(?:\t.*\n)*?\tIterations:\s+(\d+)", text, re.M):
        slots.append(KeySlot(slot=int(m.group(1)), pbkdf="pbkdf2", iterations=int(m.group(2))))
    cipher = f"{_field(text, 'Cipher name')}-{_field(text, 'Cipher mode')}"
    return LuksInfo(
        version=1,
        uuid=_field(text, "UUID"),
        cipher=cipher,
        key_size=int(_field(text, "MK bits") or 0),
        data_offset=int(_field(text, "Payload offset") or 0) * 512,
        sector_size=512,
        slots=tuple(slots),
    )


def _field(text: str, name: str) -> str:
    m = re.search(rf"^{re.escape(name)}:\s*(.*)$", text, re.M)
    return m.group(1).strip() if m else ""


def _last_line(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    return lines[-1] if lines else "no details"


def _fsync_dir(path: str) -> None:
    fd = os.open(path or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- device-mapper


@dataclass(frozen=True)
class MapperCapability:
    """Whether this machine can open LUKS2 mappings: `mode` is "device-mapper" (it can),
    "simulated" (test settings stand in for the kernel) or "missing" (`reason` says why)."""

    mode: str
    reason: str

    @property
    def available(self) -> bool:
        return self.mode != "missing"


def _kernel_lists_device_mapper(misc: str = "/proc/misc") -> bool:
    try:
        with open(misc, encoding="ascii", errors="replace") as fh:
            return any(line.split()[1:] == ["device-mapper"] for line in fh if line.strip())
    except OSError:
        return False


def _crypt_target_available() -> bool:
    """dm-crypt is loaded (`dmsetup targets` lists crypt) or loadable (its module file)."""
    try:
        result = runner.run(["dmsetup", "targets"], timeout=10, check=False)
        if result.returncode == 0 and any(ln.split()[:1] == ["crypt"] for ln in result.stdout.splitlines()):
            return True
    except (GatewayError, OSError):
        pass
    modules = f"/lib/modules/{os.uname().release}/kernel/drivers/md"
    return os.path.isdir(modules) and any(n.startswith("dm-crypt.ko") for n in os.listdir(modules))


def device_mapper_capability() -> MapperCapability:
    """Read from the kernel of this machine (where cryptsetup runs): the device-mapper
    driver (/proc/misc, /dev/mapper/control) and its crypt target."""
    if not _kernel_lists_device_mapper():
        return MapperCapability("missing", "the kernel has no device-mapper driver (/proc/misc lists none)")
    if not os.path.exists("/dev/mapper/control"):
        return MapperCapability("missing", "/dev/mapper/control is missing")
    if not _crypt_target_available():
        return MapperCapability("missing", "device-mapper has no crypt target (dm_crypt is not loaded or installed)")
    return MapperCapability("device-mapper", "device-mapper with dm-crypt")


class CryptsetupDeviceMapper:
    """Opens and closes real dm-crypt mappings (`cryptsetup open/close`), key on stdin."""

    block = True  # the VM's disk points at a block device

    def capability(self) -> MapperCapability:
        return device_mapper_capability()

    def mapping_path(self, name: str) -> str:
        return f"/dev/mapper/{name}"

    def open(self, path: str, name: str, key: bytes) -> str:
        result = _run(["open", "--type", "luks", "--key-file", "-", path, name], key=key, check=False)
        if result.returncode == WRONG_KEY_STATUS:
            raise InvalidInput(f"The stored key does not open {path}.")
        if result.returncode != 0:
            raise GatewayError(f"cryptsetup could not open {path}: {_last_line(result.stderr)}")
        return f"/dev/mapper/{name}"

    def close(self, name: str) -> None:
        if os.path.exists(f"/dev/mapper/{name}"):
            _run(["close", name])

    def is_open(self, name: str) -> bool:
        return os.path.exists(f"/dev/mapper/{name}")


class SimulatedDeviceMapper:
    """SIMULATION of the one kernel step this machine cannot run (it has no device-mapper).

    `open` does everything the real one does except the kernel call: it proves the key opens
    the header with cryptsetup (`open --test-passphrase`, real), then stands a plain sparse
    file of the payload's size in for /dev/mapper/NAME (under `root`) so the rest of the
    flow (pointing the VM's disk at the mapping, starting it, closing on shutdown) runs for
    real. The stand-in holds no decrypted data. Selected by settings.ENCRYPTION_DEVICE_MAPPER
    = "simulated" (tests, and hosts without dm-crypt); production uses CryptsetupDeviceMapper.
    """

    block = False  # the stand-in is a plain file

    def capability(self) -> MapperCapability:
        return MapperCapability("simulated", "SIMULATED device-mapper (test settings only)")

    def __init__(self, root: str):
        self.root = root

    def mapping_path(self, name: str) -> str:
        return os.path.join(self.root, name)

    _path = mapping_path

    def open(self, path: str, name: str, key: bytes) -> str:
        if not test_key(path, key):
            raise InvalidInput(f"The stored key does not open {path}.")
        host_paths.make_traversable_dir(self.root)  # like /dev/mapper: QEMU's user may enter it
        info = dump(path)
        size = max(os.path.getsize(path) - info.data_offset, 0)
        target = self._path(name)
        with open(target, "wb") as fh:
            fh.truncate(size)
        return target

    def close(self, name: str) -> None:
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            pass

    def is_open(self, name: str) -> bool:
        return os.path.exists(self._path(name))
