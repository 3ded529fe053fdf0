"""The key store on its own: envelope encryption, file modes, tamper and move detection,
the three KEK providers (file, passphrase, PKCS#11 on SoftHSM2), rotation and escrow."""

import json
import os
import stat
import subprocess
import uuid

import pytest

from apps.core.errors import InvalidInput, NotFound
from apps.encryption.errors import KeyFileRejected, StoreSealed
from apps.encryption.keystore import KeyStore, escrow_unwrap, escrow_wrap

CHEAP = {"kdf_memory_kib": 8192, "kdf_iterations": 1}
VM_A, VM_B = str(uuid.uuid4()), str(uuid.uuid4())


@pytest.fixture
def store(tmp_path):
    s = KeyStore(tmp_path / "keys", provider="file", kek_dir=tmp_path / "kek", **CHEAP)
    s.initialize()
    return s


def _kek_file(store, version=1):
    return store.kek_dir / f"{store.store_id}-v{version}.kek"


def _put(store, vm=VM_A, volume="/pool/a.img"):
    key = os.urandom(64)
    key_id = store.new_key_id()
    store.put(key_id=key_id, vm_uuid=vm, volume=volume, key=key)
    return key_id, key


def _rewrite(path, data: bytes):
    os.chmod(path, 0o600)
    path.write_bytes(data)
    os.chmod(path, 0o400)


def test_keys_round_trip_and_are_stored_encrypted_with_private_modes(store):
    key_id, key = _put(store)
    assert store.get(key_id=key_id, vm_uuid=VM_A, volume="/pool/a.img") == key
    path = store.directory / "disks" / f"{key_id}.key"
    raw = path.read_bytes()
    assert key not in raw and key.hex().encode() not in raw
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o400
    for directory in (store.directory, store.directory / "disks", store.kek_dir):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(_kek_file(store)).st_mode) == 0o400
    assert not [p for p in (store.directory / "disks").iterdir() if p.name.endswith(".tmp")]


def test_a_key_file_moved_to_another_vm_or_volume_fails_to_decrypt(store):
    key_id_a, _ = _put(store, VM_A, "/pool/a.img")
    key_id_b, _ = _put(store, VM_B, "/pool/b.img")
    with pytest.raises(KeyFileRejected, match="belongs to another"):
        store.get(key_id=key_id_a, vm_uuid=VM_B, volume="/pool/a.img")
    with pytest.raises(KeyFileRejected, match="belongs to another"):
        store.get(key_id=key_id_a, vm_uuid=VM_A, volume="/pool/b.img")
    # copy A's file over B's: B's disk must not get A's key
    a = store.directory / "disks" / f"{key_id_a}.key"
    b = store.directory / "disks" / f"{key_id_b}.key"
    _rewrite(b, a.read_bytes())
    with pytest.raises(KeyFileRejected):
        store.get(key_id=key_id_b, vm_uuid=VM_B, volume="/pool/b.img")


@pytest.mark.parametrize("field", ["wrapped", "created", "kek_version"])
def test_tampered_bytes_are_refused(store, field):
    key_id, _ = _put(store)
    path = store.directory / "disks" / f"{key_id}.key"
    record = json.loads(path.read_bytes())
    if field == "wrapped":
        raw = bytearray(record["wrapped"].encode())
        raw[30] = ord("A") if raw[30] != ord("A") else ord("B")
        record["wrapped"] = raw.decode()
    elif field == "created":
        record["created"] = "2001-01-01T00:00:00+00:00"
    else:
        record["kek_version"] = 2
    _rewrite(path, json.dumps(record).encode())
    with pytest.raises((KeyFileRejected, NotFound)):
        store.get(key_id=key_id, vm_uuid=VM_A, volume="/pool/a.img")


def test_garbage_key_file_is_refused(store):
    key_id, _ = _put(store)
    _rewrite(store.directory / "disks" / f"{key_id}.key", b"\x00garbage")
    with pytest.raises(KeyFileRejected, match="damaged"):
        store.get(key_id=key_id, vm_uuid=VM_A, volume="/pool/a.img")


def test_wrong_modes_and_symlinks_are_refused(store, tmp_path):
    key_id, key = _put(store)
    path = store.directory / "disks" / f"{key_id}.key"
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileRejected, match="mode 0644"):
        store.get(key_id=key_id, vm_uuid=VM_A, volume="/pool/a.img")
    os.chmod(path, 0o400)
    os.chmod(store.directory / "disks", 0o755)  # noqa: S103 (the test of a too-open directory)
    with pytest.raises(KeyFileRejected, match="0755"):
        store.get(key_id=key_id, vm_uuid=VM_A, volume="/pool/a.img")
    os.chmod(store.directory / "disks", 0o700)
    os.chmod(_kek_file(store), 0o444)
    with pytest.raises(KeyFileRejected, match="master key file"):
        store.get(key_id=key_id, vm_uuid=VM_A, volume="/pool/a.img")
    os.chmod(_kek_file(store), 0o400)
    elsewhere = tmp_path / "elsewhere.key"
    os.rename(path, elsewhere)
    os.symlink(elsewhere, path)
    with pytest.raises(KeyFileRejected, match="not a regular file"):
        store.get(key_id=key_id, vm_uuid=VM_A, volume="/pool/a.img")


def test_the_file_kek_lies_apart_from_the_keys_it_wraps(store):
    """Nothing under the key directory holds the KEK: copying the key directory (a backup,
    a stolen disk) gives wrapped keys and no way to unwrap them."""
    _put(store)
    kek = _kek_file(store).read_bytes()
    for path in store.directory.rglob("*"):
        assert path.is_dir() or kek not in path.read_bytes(), path
    assert not (store.directory / "kek").exists()


@pytest.mark.parametrize("where", ["keys/kek", "keys", "."])
def test_a_kek_directory_inside_or_around_the_key_directory_is_refused(tmp_path, where):
    with pytest.raises(KeyFileRejected, match="kept apart"):
        KeyStore(tmp_path / "keys", provider="file", kek_dir=tmp_path / where, **CHEAP)


def test_a_file_store_without_a_kek_directory_is_refused(tmp_path):
    with pytest.raises(KeyFileRejected, match="ENCRYPTION_KEK_FILE_DIR"):
        KeyStore(tmp_path / "keys", provider="file", **CHEAP).initialize()


def test_a_kek_left_beside_the_keys_by_an_older_store_is_moved_apart(store):
    """Stores made before the KEK was kept apart had it in <keys>/kek/v1.kek."""
    key_id, key = _put(store)
    legacy = store.directory / "kek" / "v1.kek"
    legacy.parent.mkdir(mode=0o700)
    os.rename(_kek_file(store), legacy)
    assert store.get(key_id=key_id, vm_uuid=VM_A, volume="/pool/a.img") == key
    assert not legacy.exists() and not legacy.parent.exists()
    assert stat.S_IMODE(os.stat(_kek_file(store)).st_mode) == 0o400


def test_existing_key_files_are_never_overwritten(store):
    key_id, key = _put(store)
    with pytest.raises(KeyFileRejected, match="refusing to overwrite"):
        store.put(key_id=key_id, vm_uuid=VM_A, volume="/pool/a.img", key=os.urandom(64))
    assert store.get(key_id=key_id, vm_uuid=VM_A, volume="/pool/a.img") == key


def test_missing_key_is_not_found(store):
    with pytest.raises(NotFound):
        store.get(key_id=uuid.uuid4().hex, vm_uuid=VM_A, volume="/pool/a.img")
    with pytest.raises(InvalidInput):
        store.get(key_id="../../etc/passwd", vm_uuid=VM_A, volume="/pool/a.img")


def test_file_kek_rotation_rewraps_every_key_and_retires_the_old_kek(store):
    keys = [_put(store, VM_A, f"/pool/{i}.img") for i in range(3)]
    before = {k: (store.directory / "disks" / f"{k}.key").read_bytes() for k, _ in keys}
    assert store.rotation_begin() == 2
    assert store.rotation_begin() == 2  # a second call resumes the same rotation
    assert store.rewrap(keys[0][0]) is True
    assert store.rewrap(keys[0][0]) is False  # interrupted and re-run: skipped
    with pytest.raises(KeyFileRejected, match="not re-wrapped"):
        store.rotation_finish()
    for key_id, _ in keys[1:]:
        store.rewrap(key_id)
    assert store.rotation_finish() == [1]
    assert not _kek_file(store, 1).exists() and _kek_file(store, 2).exists()
    for i, (key_id, key) in enumerate(keys):
        assert store.get(key_id=key_id, vm_uuid=VM_A, volume=f"/pool/{i}.img") == key
        assert store.describe(key_id).kek_version == 2
        assert (store.directory / "disks" / f"{key_id}.key").read_bytes() != before[key_id]


def test_passphrase_kek_keeps_the_store_sealed_until_unsealed(tmp_path):
    store = KeyStore(tmp_path / "keys", provider="passphrase", runtime_dir=tmp_path / "run", **CHEAP)
    assert store.sealed()
    with pytest.raises(StoreSealed):
        store.initialize()
    store.initialize(passphrase=b"correct horse battery staple")
    key_id, key = _put(store)
    store.seal()
    assert store.sealed() and not list((tmp_path / "run").iterdir())
    with pytest.raises(StoreSealed, match="sealed"):
        store.get(key_id=key_id, vm_uuid=VM_A, volume="/pool/a.img")
    with pytest.raises(InvalidInput, match="Wrong passphrase"):
        store.unseal(b"wrong horse battery staple")
    assert store.sealed()
    store.unseal(b"correct horse battery staple")
    assert store.get(key_id=key_id, vm_uuid=VM_A, volume="/pool/a.img") == key
    meta = (store.directory / "store.json").read_bytes()
    assert b"correct horse" not in meta
    # rotation to a new passphrase
    store.rotation_begin(passphrase=b"a brand new store passphrase")
    store.rewrap(key_id)
    store.rotation_finish()
    store.seal()
    with pytest.raises(InvalidInput):
        store.unseal(b"correct horse battery staple")
    store.unseal(b"a brand new store passphrase")
    assert store.get(key_id=key_id, vm_uuid=VM_A, volume="/pool/a.img") == key


@pytest.fixture
def softhsm(tmp_path, monkeypatch):
    """A SoftHSM2 token in a temp dir (test pins are literals; production reads a PIN file)."""
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    label = f"t-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", "12345678", "--pin", "87654321"],
        check=True,
        capture_output=True,
    )
    return {"library": "/usr/lib/softhsm/libsofthsm2.so", "token": label, "pin": "87654321"}


def test_pkcs11_kek_wraps_inside_the_token_and_rotates(tmp_path, softhsm):
    store = KeyStore(tmp_path / "keys", provider="pkcs11", pkcs11=softhsm, **CHEAP)
    store.initialize()
    assert not store.sealed()
    key_id, key = _put(store)
    assert store.get(key_id=key_id, vm_uuid=VM_A, volume="/pool/a.img") == key
    assert not (store.directory / "kek").exists()  # no KEK on disk
    with pytest.raises(KeyFileRejected):
        store.get(key_id=key_id, vm_uuid=VM_B, volume="/pool/a.img")
    store.rotation_begin()
    store.rewrap(key_id)
    assert store.rotation_finish() == [1]
    assert store.get(key_id=key_id, vm_uuid=VM_A, volume="/pool/a.img") == key
    wrong = KeyStore(tmp_path / "keys", provider="pkcs11", pkcs11={**softhsm, "pin": "00000000"}, **CHEAP)
    assert wrong.sealed()
    with pytest.raises(StoreSealed):
        wrong.get(key_id=key_id, vm_uuid=VM_A, volume="/pool/a.img")


def test_escrow_round_trip_and_wrong_passphrase():
    key = os.urandom(64)
    binding = {"key_id": "k1", "vm_uuid": VM_A, "vm": "a", "volume": "/pool/a.img"}
    doc = escrow_wrap(key, b"recovery passphrase 1", binding, memory_kib=8192, iterations=1)
    assert key not in doc and key.hex().encode() not in doc
    assert escrow_unwrap(doc, b"recovery passphrase 1") == (binding, key)
    with pytest.raises(InvalidInput, match="Wrong recovery passphrase"):
        escrow_unwrap(doc, b"recovery passphrase 2")
    forged = json.loads(doc)
    forged["binding"]["vm_uuid"] = VM_B
    with pytest.raises(InvalidInput, match="Wrong recovery passphrase"):
        escrow_unwrap(json.dumps(forged).encode(), b"recovery passphrase 1")
    with pytest.raises(InvalidInput, match="not a key escrow"):
        escrow_unwrap(b"{}", b"recovery passphrase 1")
    with pytest.raises(InvalidInput, match="at least 12"):
        escrow_wrap(key, b"short", binding, memory_kib=8192, iterations=1)


def test_a_key_file_created_meanwhile_is_not_overwritten(store, monkeypatch):
    """The name was free when checked, then another writer created it before ours landed:
    ours is refused and theirs kept (link, not rename)."""
    import tempfile

    from apps.encryption.keystore import common as keystore_files

    key_id = store.new_key_id()
    target = store.directory / "disks" / f"{key_id}.key"
    real_mkstemp = tempfile.mkstemp

    def racing_mkstemp(*args, **kwargs):
        if not target.exists():  # the other writer wins the race right after our check
            target.write_bytes(b"the other writer's key file")
            os.chmod(target, 0o400)
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(keystore_files.tempfile, "mkstemp", racing_mkstemp)
    with pytest.raises(KeyFileRejected, match="already exists"):
        store.put(key_id=key_id, vm_uuid=VM_A, volume="/pool/a.img", key=os.urandom(64))
    assert target.read_bytes() == b"the other writer's key file"
    assert [p.name for p in target.parent.iterdir() if p.name.endswith(".tmp")] == []
