"""Benchmark: backing up a disk image of random data the way a backup run does (restic
backup with the password through a pipe, sha256 computed alongside) against a raw
sequential read of the same file (`dd bs=4M of=/dev/null`), in the same run. Then an
unchanged rerun, and a rerun after 5% of the image's 1 MiB blocks were rewritten. Reports
the three times, the data restic added and the repository's size. Not a test: nothing
asserts. The image is dropped from the page cache (posix_fadvise DONTNEED, this file only)
before the raw read and before each backup, so every reader starts from the disk.

    python -m tests.bench.bench_backup [--mib 2048]
    make bench            (tests/bench/run.py calls run(args) of every bench module)

Targets (issue #13): first run at least 0.7x the raw read's throughput; unchanged rerun
under 10% of the first run's time.

The baseline is fair when both sides see the same cache state. The ratio compares both cold
(each reader starts from the disk). Also reported: both warm (the image read once, then the
raw read and a backup into a fresh repository both from the page cache), and the ceiling the
CPU sets: the raw cold read's time over restic's CPU seconds shared by every core of the
machine (what the ratio would be with restic alone on an idle machine and perfect use of
the cores). restic's work per byte (content-defined chunking, SHA-256 of every chunk, AES-CTR
and Poly1305, zstd unless compression is off) is CPU-bound; a raw read is not.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

NAME = "backup throughput / raw read"
TARGET = ">= 0.7"


def _random_image(path: Path, mib: int) -> None:
    with open(path, "wb") as fh:
        for _ in range(mib):
            fh.write(os.urandom(1 << 20))
        fh.flush()
        os.fsync(fh.fileno())


def _evict(path: Path) -> None:
    """Drop this file's pages from the page cache (nothing else's)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def common_racy_seconds() -> float:
    from apps.backups.services.common import RACY_SECONDS

    return RACY_SECONDS


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and its waited-for children (restic)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _backup(handle, image: Path, compression: str = "auto", cpu: list | None = None,
            previous: dict | None = None) -> tuple[float, int]:  # fmt: skip
    """One backup as a run does it: restic reads the file while a thread checksums it (the
    checksum of the previous run is reused when the file's identity did not change)."""
    from apps.backups.services.common import checksum
    from apps.core.gateways import restic

    _evict(image)
    cpu_before = _cpu_seconds()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as pool:
        digest = pool.submit(checksum, str(image), previous.get("disk") if previous is not None else None)
        summary = restic.backup(handle, [str(image)], tags=["vm:bench"], host="bench", timeout=7200,
                                compression=compression)  # fmt: skip
        sha, size, identity = digest.result()
        if previous is not None:
            previous["disk"] = {"sha256": sha, "size": size, "identity": identity}
    elapsed = time.perf_counter() - started
    if cpu is not None:
        cpu.append(_cpu_seconds() - cpu_before)
    return elapsed, summary.data_added


def _sha256_alone(image: Path) -> tuple[float, float]:
    """The portal's own per-byte work beside restic: the checksum pass (wall, CPU)."""
    from apps.backups.services.common import sha256_file

    _evict(image)
    cpu_before, started = _cpu_seconds(), time.perf_counter()
    sha256_file(str(image))
    return time.perf_counter() - started, _cpu_seconds() - cpu_before


def measure(mib: int, workdir: Path) -> dict:
    from apps.core.gateways import restic

    image = workdir / "disk.img"
    _random_image(image, mib)
    time.sleep(common_racy_seconds())  # an image is not backed up in the clock tick it was written in
    _evict(image)
    started = time.perf_counter()
    subprocess.run(["dd", f"if={image}", "of=/dev/null", "bs=4M", "status=none"], check=True, capture_output=True)
    raw_seconds = time.perf_counter() - started

    repo_dir = workdir / "repo"
    handle = restic.Repository(str(repo_dir), os.urandom(32).hex().encode(), str(workdir / "cache"))
    restic.init(handle)
    first_cpu: list[float] = []
    previous: dict = {}  # the last run's disk entry, as BackupRun.disks keeps it
    first_seconds, first_added = _backup(handle, image, cpu=first_cpu, previous=previous)
    sha_seconds, sha_cpu = _sha256_alone(image)
    # the same first backup without restic's compression attempt (BACKUP_COMPRESSION=off, and
    # what the portal does for a VM whose disks are all encrypted: ciphertext does not compress)
    plain = restic.Repository(str(workdir / "repo-off"), os.urandom(32).hex().encode(), str(workdir / "cache"))
    restic.init(plain)
    off_cpu: list[float] = []
    off_seconds, _ = _backup(plain, image, compression="off", cpu=off_cpu)
    shutil.rmtree(workdir / "repo-off", ignore_errors=True)
    # both warm: the image in the page cache for the raw read and for a backup into a new repository
    subprocess.run(["dd", f"if={image}", "of=/dev/null", "bs=4M", "status=none"], check=True, capture_output=True)
    started = time.perf_counter()
    subprocess.run(["dd", f"if={image}", "of=/dev/null", "bs=4M", "status=none"], check=True, capture_output=True)
    raw_warm_seconds = time.perf_counter() - started
    warm = restic.Repository(str(workdir / "repo-warm"), os.urandom(32).hex().encode(), str(workdir / "cache"))
    restic.init(warm)
    started = time.perf_counter()
    restic.backup(warm, [str(image)], tags=["vm:bench"], host="bench", timeout=7200, compression="off")
    warm_seconds = time.perf_counter() - started
    shutil.rmtree(workdir / "repo-warm", ignore_errors=True)
    rerun_seconds, rerun_added = _backup(handle, image, previous=previous)
    blocks = random.Random(13).sample(range(mib), max(1, mib * 5 // 100))
    with open(image, "r+b") as fh:
        for block in blocks:
            fh.seek(block << 20)
            fh.write(os.urandom(1 << 20))
    changed_seconds, changed_added = _backup(handle, image, previous=previous)
    return {
        "name": NAME,
        "ratio": raw_seconds / first_seconds,  # backup throughput as a fraction of the raw read's
        "target": TARGET,
        "image_mib": mib,
        "raw_read_cold_seconds": round(raw_seconds, 2),
        "raw_read_mib_per_s": round(mib / raw_seconds, 1),
        "first_backup_mib_per_s": round(mib / first_seconds, 1),
        "first_backup_seconds": round(first_seconds, 2),
        "first_backup_cpu_seconds_per_gib": round(first_cpu[0] * 1024 / mib, 2),
        "checksum_pass_seconds": round(sha_seconds, 2),
        "checksum_pass_cpu_seconds": round(sha_cpu, 2),
        "first_backup_compression_off_seconds": round(off_seconds, 2),
        "first_backup_compression_off_ratio": round(raw_seconds / off_seconds, 3),
        "first_backup_compression_off_cpu_seconds_per_gib": round(off_cpu[0] * 1024 / mib, 2),
        "cpu_ceiling_ratio": round(raw_seconds / (off_cpu[0] / (os.cpu_count() or 1)), 3),
        "both_warm_raw_read_seconds": round(raw_warm_seconds, 3),
        "both_warm_backup_compression_off_seconds": round(warm_seconds, 2),
        "both_warm_ratio": round(raw_warm_seconds / warm_seconds, 4),
        "cpus": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "unchanged_rerun_seconds": round(rerun_seconds, 2),
        "unchanged_rerun_percent_of_first": round(100 * rerun_seconds / first_seconds, 1),
        "changed_5_percent_seconds": round(changed_seconds, 2),
        "added_first_mib": round(first_added / (1 << 20), 1),
        "added_unchanged_mib": round(rerun_added / (1 << 20), 2),
        "added_changed_mib": round(changed_added / (1 << 20), 1),
        "repository_mib": round(_du(repo_dir) / (1 << 20), 1),
    }


def run(args) -> dict:
    """Entry point of tests/bench/run.py (Django is set up there)."""
    mib = max(64, int(2048 * getattr(args, "scale", 1.0)))
    with tempfile.TemporaryDirectory(prefix="bench-backup-", dir=os.environ.get("PORTAL_VAR_DIR")) as tmp:
        return measure(mib, Path(tmp))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=2048, help="image size in MiB")
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hypervisor_web.settings.test")
    import django

    django.setup()
    with tempfile.TemporaryDirectory(prefix="bench-backup-") as tmp:
        result = measure(args.mib, Path(tmp))
    print(f"{result['name']}: ratio {result['ratio']:.2f} (target {result['target']})")
    for key, value in result.items():
        if key not in ("name", "ratio", "target"):
            print(f"    {key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
