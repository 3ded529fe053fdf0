"""qemu-img, the only way this project reads or converts a disk image's format.

The caller always names the format it expects (`-f`): qemu-img never probes one, so a guest
that writes a qcow2 header into its raw disk cannot make the host read it as qcow2 (with a
backing file of the guest's choosing). Argv lists and timeouts, through apps.core.runner.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .. import runner
from ..errors import GatewayError

QEMU_IMG = "qemu-img"
FORMATS = ("raw", "qcow2")  # what the portal reads and converts


@dataclass(frozen=True)
class ImageInfo:
    format: str
    virtual_size: int  # bytes the guest sees
    actual_size: int  # bytes allocated on the host
    backing_file: str = ""
    snapshots: tuple[str, ...] = ()  # internal (qcow2) snapshots, by name
    encrypted: bool = False
    data_file: str = ""  # qcow2 with an external data file


def info(path: str, fmt: str, *, timeout: float = 120) -> ImageInfo:
    """What qemu-img says about the image at `path`, read as `fmt` (an error if it is not)."""
    if fmt not in FORMATS:
        raise ValueError(f"unsupported image format {fmt!r}")
    raw = runner.run([QEMU_IMG, "info", "-f", fmt, "--output=json", path], timeout=timeout).stdout
    try:
        data = json.loads(raw)
    except ValueError:
        raise GatewayError(f"qemu-img info gave no readable answer for {path}.") from None
    specific = data.get("format-specific", {}).get("data", {})
    return ImageInfo(
        format=data.get("format", ""),
        virtual_size=int(data.get("virtual-size", 0)),
        actual_size=int(data.get("actual-size", 0)),
        backing_file=data.get("full-backing-filename") or data.get("backing-filename") or "",
        snapshots=tuple(s.get("name", "") or s.get("id", "") for s in data.get("snapshots", [])),
        encrypted=bool(data.get("encrypted", False)),
        data_file=specific.get("data-file", "") or "",
    )


def convert_to_raw(source: str, fmt: str, destination: str, *, timeout: float) -> None:
    """Write a raw copy of `source` (read as `fmt`) to `destination` (sparse where the
    source reads as zeros). Stopped by its timeout, it leaves a partial destination."""
    runner.run([QEMU_IMG, "convert", "-f", fmt, "-O", "raw", source, destination], timeout=timeout)


def identical(first: str, first_fmt: str, second: str, second_fmt: str, *, timeout: float) -> bool:
    """True when both images read the same to a guest (`qemu-img compare`: 0 same, 1 differ)."""
    result = runner.run(
        [QEMU_IMG, "compare", "-f", first_fmt, "-F", second_fmt, first, second], timeout=timeout, check=False
    )
    if result.returncode in (0, 1):
        return result.returncode == 0
    lines = [ln.strip() for ln in result.stderr.splitlines() if ln.strip()]
    raise GatewayError(f"qemu-img could not compare {first} with {second}: {lines[-1] if lines else 'no details'}")
