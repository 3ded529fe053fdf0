"""The `tpm2` KEK provider against a real software TPM (swtpm, started per test on
loopback): the KEK is sealed to the TPM, only sealed blobs reach the disk, the KEK travels
on stdin/stdout only, and another TPM cannot unseal it."""

import os
import shutil
import socket
import subprocess
import time
import uuid

import pytest

from apps.core import runner
from apps.core.errors import GatewayError
from apps.encryption.keystore import KeyStore

CHEAP = {"kdf_memory_kib": 8192, "kdf_iterations": 1}
VM = str(uuid.uuid4())

pytestmark = pytest.mark.skipif(
    not (shutil.which("swtpm") and shutil.which("tpm2_createprimary")),
    reason="swtpm and tpm2-tools are not installed (scripts/setup-system.sh installs them)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def make_swtpm(tmp_path):
    """Start a fresh swtpm (TPM 2.0) listening on loopback; its TCTI string. A port already
    taken makes swtpm exit: then it is tried again on other ports."""
    procs = []

    def make() -> str:
        state = tmp_path / f"swtpm-{len(procs)}"
        state.mkdir(mode=0o700)
        for _attempt in range(5):
            port = _free_port()
            ctrl = port + 1  # the swtpm TCTI talks to the control channel on port + 1
            proc = subprocess.Popen(  # noqa: S603 (fixed argv, test fixture)
                [
                    "swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}",
                    "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
                    "--ctrl", f"type=tcp,port={ctrl},bindaddr=127.0.0.1",
                    "--flags", "startup-clear",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )  # fmt: skip
            procs.append(proc)
            for _ in range(100):  # readiness: the port accepts, or the process died (port taken)
                if proc.poll() is not None:
                    break
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    return f"swtpm:host=127.0.0.1,port={port}"
                except OSError:
                    time.sleep(0.05)
        raise RuntimeError("swtpm did not start")

    yield make
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def _store(tmp_path, tcti, name="keys"):
    return KeyStore(tmp_path / name, provider="tpm2", kek_dir=tmp_path / f"{name}-kek", tpm2={"tcti": tcti}, **CHEAP)


def test_a_tpm_sealed_kek_wraps_the_keys_and_never_reaches_argv_or_disk(tmp_path, make_swtpm, monkeypatch):
    seen = []
    real_run = runner.run

    def watching_run(argv, **kwargs):
        result = real_run(argv, **kwargs)
        seen.append((argv, kwargs.get("stdin") or b"", result.stdout))
        return result

    monkeypatch.setattr(runner, "run", watching_run)
    store = _store(tmp_path, make_swtpm())
    store.initialize()
    assert not store.sealed()
    key = os.urandom(64)
    key_id = store.new_key_id()
    store.put(key_id=key_id, vm_uuid=VM, volume="/pool/a.img", key=key)
    assert store.get(key_id=key_id, vm_uuid=VM, volume="/pool/a.img") == key

    sealed_in = [stdin for argv, stdin, _ in seen if argv[0] == "tpm2_create"]
    assert len(sealed_in) == 1 and len(bytes.fromhex(sealed_in[0].decode())) == 32
    kek_hex = sealed_in[0]
    assert any(kek_hex.decode() == out.strip() for argv, _, out in seen if argv[0] == "tpm2_unseal")
    assert not any(kek_hex.decode() in " ".join(argv) for argv, _, _ in seen)
    kek = bytes.fromhex(kek_hex.decode())
    for path in [*store.directory.rglob("*"), *store.kek_dir.rglob("*")]:
        if path.is_file():
            data = path.read_bytes()
            assert kek not in data and kek_hex not in data, path
    assert sorted(p.suffix for p in store.kek_dir.iterdir() if not p.name.startswith(".")) == [".tpm2priv", ".tpm2pub"]


def test_another_tpm_cannot_unseal_the_kek(tmp_path, make_swtpm):
    store = _store(tmp_path, make_swtpm())
    store.initialize()
    key_id = store.new_key_id()
    store.put(key_id=key_id, vm_uuid=VM, volume="/pool/a.img", key=os.urandom(64))
    # a copy of the key store and of the KEK directory, on a host with another TPM
    thief = KeyStore(store.directory, provider="tpm2", kek_dir=store.kek_dir, tpm2={"tcti": make_swtpm()}, **CHEAP)
    with pytest.raises(GatewayError, match="sealed by another TPM"):
        thief.get(key_id=key_id, vm_uuid=VM, volume="/pool/a.img")


def test_the_tpm_kek_rotates_and_retires_its_old_sealed_blobs(tmp_path, make_swtpm):
    store = _store(tmp_path, make_swtpm())
    store.initialize()
    keys = []
    for i in range(3):
        key_id, key = store.new_key_id(), os.urandom(64)
        store.put(key_id=key_id, vm_uuid=VM, volume=f"/pool/{i}.img", key=key)
        keys.append((key_id, key))
    assert store.rotation_begin() == 2
    for key_id, _ in keys:
        assert store.rewrap(key_id)
    assert store.rotation_finish() == [1]
    names = sorted(p.name for p in store.kek_dir.iterdir() if not p.name.startswith("."))
    assert names == [f"{store.store_id}-v2.tpm2priv", f"{store.store_id}-v2.tpm2pub"]
    for i, (key_id, key) in enumerate(keys):
        assert store.get(key_id=key_id, vm_uuid=VM, volume=f"/pool/{i}.img") == key


def test_no_tpm_is_a_clear_error(tmp_path):
    store = _store(tmp_path, f"swtpm:host=127.0.0.1,port={_free_port()}")
    with pytest.raises(GatewayError, match="tpm2_createprimary failed"):
        store.initialize()
    assert not store.initialized()
