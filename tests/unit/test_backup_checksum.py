"""A backup reuses the checksum of a disk file whose identity (device, inode, size, mtime,
ctime) did not change since the last good run, as restic itself skips such a file; any write
changes the identity and the file is read again. A file changed within RACY_SECONDS of its
checksum is not vouched for (file times move in coarse clock ticks)."""

from __future__ import annotations

import hashlib
import os
import time

from apps.backups.services import common


def test_an_unchanged_file_keeps_its_checksum_and_a_written_one_is_read_again(tmp_path, monkeypatch):
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(1 << 16))
    reads = []
    real = common.sha256_file
    monkeypatch.setattr(common, "sha256_file", lambda p: reads.append(p) or real(p))
    assert common.checksum(str(path))[2] == {}, "a file written just now was vouched for"

    monkeypatch.setattr(common, "RACY_SECONDS", 0)
    digest, size, identity = common.checksum(str(path))
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest() and size == 1 << 16 and identity
    previous = {"sha256": digest, "size": size, "identity": identity}
    assert common.checksum(str(path), previous) == (digest, size, identity)
    assert len(reads) == 2, "an unchanged file was read again"

    time.sleep(0.03)  # past the kernel's coarse timestamp tick
    with open(path, "r+b") as fh:  # same size; even with the old mtime put back, ctime moves
        fh.write(b"x")
    os.utime(path, ns=(identity["mtime_ns"], identity["mtime_ns"]))
    digest2, _, identity2 = common.checksum(str(path), previous)
    assert len(reads) == 3 and digest2 != digest and identity2 != identity
