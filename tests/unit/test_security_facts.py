"""The security facts read from a domain's XML (gateways/libvirt/xml.py), the host's security
drivers from libvirt's capabilities, and the VM page's summary built from them."""

import pytest

from apps.core.gateways.libvirt import xml as x
from apps.core.models import Host
from apps.vms.security import BAD, GOOD, UNKNOWN, summary_items

# the live XML of a running secure-boot VM with a vTPM on this machine (libvirt 9, OVMF from
# Debian's ovmf, swtpm): firmware='efi' is resolved into <loader>/<nvram>
LIVE_EFI = """<domain type='qemu' id='15'>
  <name>efi</name>
  <os>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <firmware>
      <feature enabled='yes' name='enrolled-keys'/>
      <feature enabled='yes' name='secure-boot'/>
    </firmware>
    <loader readonly='yes' secure='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.ms.fd</loader>
    <nvram template='/usr/share/OVMF/OVMF_VARS_4M.ms.fd'>/var/lib/libvirt/qemu/nvram/efi_VARS.fd</nvram>
  </os>
  <cputune><period>100000</period><quota>50000</quota></cputune>
  <memtune><hard_limit unit='KiB'>262144</hard_limit></memtune>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/>
      <source file='/dev/mapper/portal-abc'/><target dev='vda' bus='virtio'/>
      <iotune><total_bytes_sec>10485760</total_bytes_sec></iotune></disk>
    <disk type='file' device='cdrom'><target dev='sda' bus='sata'/></disk>
    <tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>
    <graphics type='vnc' socket='/var/lib/libvirt/qemu/domain-15-efi/vnc.sock'>
      <listen type='socket' socket='/var/lib/libvirt/qemu/domain-15-efi/vnc.sock'/>
    </graphics>
  </devices>
  <seclabel type='dynamic' model='dac' relabel='yes'>
    <label>+64055:+64055</label><imagelabel>+64055:+64055</imagelabel>
  </seclabel>
</domain>"""

DEFINED_BIOS = """<domain type='kvm'>
  <name>plain</name>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/i/a.qcow2'/>
      <target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/i/b.img'>
      <encryption format='luks'><secret type='passphrase' uuid='0b7c'/></encryption></source>
      <target dev='vdb' bus='virtio'/></disk>
    <graphics type='vnc' port='5900' autoport='yes' listen='127.0.0.1'>
      <listen type='address' address='127.0.0.1'/></graphics>
  </devices>
</domain>"""

APPARMOR_SEV = """<domain type='kvm' id='3'>
  <os firmware='efi'><type>hvm</type></os>
  <launchSecurity type='sev-snp'><policy>0x00030000</policy></launchSecurity>
  <blkiotune><weight>500</weight></blkiotune>
  <devices><graphics type='spice'><listen type='none'/></graphics></devices>
  <seclabel type='dynamic' model='apparmor' relabel='yes'><label>libvirt-1234</label></seclabel>
  <seclabel type='dynamic' model='dac' relabel='yes'><label>+64055:+64055</label></seclabel>
</domain>"""

CAPS_NO_LSM = """<capabilities><host>
  <secmodel><model>none</model><doi>0</doi></secmodel>
  <secmodel><model>dac</model><doi>0</doi><baselabel type='kvm'>+64055:+64055</baselabel></secmodel>
</host></capabilities>"""
CAPS_APPARMOR = """<capabilities><host>
  <secmodel><model>apparmor</model><doi>0</doi></secmodel>
  <secmodel><model>dac</model><doi>0</doi></secmodel>
</host></capabilities>"""


def test_a_live_secure_boot_vm_reads_as_uefi_secure_boot_tpm_limits_and_a_vnc_socket():
    f = x.domain_security_parse(LIVE_EFI)
    assert f["firmware"] == {"type": "uefi", "secure_boot": True, "enrolled_keys": True,
                             "loader": "/usr/share/OVMF/OVMF_CODE_4M.ms.fd",
                             "nvram": "/var/lib/libvirt/qemu/nvram/efi_VARS.fd"}  # fmt: skip
    assert f["tpm"] == [{"model": "tpm-crb", "backend": "emulator", "version": "2.0"}]
    assert f["memory_encryption"] is None
    assert f["seclabels"] == [{"model": "dac", "type": "dynamic", "relabel": "yes", "label": "+64055:+64055",
                               "imagelabel": "+64055:+64055"}]  # fmt: skip
    assert f["limits"] == {"cpu_quota": 50000, "cpu_period": 100000, "cpu_shares": 0,
                           "memory_hard_limit_kib": 262144, "blkiotune": False, "iotune_disks": ["vda"]}  # fmt: skip
    assert f["disks"] == ["vda"]  # the cdrom is not a disk
    assert f["running"] is True
    sock = "/var/lib/libvirt/qemu/domain-15-efi/vnc.sock"
    assert f["graphics"] == [{"type": "vnc", "listen": "socket", "socket": sock, "address": "", "port": 0,
                              "password": False}]  # fmt: skip


def test_a_defined_bios_vm_has_no_secure_boot_tpm_or_limits_and_vnc_on_a_port():
    f = x.domain_security_parse(DEFINED_BIOS)
    assert f["firmware"]["type"] == "bios" and f["firmware"]["secure_boot"] is False
    assert f["tpm"] == [] and f["seclabels"] == [] and f["running"] is False
    assert f["limits"]["cpu_quota"] == 0 and f["limits"]["memory_hard_limit_kib"] == 0
    assert f["luks_disks"] == ["vdb"]  # QEMU opens it as LUKS with a libvirt secret
    assert f["graphics"][0]["listen"] == "address"
    assert (f["graphics"][0]["address"], f["graphics"][0]["port"]) == ("127.0.0.1", 5900)


def test_apparmor_labels_memory_encryption_and_blkiotune_are_read():
    f = x.domain_security_parse(APPARMOR_SEV)
    assert f["firmware"]["type"] == "uefi" and f["firmware"]["secure_boot"] is False
    assert f["memory_encryption"] == {"type": "sev-snp", "policy": "0x00030000"}
    assert [s["model"] for s in f["seclabels"]] == ["apparmor", "dac"]
    assert f["seclabels"][0]["label"] == "libvirt-1234"
    assert f["limits"]["blkiotune"] is True
    assert f["graphics"][0]["listen"] == "none"


def test_memtune_units_are_converted_to_kib():
    xml = "<domain><memtune><hard_limit unit='MiB'>512</hard_limit></memtune></domain>"
    assert x.domain_security_parse(xml)["limits"]["memory_hard_limit_kib"] == 512 * 1024


def test_the_minimal_guest_builder_puts_vnc_on_a_unix_socket_never_a_port():
    xml = x.domain_xml(name="g", memory_mib=64, vcpus=1, disk_paths=[], networks=[], domain_type="qemu")
    (g,) = x.domain_security_parse(xml)["graphics"]
    assert g["type"] == "vnc" and g["listen"] == "socket" and g["port"] == 0 and g["address"] == ""


def test_host_security_drivers_are_read_from_the_capabilities():
    assert [m["model"] for m in x.host_secmodels_parse(CAPS_NO_LSM)] == ["none", "dac"]
    assert x.host_secmodels_parse(CAPS_NO_LSM)[1]["baselabels"] == {"kvm": "+64055:+64055"}


def _models(caps: str) -> list[str]:  # what the gateway's host_security_models returns
    return [m["model"] for m in x.host_secmodels_parse(caps)]


def test_a_host_without_an_lsm_says_so_plainly():
    status, text = Host(security_models=_models(CAPS_NO_LSM)).confinement
    assert status == "bad"
    assert text.startswith("This host has no LSM") and "DAC" in text
    assert Host(security_models=_models(CAPS_APPARMOR)).confinement[0] == "good"
    assert Host(security_models=[]).confinement[0] == "unknown"


def _summary(xml, caps=CAPS_NO_LSM, **kw):
    args = {"encrypted_targets": set(), "zone": "default", "zone_kind": "", "zone_problem": ""} | kw
    items = summary_items(x.domain_security_parse(xml), security_models=_models(caps), **args)
    return {i.key: i for i in items}


def test_the_summary_marks_a_hardened_vm_green_and_says_why_what_is_missing_is_red():
    s = _summary(LIVE_EFI, encrypted_targets={"vda"}, zone="dmz", zone_kind="untrusted")
    assert {k: i.status for k, i in s.items()} == {
        "firmware": GOOD, "secure_boot": GOOD, "tpm": GOOD, "memory_encryption": BAD,
        "confinement": BAD, "encrypted_disks": GOOD, "zone": GOOD, "limits": GOOD,
    }  # fmt: skip
    assert s["tpm"].value == "TPM 2.0 (tpm-crb, emulator)"
    assert "no LSM" in s["confinement"].why and s["confinement"].value.startswith("unconfined")
    assert "SEV" in s["memory_encryption"].why


def test_the_summary_of_a_plain_vm_is_red_with_reasons():
    s = _summary(DEFINED_BIOS)
    assert s["firmware"].status == BAD and "BIOS" in s["firmware"].value
    assert s["secure_boot"].why == "Secure boot needs UEFI firmware."
    assert s["tpm"].status == BAD
    assert s["confinement"].status == UNKNOWN  # not running: labels come at start
    assert s["encrypted_disks"].status == BAD and s["encrypted_disks"].why == "Not encrypted: vda."
    assert s["zone"].status == BAD
    assert s["limits"].status == BAD and "CPU quota, memory hard limit, I/O limits" in s["limits"].why


def test_an_apparmor_confined_vm_is_green_and_seclabel_none_is_flagged():
    s = _summary(APPARMOR_SEV, CAPS_APPARMOR)
    assert s["confinement"].status == GOOD and s["confinement"].value == "AppArmor: libvirt-1234"
    assert s["memory_encryption"].status == GOOD and s["memory_encryption"].value == "SEV-SNP"
    off = APPARMOR_SEV.replace("<seclabel type='dynamic' model='apparmor' relabel='yes'><label>libvirt-1234</label>"
                               "</seclabel>", "<seclabel type='none' model='apparmor'/>")  # fmt: skip
    s = _summary(off, CAPS_APPARMOR)
    assert s["confinement"].status == BAD and "turns confinement off" in s["confinement"].why


def test_a_zone_problem_is_red():
    s = _summary(LIVE_EFI, zone="dmz", zone_kind="untrusted", zone_problem="interfaces in 2 zones")
    assert s["zone"].status == BAD and "2 zones" in s["zone"].why


@pytest.mark.parametrize("facts", [{}, None])
def test_a_vm_not_read_yet_says_so(facts):
    items = summary_items(facts or {}, security_models=[], encrypted_targets=set(), zone="", zone_kind="",
                          zone_problem="")  # fmt: skip
    assert [i.status for i in items] == [UNKNOWN] and "Not read yet" in items[0].why


def test_secure_boot_without_keys_is_red_and_with_the_profiles_own_keys_green():
    no_keys = LIVE_EFI.replace("<feature enabled='yes' name='enrolled-keys'/>",
                               "<feature enabled='no' name='enrolled-keys'/>")  # fmt: skip
    assert no_keys != LIVE_EFI
    s = _summary(no_keys)["secure_boot"]
    assert (s.status, s.value) == (BAD, "on, no keys") and "setup mode" in s.why
    s = _summary(no_keys, own_keys=True)["secure_boot"]
    assert (s.status, s.value) == (GOOD, "on (own keys)") and "the profile's own keys" in s.why
    assert _summary(LIVE_EFI)["secure_boot"].status == GOOD
