"""Fixtures of the encryption tests: shut-off VMs with a raw data disk in the session's
pool, jobs run in this process (the code the Celery task runs), a watcher of every
process's command line and environment, and a helper that decrypts a LUKS2 payload in
Python to check data survived."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from apps.core import jobs
from apps.core.gateways import libvirt as gw
from apps.core.models import Job
from apps.encryption.services import get_store
from apps.vms.models import VirtualMachine
from apps.vms.services import inventory_sync
from tests.conftest import unique


@pytest.fixture(scope="session", autouse=True)
def _run_store_removed_at_the_end():
    """The key store, runtime and header-backup directories of this test run
    (var/test-encryption/<run>/, see settings/test.py) go away with the run."""
    yield
    from django.conf import settings

    run_dir = settings.ENCRYPTION_KEY_DIR.parent
    if run_dir.parent.name == "test-encryption":
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture(autouse=True)
def _store_ready():
    get_store().initialize()


@pytest.fixture(autouse=True)
def _hook_registry_cleaned():
    """Entries this test run wrote into the libvirt hook's registry (for VMs the test made)
    go away after each test; other runs' entries stay."""
    import json

    from django.conf import settings

    yield
    registry = Path(settings.ENCRYPTION_HOOK_REGISTRY_DIR)
    for entry in registry.glob("*.json") if registry.is_dir() else ():
        try:
            env = json.loads(entry.read_text()).get("env", {})
        except (OSError, ValueError):
            continue
        if env.get("PORTAL_TEST_RUN") == settings.TEST_RUN and env.get("PORTAL_USE_TEST_DB") == "1":
            entry.unlink(missing_ok=True)


@pytest.fixture
def jobs_run_here(monkeypatch):
    """Transactional tests that run their jobs with run_job: the commit must not also hand
    the job to the session's Celery worker (both would run it, and race)."""
    monkeypatch.setattr(jobs, "_send", lambda job_id: None)


def run_job(job: Job) -> Job:
    """Run the job here, as the Celery task would (on_commit does not fire in db tests)."""
    jobs.job_run(job.pk, worker="pytest")
    job.refresh_from_db()
    return job


@pytest.fixture
def shut_vm(host, make_domain):
    """A shut-off VM, synced into the portal."""
    name = make_domain(running=False)
    inventory_sync(host)
    return VirtualMachine.objects.get(host=host, name=name)


@pytest.fixture
def data_disk(shut_vm, libvirt_uri, test_pool):
    """A raw volume of random data attached to the shut-off VM as vdb: (path, sha256, size)."""
    made = []
    chunk_digests: list[str] = []  # sha256 of each MiB of the last image made

    def make(mib: int = 48):
        name = f"{unique('data')}.img"
        vol = gw.volume_ensure_raw(libvirt_uri, test_pool, name, mib << 20)
        digest = hashlib.sha256()
        chunk_digests.clear()
        with open(vol.path, "r+b") as fh:
            for _ in range(mib):
                chunk = os.urandom(1 << 20)
                digest.update(chunk)
                chunk_digests.append(hashlib.sha256(chunk).hexdigest())
                fh.write(chunk)
        target = gw.domain_disk_next_target(libvirt_uri, shut_vm.name)
        gw.domain_disk_attach_xml(libvirt_uri, shut_vm.name, gw.disk_encrypted_xml(source=vol.path, target=target))
        made.append(name)
        return vol.path, digest.hexdigest(), mib << 20

    make.chunk_digests = chunk_digests
    yield make
    for name in made:
        try:
            gw.volume_delete_if_exists(libvirt_uri, test_pool, name)
        except Exception:
            pass


def _volume_key(path: str, key: bytes, tmp_path: Path) -> bytes:
    """Test-only: the LUKS2 volume key, through a 0400 file in the test's temp dir."""
    vk_file = tmp_path / f"vk-{os.getpid()}"
    subprocess.run(
        [
            "cryptsetup",
            "luksDump",
            "-q",
            "--dump-volume-key",
            "--volume-key-file",
            str(vk_file),
            "--key-file",
            "-",
            path,
        ],
        input=key,
        check=True,
        capture_output=True,
    )
    volume_key = vk_file.read_bytes()
    vk_file.unlink()
    return volume_key


def _decrypt(fh, volume_key: bytes, info, offset: int, length: int) -> bytes:
    """Payload bytes [offset, offset+length) of a LUKS2 image: AES-XTS, plain64 IVs counted
    in 512-byte sectors from the start of the payload (dm-crypt's default)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    alg = algorithms.AES(volume_key)
    fh.seek(info.data_offset + offset)
    buf = fh.read(length)
    assert len(buf) == length, "image shorter than expected"
    out = bytearray()
    for i in range(0, length, info.sector_size):
        iv = ((offset + i) // 512).to_bytes(16, "little")
        out += Cipher(alg, modes.XTS(iv)).decryptor().update(buf[i : i + info.sector_size])
    return bytes(out)


def luks2_payload_sha256(path: str, key: bytes, length: int, tmp_path: Path) -> str:
    """sha256 of the first `length` bytes of a LUKS2 image's payload, decrypted in Python
    (the only way to read it here without device-mapper)."""
    from apps.encryption.gateways import cryptsetup as cs

    info = cs.dump(path)
    assert info.cipher == "aes-xts-plain64"
    volume_key = _volume_key(path, key, tmp_path)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for offset in range(0, length, 1 << 20):
            digest.update(_decrypt(fh, volume_key, info, offset, min(1 << 20, length - offset)))
    return digest.hexdigest()


def luks2_chunks_match(path: str, key: bytes, chunk_digests: list[str], indexes, tmp_path: Path) -> bool:
    """True when the payload's MiB number i (for each i in indexes) decrypts to the
    plaintext whose sha256 is chunk_digests[i]."""
    from apps.encryption.gateways import cryptsetup as cs

    info = cs.dump(path)
    volume_key = _volume_key(path, key, tmp_path)
    with open(path, "rb") as fh:
        return all(
            hashlib.sha256(_decrypt(fh, volume_key, info, i << 20, 1 << 20)).hexdigest() == chunk_digests[i]
            for i in indexes
        )


class ProcessWatcher:
    """Samples /proc/*/cmdline and /proc/*/environ until stopped; `seen(secret)` says
    whether any sample contained the secret (raw, hex or base64)."""

    def __init__(self):
        self.samples: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                for name in ("cmdline", "environ"):
                    try:
                        with open(f"/proc/{pid}/{name}", "rb") as fh:
                            data = fh.read()
                    except OSError:
                        continue
                    if data:
                        self.samples.append(data)
            self._stop.wait(0.005)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def seen(self, secret: bytes) -> bool:
        import base64

        forms = [secret, secret.hex().encode(), base64.b64encode(secret)]
        return any(f in s for s in self.samples for f in forms)

    def saw(self, word: bytes) -> bool:
        return any(word in s for s in self.samples)
