"""encrypt-existing: offline in-place LUKS2 encryption of a shut-off VM's disk, its checks,
and a worker killed mid-way that resumes without losing a byte."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from django.conf import settings

from apps.audit.models import AuditEvent
from apps.core.errors import Conflict, InvalidInput
from apps.core.gateways import libvirt as gw
from apps.core.models import Job
from apps.encryption import services
from apps.encryption.gateways import cryptsetup as cs
from apps.encryption.models import EncryptedDisk
from apps.encryption.services.common import stored_key
from apps.encryption.services.disks import RESUME_HINT
from tests.conftest import ROOT

from .conftest import luks2_chunks_match, luks2_payload_sha256, run_job

pytestmark = pytest.mark.libvirt


def _outcomes():
    return list(
        AuditEvent.objects.filter(action="encryption.disk.encrypt").order_by("id").values_list("outcome", flat=True)
    )


def test_encrypt_existing_keeps_the_data_and_backs_up_the_header(shut_vm, data_disk, operator, tmp_path):
    path, digest, size = data_disk(48)
    job = run_job(services.disk_encrypt_existing(actor=operator, vm=shut_vm, path=path, confirmed=True))
    assert job.state == Job.State.SUCCEEDED, job.error
    disk = EncryptedDisk.objects.get(pk=job.params["disk_id"])
    assert disk.state == EncryptedDisk.State.READY and disk.target == "vdb"
    info = cs.dump(path)
    assert (info.version, info.cipher, info.key_size, info.pbkdf) == (2, "aes-xts-plain64", 512, "argon2id")
    assert not info.reencrypt_pending
    key = stored_key(services.get_store(), disk)
    assert luks2_payload_sha256(path, key, size, tmp_path) == digest
    assert os.path.exists(job.result["header_backup"])
    assert not os.path.exists(os.path.join(settings.ENCRYPTION_HEADER_BACKUP_DIR, f"{disk.key_id}.plain-head"))
    assert _outcomes() == ["requested", "success"]


def test_encrypt_existing_refuses_bad_requests_and_changes_nothing(
    host, shut_vm, data_disk, operator, make_domain, tmp_path, libvirt_uri
):
    path, digest, size = data_disk(8)
    # a path outside every pool, directly and through a symlink placed inside the pool
    outside = tmp_path / "outside.img"
    outside.write_bytes(b"\0" * 4096)
    with pytest.raises(InvalidInput, match="not inside a storage pool"):
        services.disk_encrypt_existing(actor=operator, vm=shut_vm, path=str(outside), confirmed=True)
    link = os.path.join(os.path.dirname(path), f"link-{os.getpid()}.img")
    os.symlink(outside, link)
    try:
        with pytest.raises(InvalidInput, match="not inside a storage pool"):
            services.disk_encrypt_existing(actor=operator, vm=shut_vm, path=link, confirmed=True)
    finally:
        os.unlink(link)
    # a pool file that is not a disk of this VM
    with pytest.raises(InvalidInput, match="not a disk of"):
        services.disk_encrypt_existing(
            actor=operator, vm=shut_vm, path=os.path.join(os.path.dirname(path), "nothing.img"), confirmed=True
        )
    # a running VM
    gw.domain_start(libvirt_uri, shut_vm.name)
    try:
        with pytest.raises(Conflict, match="shut it off"):
            services.disk_encrypt_existing(actor=operator, vm=shut_vm, path=path, confirmed=True)
    finally:
        gw.domain_force_off(libvirt_uri, shut_vm.name)
    # a disk that already is LUKS
    cs.luks_format(path, os.urandom(64), services.luks_params())
    with pytest.raises(Conflict, match="already a LUKS"):
        services.disk_encrypt_existing(actor=operator, vm=shut_vm, path=path, confirmed=True)
    assert _outcomes() == ["failed"] * 5
    assert not EncryptedDisk.objects.exists() and not Job.objects.exists()


def test_too_little_space_is_refused(shut_vm, data_disk, operator, monkeypatch):
    path, _, size = data_disk(8)
    from apps.encryption.gateways import files

    monkeypatch.setattr(files, "free_bytes", lambda directory: 1 << 20)  # a full filesystem
    with pytest.raises(InvalidInput, match="Too little space"):
        services.disk_encrypt_existing(actor=operator, vm=shut_vm, path=path, confirmed=True)
    assert os.path.getsize(path) == size and not cs.is_luks(path)


def _job_process(job_id: int) -> subprocess.Popen:
    """Run the job in another process, as a Celery worker would (same code path)."""
    code = (
        "import sys, django; django.setup(); from apps.core import jobs; "
        "jobs.job_run(int(sys.argv[1]), worker='doomed-worker')"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "hypervisor_web.settings.test", "PORTAL_USE_TEST_DB": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", code, str(job_id)],
        cwd=ROOT,
        env=env,
        start_new_session=True,  # its own process group: cryptsetup dies with it
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("recovery", ["redelivered", "asked-again"])
def test_worker_killed_mid_encryption_resumes_and_keeps_the_data(
    transactional_db, host, shut_vm, data_disk, operator, tmp_path, recovery, monkeypatch
):
    from apps.core import jobs as core_jobs

    # This test plays the worker itself (a process it can kill): keep the job away from the
    # session's Celery worker, which would otherwise run it at the same time.
    monkeypatch.setattr(core_jobs, "_send", lambda job_id: None)
    path, digest, size = data_disk(512)  # large enough to be caught mid-way on a fast machine
    job = services.disk_encrypt_existing(actor=operator, vm=shut_vm, path=path, confirmed=True)
    proc = _job_process(job.pk)
    killed_mid_way = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            pending = cs.is_luks(path) and cs.dump(path).reencrypt_pending
        except Exception:  # the header is being written right now
            pending = False
        if pending:
            os.killpg(proc.pid, signal.SIGKILL)  # the worker and its cryptsetup, mid-way
            killed_mid_way = True
            break
        time.sleep(0.01)
    proc.wait(timeout=30)
    if not killed_mid_way:
        pytest.skip(reason="this machine encrypted the whole image before the kill could land mid-way")
    assert cs.dump(path).reencrypt_pending  # interrupted: the header says so
    assert Job.objects.get(pk=job.pk).state == Job.State.RUNNING
    if recovery == "redelivered":
        # another worker gets the message again (acks_late): the same job resumes
        job = run_job(Job.objects.get(pk=job.pk))
        assert job.attempts == 2
    else:
        # the worker restarts: the core marks its unfinished job failed (jobs_recover_worker)
        from apps.core import jobs

        assert jobs.jobs_recover_worker("doomed-worker") == 1
        assert Job.objects.get(pk=job.pk).state == Job.State.FAILED
        assert RESUME_HINT in Job.objects.get(pk=job.pk).error  # the operator is told how to resume
        disk = EncryptedDisk.objects.get(pk=job.params["disk_id"])
        # the operator asks again: a new job resumes from the header, it does not start over
        job = run_job(services.disk_encrypt_existing(actor=operator, vm=shut_vm, path=path, confirmed=True))
        assert job.params["resume"] is True and job.params["disk_id"] == disk.pk
    assert job.state == Job.State.SUCCEEDED, job.error
    assert any("resuming" in line["msg"] for line in job.log)
    disk = EncryptedDisk.objects.get(pk=job.params["disk_id"])
    assert not cs.dump(path).reencrypt_pending
    key = stored_key(services.get_store(), disk)
    # every 8th MiB, the first and the last (decrypting all 512 MiB in Python takes too long)
    mib = size >> 20
    sample = sorted({0, mib - 1, *range(0, mib, 8)})
    assert luks2_chunks_match(path, key, data_disk.chunk_digests, sample, tmp_path)
    # cryptsetup's temporary header of the killed run was swept from its private work dir
    workdir = settings.ENCRYPTION_RUNTIME_DIR / "cryptsetup"
    assert not list(workdir.glob("LUKS2-temp-*")) and not list(ROOT.glob("LUKS2-temp-*"))


def _luks2_metadata(path: str) -> dict | None:
    """Test-only: the JSON metadata of the primary LUKS2 header, read straight from the file
    (fast enough to catch cryptsetup in the middle of a block); None while unreadable."""
    with open(path, "rb") as fh:
        head = fh.read(16 << 10)
    if head[:6] != b"LUKS\xba\xbe":
        return None
    try:
        return json.loads(head[4096 : int.from_bytes(head[8:16], "big")].rstrip(b"\0"))
    except ValueError:
        return None


def _block_in_flight(meta: dict, size: int) -> tuple[float, range] | None:
    """(fraction encrypted, MiB of the payload being written) while a block is written."""
    done, busy = 0, None
    for seg in meta.get("segments", {}).values():
        flags = seg.get("flags", [])
        if seg.get("type") != "crypt" or seg.get("size") == "dynamic" or any(f.startswith("backup") for f in flags):
            continue
        done += int(seg["size"])
        if "in-reencryption" in flags:
            start = int(seg.get("iv_tweak", 0)) * 512 >> 20
            busy = range(start, start + (int(seg["size"]) >> 20))
    return None if busy is None else (done / size, busy)


def _child_cryptsetup(parent: int) -> int | None:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/comm") as fh:
                comm = fh.read().strip()
        except OSError:
            continue
        if int(fields[1]) == parent and comm == "cryptsetup":
            return int(pid)
    return None


def test_cryptsetup_killed_mid_block_at_three_points_is_repaired_and_resumed(
    transactional_db, host, shut_vm, data_disk, operator, tmp_path, monkeypatch
):
    """SIGKILL cryptsetup (not the worker) while it writes a block, at three points of a
    512 MiB image: the job fails saying how to resume, the header needs `cryptsetup repair`
    ("Device requires reencryption recovery"), asking again repairs and resumes; at the end
    every sampled MiB, and every MiB of the blocks being written when killed, decrypts to
    the original data. Between them, a SIGTERM (what the runner sends first when a job's
    time limit is up) stops cryptsetup at a checkpoint: that header needs no repair."""
    from apps.core import jobs as core_jobs

    monkeypatch.setattr(core_jobs, "_send", lambda job_id: None)  # this test plays the worker
    path, _digest, size = data_disk(512)
    job = services.disk_encrypt_existing(actor=operator, vm=shut_vm, path=path, confirmed=True)
    killed_blocks, crashed = [], []
    for at, sig in ((0.0, signal.SIGKILL), (0.3, signal.SIGKILL), (0.5, signal.SIGTERM), (0.7, signal.SIGKILL)):
        proc = _job_process(job.pk)
        killed = None
        while proc.poll() is None and killed is None:
            meta = _luks2_metadata(path)
            flight = meta and _block_in_flight(meta, size)
            if flight and flight[0] >= at:
                child = _child_cryptsetup(proc.pid)
                if child is not None:
                    os.kill(child, sig)
                    killed = flight[1]
        proc.wait(timeout=120)
        job.refresh_from_db()
        if killed is None:
            assert job.state == Job.State.SUCCEEDED, job.error  # it ended by itself: only a fast machine may
            pytest.skip(reason=f"this machine encrypted the image before a block past {at:.0%} could be caught")
        killed_blocks.append(killed)
        assert job.state == Job.State.FAILED and RESUME_HINT in job.error
        info = cs.dump(path)
        assert info.reencrypt_pending
        if sig == signal.SIGTERM:
            assert not info.reencrypt_crashed  # it finished its block and checkpointed
        else:
            crashed.append(info.reencrypt_crashed)
        job = services.disk_encrypt_existing(actor=operator, vm=shut_vm, path=path, confirmed=True)
        assert job.params["resume"] is True
    assert any(crashed), "no kill landed while a block was in flight"  # the state that needs a repair
    job = run_job(job)
    assert job.state == Job.State.SUCCEEDED, job.error
    logs = [line["msg"] for j in Job.objects.filter(kind="encryption.disk.encrypt") for line in j.log]
    assert sum("cryptsetup repair" in m for m in logs) == sum(crashed)
    disk = EncryptedDisk.objects.get(pk=job.params["disk_id"])
    assert disk.state == EncryptedDisk.State.READY
    info = cs.dump(path)
    assert not info.reencrypt_pending and not info.reencrypt_crashed
    key = stored_key(services.get_store(), disk)
    mib = size >> 20
    sample = sorted({0, mib - 1, *range(0, mib, 8), *(i for block in killed_blocks for i in block if i < mib)})
    assert luks2_chunks_match(path, key, data_disk.chunk_digests, sample, tmp_path)
