"""A VM's security summary: firmware, secure boot, TPM, memory encryption, confinement,
encrypted disks, zone and limits, each good or bad with why.

Built from the database only: the facts the state collector read from the VM's live
definition (`VirtualMachine.security`, see gateways/libvirt/xml.py `domain_security_parse`)
and from the host's capabilities (`Host.security_models`), the encrypted disks the
encryption app tracks and the zone the network app knows. `summary_items` is a pure
function of those values (unit-tested on plain dicts); `vm_security_summary` reads them."""

from __future__ import annotations

from dataclasses import dataclass

GOOD, BAD, UNKNOWN = "good", "bad", "unknown"
_LSM_NAMES = {"apparmor": "AppArmor", "selinux": "SELinux"}


@dataclass(frozen=True)
class SecurityItem:
    key: str
    label: str
    status: str  # good, bad or unknown
    value: str
    why: str

    @property
    def good(self) -> bool:
        return self.status == GOOD


def host_confinement(security_models: list[str] | None) -> tuple[str, str]:
    """(status, sentence) about what the host can confine QEMU with (Host.confinement)."""
    from apps.core.models import Host

    return Host(security_models=security_models or []).confinement


def _confinement(facts: dict, security_models: list[str] | None) -> SecurityItem:
    host_status, host_line = host_confinement(security_models)
    labels = facts.get("seclabels") or []
    if not facts.get("running"):
        return SecurityItem("confinement", "Confinement", UNKNOWN, "not running",
                            "Security labels are given when the VM starts. " + host_line)  # fmt: skip
    for label in labels:
        model = label.get("model", "")
        if model in _LSM_NAMES and label.get("type") != "none":
            return SecurityItem("confinement", "Confinement", GOOD, f"{_LSM_NAMES[model]}: {label.get('label') or '?'}",
                                f"QEMU runs in {_LSM_NAMES[model]} profile/context {label.get('label') or '?'} "
                                f"({label.get('type')} label).")  # fmt: skip
    none_label = any(lb.get("type") == "none" and lb.get("model") in ("", *_LSM_NAMES) for lb in labels)
    dac = next((lb for lb in labels if lb.get("model") == "dac"), None)
    value = f"unconfined · DAC {dac.get('label')}" if dac and dac.get("label") else "unconfined"
    if none_label:
        why = "Its definition turns confinement off (<seclabel type='none'/>)."
    elif host_status == BAD:
        why = host_line
    else:
        why = "No AppArmor or SELinux label in its live definition: QEMU runs unconfined."
    if dac and host_status != BAD:
        why += f" Only DAC separates it (runs as {dac.get('label')})."
    return SecurityItem("confinement", "Confinement", BAD, value, why)


def summary_items(facts: dict, *, security_models: list[str] | None, encrypted_targets: set[str],
                  zone: str, zone_kind: str, zone_problem: str,
                  own_keys: bool = False) -> list[SecurityItem]:  # fmt: skip
    """The summary from plain values: `facts` as domain_security_parse returns them;
    `own_keys`: the portal enrolled the VM's profile's own secure-boot keys in its NVRAM."""
    if not facts:
        why = "Not read yet: the state collector reads the VM's definition with each bulk read and after every event."
        return [SecurityItem("facts", "Security facts", UNKNOWN, "not read yet", why)]
    items = []
    fw = facts.get("firmware") or {}
    uefi = fw.get("type") == "uefi"
    items.append(SecurityItem("firmware", "Firmware", GOOD if uefi else BAD, "UEFI" if uefi else "BIOS",
                              f"UEFI firmware {fw.get('loader') or ''}".strip() + "." if uefi
                              else "Legacy BIOS (SeaBIOS): no secure boot, no measured boot."))  # fmt: skip
    if fw.get("secure_boot") and fw.get("enrolled_keys") is False and not own_keys:
        items.append(SecurityItem("secure_boot", "Secure boot", BAD, "on, no keys",
                                  "Secure-boot firmware whose variables started without keys (setup mode): nothing "
                                  "is verified until a PK, KEK and db are enrolled (a profile's own keys, or "
                                  f"Microsoft's); NVRAM {fw.get('nvram') or '?'}."))  # fmt: skip
    elif fw.get("secure_boot"):
        keys = fw.get("enrolled_keys")
        extra = (" against the profile's own keys (PK, KEK, db enrolled by the portal)" if own_keys
                 else "" if keys is None else " with enrolled keys")  # fmt: skip
        items.append(SecurityItem("secure_boot", "Secure boot", GOOD, "on (own keys)" if own_keys else "on",
                                  f"The firmware checks boot loaders' signatures{extra}; "
                                  f"NVRAM {fw.get('nvram') or '?'}."))  # fmt: skip
    else:
        items.append(SecurityItem("secure_boot", "Secure boot", BAD, "off",
                                  "Secure boot is off: any boot loader runs." if uefi
                                  else "Secure boot needs UEFI firmware."))  # fmt: skip
    tpms = facts.get("tpm") or []
    if tpms:
        t = tpms[0]
        version = t.get("version") or ("2.0" if t.get("model") == "tpm-crb" else "?")
        items.append(SecurityItem("tpm", "TPM", GOOD, f"TPM {version} ({t.get('model')}, {t.get('backend')})",
                                  "A virtual TPM for measured boot and sealed secrets"
                                  + (" (swtpm)." if t.get("backend") == "emulator" else ".")))  # fmt: skip
    else:
        items.append(SecurityItem("tpm", "TPM", BAD, "none", "No TPM: no measured boot or sealed keys in the guest."))
    me = facts.get("memory_encryption")
    if me:
        items.append(SecurityItem("memory_encryption", "Memory encryption", GOOD, me.get("type", "").upper(),
                                  f"Guest memory is encrypted ({me.get('type')}, policy {me.get('policy') or '-'})."))
    else:
        items.append(SecurityItem("memory_encryption", "Memory encryption", BAD, "none",
                                  "No SEV/SEV-ES/SEV-SNP: the host can read the guest's memory."))  # fmt: skip
    items.append(_confinement(facts, security_models))
    disks = [d for d in facts.get("disks") or [] if d]
    encrypted = (set(facts.get("luks_disks") or []) | encrypted_targets) & set(disks)
    plain = [d for d in disks if d not in encrypted]
    if not disks:
        items.append(SecurityItem("encrypted_disks", "Encrypted disks", UNKNOWN, "no disks", "The VM has no disks."))
    elif plain:
        items.append(SecurityItem("encrypted_disks", "Encrypted disks", BAD, f"{len(encrypted)} of {len(disks)}",
                                  f"Not encrypted: {', '.join(plain)}."))  # fmt: skip
    else:
        items.append(SecurityItem("encrypted_disks", "Encrypted disks", GOOD, f"{len(encrypted)} of {len(disks)}",
                                  "Every disk is LUKS-encrypted."))  # fmt: skip
    if zone_problem:
        items.append(SecurityItem("zone", "Zone", BAD, zone, f"Flagged: {zone_problem}."))
    elif zone_kind:
        items.append(SecurityItem("zone", "Zone", GOOD, f"{zone} ({zone_kind})",
                                  "Its interfaces are in this zone; the zone's firewall policy applies."))  # fmt: skip
    else:
        items.append(SecurityItem("zone", "Zone", BAD, zone or "none",
                                  "In no security zone: no zone's firewall policy applies."))  # fmt: skip
    lim = facts.get("limits") or {}
    have, missing = [], []
    (have if lim.get("cpu_quota", 0) > 0 else missing).append("CPU quota")
    (have if lim.get("memory_hard_limit_kib", 0) > 0 else missing).append("memory hard limit")
    (have if lim.get("blkiotune") or lim.get("iotune_disks") else missing).append("I/O limits")
    items.append(SecurityItem("limits", "Limits", BAD if missing else GOOD,
                              ", ".join(have) or "none",
                              f"Missing: {', '.join(missing)} (a runaway guest can starve its neighbours)." if missing
                              else "CPU quota, memory hard limit and I/O limits are set."))  # fmt: skip
    return items


def vm_security_summary(vm) -> list[SecurityItem]:
    """The VM's summary from the database (its row, its host's row, its encrypted disks and zone)."""
    from apps.encryption.models import EncryptedDisk
    from apps.network.selectors import vm_network

    targets = set(EncryptedDisk.objects.filter(vm=vm, state=EncryptedDisk.State.READY).values_list("target", flat=True))
    net = vm_network(vm)
    zones = net["zones"]
    origin = getattr(vm, "origin", None)  # made from a profile (apps/profiles VmOrigin), if it was
    own_keys = bool(origin and (origin.spec.get("firmware") or {}).get("keys"))
    return summary_items(
        vm.security or {},
        security_models=vm.host.security_models,
        encrypted_targets=targets,
        zone=zones[0].name if len(zones) == 1 else vm.zone,
        zone_kind=zones[0].kind if len(zones) == 1 else "",
        zone_problem=net["zone_problem"],
        own_keys=own_keys,
    )
