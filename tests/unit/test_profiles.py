"""VM profiles: the schema's clear errors, overrides, and the domain XML each security
block becomes (pure functions: no libvirt)."""

import xml.etree.ElementTree as ET

import pytest

from apps.core.errors import InvalidInput
from apps.core.gateways.libvirt import GuestDisk, GuestSpec, domain_capabilities_parse, domain_guest_xml
from apps.core.gateways.libvirt.guest import domain_limits_parse
from apps.profiles.provision import capabilities_check, guest_spec
from apps.profiles.schema import SHIPPED, merged, validate_spec


def _spec(name):
    return {k: v for k, v in SHIPPED[name].items() if k != "description"}


@pytest.mark.parametrize("name", ["hardened", "standard", "minimal"])
def test_the_shipped_profiles_are_valid(name):
    validate_spec(_spec(name))


@pytest.mark.parametrize(
    "change, words",
    [
        ({"colour": "red"}, "unknown key 'colour'"),
        ({"limits": {"cpu_quota": 5}}, "limits: unknown key 'cpu_quota'"),
        ({"vcpus": "two"}, "vcpus: must be an integer, not str 'two'"),
        ({"memory_mb": 15}, "memory_mb: 15 is less than the minimum of 16"),
        ({"disks": [{"size_mb": 0}]}, "disks[0].size_mb: 0 is less than the minimum of 1"),
        ({"disks": [{"size_mb": 64, "encrypted": "yes"}]}, "disks[0].encrypted: must be a boolean"),
        ({"tpm": {"version": "1.2"}}, "tpm.version"),
        ({"tpm": {"model": "tpm-spapr"}}, "tpm.model"),
        ({"networks": [{"zone": "a", "zone_kind": "untrusted"}]}, "networks[0]: a network names a zone"),
        ({"limits": {"memory_max_mb": 32}, "memory_mb": 64}, "limits.memory_max_mb (32) is below memory_mb"),
        ({"firmware": {"type": "bios", "secure_boot": True}}, "secure_boot needs firmware.type 'uefi'"),
        ({"cpu_features": {"sev": True, "sev_snp": True}}, "choose one of sev, sev_es, sev_snp"),
        ({"disks": [{"size_mb": 64, "encryption": "qemu-luks"}]}, "disks[0].encryption (qemu-luks) needs"),
        ({"disks": [{"size_mb": 64, "encrypted": True, "encryption": "luks1"}]}, "disks[0].encryption"),
    ],
)
def test_a_bad_profile_is_refused_naming_the_key(change, words):
    with pytest.raises(InvalidInput) as exc:
        merged(_spec("minimal"), change)
    assert words in exc.value.message


def test_overrides_merge_objects_and_replace_the_rest():
    spec = merged(_spec("hardened"), {"memory_mb": 128, "limits": {"iops": 50}, "disks": [{"size_mb": 64}]})
    assert spec["memory_mb"] == 128
    assert spec["limits"] == {**SHIPPED["hardened"]["limits"], "iops": 50}
    assert spec["disks"] == [{"size_mb": 64}]
    assert SHIPPED["hardened"]["disks"][0]["size_mb"] == 20480  # the profile itself is untouched


def _xml(**kw):
    base = {"name": "g1", "memory_mib": 128, "vcpus": 2, "domain_type": "kvm"}
    return ET.fromstring(domain_guest_xml(GuestSpec(**{**base, **kw})))  # noqa: S314 (our own XML)


def test_secure_boot_and_vtpm_become_standard_libvirt_xml():
    root = _xml(uefi=True, secure_boot=True, tpm_model="tpm-crb")
    os_el = root.find("os")
    assert os_el.get("firmware") == "efi"
    assert os_el.find("type").get("machine") == "q35"
    features = {f.get("name"): f.get("enabled") for f in os_el.iterfind("firmware/feature")}
    assert features == {"secure-boot": "yes", "enrolled-keys": "yes"}
    assert os_el.find("loader").get("secure") == "yes"
    assert root.find("features/smm").get("state") == "on"
    tpm = root.find("devices/tpm")
    assert tpm.get("model") == "tpm-crb"
    assert tpm.find("backend").attrib == {"type": "emulator", "version": "2.0"}
    assert root.find("devices/graphics/listen").get("type") == "socket"  # never a TCP port


def test_uefi_without_secure_boot_leaves_the_loader_to_libvirt():
    root = _xml(uefi=True)
    assert root.find("os/loader") is None
    assert root.find("os/firmware/feature[@name='secure-boot']").get("enabled") == "no"


def test_limits_map_to_cputune_memtune_and_per_disk_iotune():
    root = _xml(cpu_quota_percent=50, memory_hard_limit_mib=512,
                disks=(GuestDisk("/p/a.qcow2", total_bytes_sec=10 << 20, total_iops_sec=300),))  # fmt: skip
    assert root.findtext("cputune/period") == "100000"
    assert root.findtext("cputune/quota") == "50000"
    assert root.findtext("memtune/hard_limit") == str(512 * 1024)
    assert root.find("memtune/hard_limit").get("unit") == "KiB"
    assert root.findtext("devices/disk/iotune/total_bytes_sec") == str(10 << 20)
    assert root.findtext("devices/disk/iotune/total_iops_sec") == "300"
    parsed = domain_limits_parse(ET.tostring(root, encoding="unicode"))
    assert parsed["cpu_quota_us"] == 50000 and parsed["memory_hard_limit_kib"] == 512 * 1024
    assert parsed["iotune"] == {"vda": [10 << 20, 300]} and parsed["memory_mb"] == 128


def test_no_network_boot_disk_then_cdrom_and_nics_without_rom():
    root = _xml(networks=("n1",), iso_path="/pool/x.iso", disks=(GuestDisk("/pool/a.qcow2"),))
    assert [b.get("dev") for b in root.iterfind("os/boot")] == ["hd", "cdrom"]
    assert root.find("devices/interface/rom").get("enabled") == "no"
    assert root.find("devices/disk[@device='cdrom']/readonly") is not None


@pytest.mark.parametrize("kind, policy", [("sev", "0x0003"), ("sev-es", "0x0007")])
def test_sev_blocks(kind, policy):
    root = _xml(sev=kind, sev_cbitpos=51, sev_reduced_phys_bits=1, networks=("n1",),
                disks=(GuestDisk("/p/a.qcow2"),))  # fmt: skip
    ls = root.find("launchSecurity")
    assert ls.get("type") == "sev"
    assert (ls.findtext("cbitpos"), ls.findtext("reducedPhysBits"), ls.findtext("policy")) == ("51", "1", policy)
    assert root.find("memoryBacking/locked") is not None
    assert root.find("devices/disk/driver").get("iommu") == "on"
    assert root.find("devices/memballoon").get("model") == "none"


def test_sev_snp_block():
    ls = _xml(sev="sev-snp").find("launchSecurity")
    assert ls.get("type") == "sev-snp" and ls.findtext("policy") == "0x00030000"


SEV_CAPS = """<domainCapabilities><os><loader supported='yes'><enum name='secure'><value>yes</value>
<value>no</value></enum></loader></os><devices><tpm supported='yes'><enum name='model'><value>tpm-crb</value>
</enum><enum name='backendVersion'><value>2.0</value></enum></tpm></devices><features>
<sev supported='yes'><cbitpos>51</cbitpos><reducedPhysBits>1</reducedPhysBits><maxESGuests>15</maxESGuests>
</sev></features></domainCapabilities>"""
NO_SEV_CAPS = "<domainCapabilities><features><sev supported='no'/></features></domainCapabilities>"


def test_domain_capabilities_are_read_from_libvirts_xml():
    caps = domain_capabilities_parse(SEV_CAPS, memory_mib=4096)
    assert (caps.sev, caps.sev_es, caps.sev_snp, caps.sev_cbitpos) == (True, True, False, 51)
    assert caps.secure_boot and caps.tpm_models == ("tpm-crb",)
    spec = merged(_spec("minimal"), {"cpu_features": {"sev_es": True}})
    assert capabilities_check(spec, caps, "h1") == "sev-es"
    xml = domain_guest_xml(guest_spec("g", "", spec, disks=[], networks=[], sev="sev-es", caps=caps))
    root = ET.fromstring(xml)  # noqa: S314 (our own XML)
    assert root.findtext("launchSecurity/cbitpos") == "51"


def test_a_host_without_sev_refuses_it_with_the_reason():
    caps = domain_capabilities_parse(NO_SEV_CAPS, memory_mib=4096)
    spec = merged(_spec("minimal"), {"cpu_features": {"sev": True}})
    with pytest.raises(InvalidInput, match="this host has no SEV"):
        capabilities_check(spec, caps, "h1")
    with pytest.raises(InvalidInput, match="above host h1's memory of 4096 MiB"):
        capabilities_check(merged(_spec("minimal"), {"memory_mb": 8192}), caps, "h1")


# ---------------------------------------------------------------- the profile's own secure-boot keys


def certificate(cn: str, *, key=None, days: int = 30, with_key: bool = False) -> str:
    """A self-signed PEM certificate (RSA-2048 unless `key` says otherwise)."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=60))
            .not_valid_after(now + timedelta(days=days)).sign(key, hashes.SHA256()))  # fmt: skip
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    if with_key:
        pem += key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()  # fmt: skip
    return pem


def own_keys(pk: str) -> dict:
    return {"type": "uefi", "secure_boot": True, "enrolled_keys": False, "keys": {"pk": pk, "kek": [pk], "db": [pk]}}


def test_own_secure_boot_keys_are_checked_with_a_clear_error_for_each_entry():
    from cryptography.hazmat.primitives.asymmetric import ec

    good = certificate("Portal test PK")
    spec = merged(_spec("minimal"), {"firmware": own_keys(good)})
    assert spec["firmware"]["keys"]["pk"] == good
    cases = [
        ({**own_keys(good), "enrolled_keys": True}, "set firmware.enrolled_keys to false"),
        ({**own_keys(good), "secure_boot": False}, "needs firmware.secure_boot true"),
        ({**own_keys("hello"), "keys": {"pk": good, "kek": [good], "db": ["hello"]}},
         "firmware.keys.db[0]: not a PEM certificate"),
        (own_keys(good.replace("MII", "MIX", 1)), "firmware.keys.pk: the PEM certificate does not parse"),
        (own_keys(good + good), "firmware.keys.pk: one certificate per entry"),
        (own_keys(certificate("k", with_key=True)), "holds a private key"),
        (own_keys(certificate("ec", key=ec.generate_private_key(ec.SECP256R1()))), "verifies RSA keys only"),
        ({**own_keys(good), "keys": {"pk": good, "kek": []}}, "firmware.keys"),
        ({**own_keys(good), "keys": {"pk": good, "kek": [good], "db": [good], "dbx": []}}, "unknown key 'dbx'"),
    ]  # fmt: skip
    for firmware, words in cases:
        with pytest.raises(InvalidInput) as exc:
            merged(_spec("minimal"), {"firmware": firmware})
        assert words in exc.value.message, (words, exc.value.message)
    # an expired certificate is refused when it would be enrolled into a new VM, not when a VM
    # made with it (its origin spec) has its resources edited later
    from apps.profiles.secure_boot import keys_check

    expired = own_keys(certificate("old", days=-1))
    assert merged(_spec("minimal"), {"firmware": expired})["firmware"]["keys"]
    with pytest.raises(InvalidInput, match="firmware.keys.pk: the certificate expired on"):
        keys_check(expired["keys"])


def test_own_keys_name_the_vms_varstore_and_turn_microsofts_variables_off(settings):
    spec = merged(_spec("hardened"), {"firmware": own_keys(certificate("Portal test PK"))})
    path = "/var/lib/libvirt/qemu/nvram/g1_VARS.fd"
    root = ET.fromstring(domain_guest_xml(guest_spec("g1", "", spec, disks=[], networks=[], nvram_path=path)))  # noqa: S314
    features = {f.get("name"): f.get("enabled") for f in root.iterfind("os/firmware/feature")}
    assert features == {"secure-boot": "yes", "enrolled-keys": "no"}
    assert root.find("os/nvram").text == path and root.find("os/loader").get("secure") == "yes"
