"""Benchmark: encrypt-existing throughput against a plain `dd` copy of the same image.

Both run in the same process, on the same filesystem, on the same random image: `dd`
copies it (bs=4M, fsync); the encryption gateway encrypts a copy in place exactly as the
encrypt-existing job does (grow by 32 MiB, `cryptsetup reencrypt --encrypt
--force-offline-reencrypt`, LUKS2 aes-xts-plain64 512-bit). The PBKDF cost is the test
setting's (it is paid once per run, not per byte). Ratio = encrypt time / dd time: how
many times longer encrypting a disk takes than copying it. Not a test: nothing asserts.

    python -m tests.bench.bench_encryption [--mib 512]
    make bench            (tests/bench/run.py calls run(args) of every bench module)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

NAME = "encrypt-existing vs dd copy"
TARGET = "<= 4x"


def _random_image(path: Path, mib: int) -> None:
    with open(path, "wb") as fh:
        for _ in range(mib):
            fh.write(os.urandom(1 << 20))
        fh.flush()
        os.fsync(fh.fileno())


def measure(mib: int, workdir: Path) -> dict:
    from apps.encryption.gateways import cryptsetup as cs
    from apps.encryption.gateways import files
    from apps.encryption.services.common import luks_params

    source = workdir / "plain.img"
    _random_image(source, mib)
    copy = workdir / "dd-copy.img"
    started = time.perf_counter()
    subprocess.run(
        ["dd", f"if={source}", f"of={copy}", "bs=4M", "conv=fsync", "status=none"], check=True, capture_output=True
    )
    dd_seconds = time.perf_counter() - started
    copy.unlink()

    target = workdir / "encrypted.img"
    shutil.copyfile(source, target)
    key = os.urandom(64)
    started = time.perf_counter()
    files.grow(str(target), mib * (1 << 20) + cs.ENCRYPT_RESERVE_BYTES)
    cs.reencrypt_encrypt(str(target), key, luks_params(), timeout=3600, workdir=str(workdir / "cs-work"))
    with open(target, "rb") as fh:
        os.fsync(fh.fileno())
    encrypt_seconds = time.perf_counter() - started
    assert cs.test_key(str(target), key)
    return {
        "name": NAME,
        "ratio": encrypt_seconds / dd_seconds,
        "target": TARGET,
        "image_mib": mib,
        "dd_mib_per_s": round(mib / dd_seconds, 1),
        "encrypt_mib_per_s": round(mib / encrypt_seconds, 1),
        "dd_seconds": round(dd_seconds, 2),
        "encrypt_seconds": round(encrypt_seconds, 2),
    }


def run(args) -> dict:
    """Entry point of tests/bench/run.py (Django is set up there)."""
    mib = max(16, int(512 * getattr(args, "scale", 1.0)))
    with tempfile.TemporaryDirectory(prefix="bench-enc-", dir=os.environ.get("PORTAL_VAR_DIR")) as tmp:
        return measure(mib, Path(tmp))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=512, help="image size in MiB")
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hypervisor_web.settings.test")
    import django

    django.setup()
    with tempfile.TemporaryDirectory(prefix="bench-enc-") as tmp:
        result = measure(args.mib, Path(tmp))
    print(f"{result['name']}: ratio {result['ratio']:.2f} (target {result['target']})")
    for key, value in result.items():
        if key not in ("name", "ratio", "target"):
            print(f"    {key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
