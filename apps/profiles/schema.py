"""The guide's VM profile JSON: its JSON Schema, the check that names the offending key,
the merge of a profile with a VM's overrides, and the profiles the portal ships.

    {"vcpus": 2, "memory_mb": 1024,
     "disks": [{"size_mb": 20480, "pool": "default", "encrypted": true}],
       (an encrypted disk is LUKS2, opened by the host; "encryption": "qemu-luks" for LUKS1 QEMU opens)
     "networks": [{"zone": "dmz"}] or [{"zone_kind": "untrusted"}],
     "firmware": {"type": "uefi", "secure_boot": true, "enrolled_keys": true},
       (or own keys: "enrolled_keys": false, "keys": {"pk": PEM, "kek": [PEM], "db": [PEM]})
     "limits": {"cpu_quota_percent": 50, "memory_max_mb": 2048, "io_bandwidth_mb": 100, "iops": 1000},
     "tpm": {"version": "2.0", "model": "tpm-crb"},
     "cpu_features": {"sev": false, "sev_es": false, "sev_snp": false},
     "memory_options": {"hugepages": false, "locked": false, "no_shared_pages": false}}
"""

from __future__ import annotations

import copy

import jsonschema

from apps.core.errors import InvalidInput

MIN_MEMORY_MB = 16

_BOOL = {"type": "boolean"}
_PEM = {"type": "string", "minLength": 1, "maxLength": 16384}


def _object(properties: dict, required: tuple = ()) -> dict:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


SCHEMA = _object(
    {
        "name": {"type": "string"},
        "description": {"type": "string", "maxLength": 200},
        "vcpus": {"type": "integer", "minimum": 1, "maximum": 64},
        "memory_mb": {"type": "integer", "minimum": MIN_MEMORY_MB},
        "disks": {
            "type": "array",
            "maxItems": 8,
            "items": _object(
                {"size_mb": {"type": "integer", "minimum": 1}, "pool": {"type": "string"}, "encrypted": _BOOL,
                 # luks2 (default, the product's standard: opened by the host with dm-crypt) or
                 # qemu-luks (LUKS1 opened by QEMU itself: hosts without device-mapper)
                 "encryption": {"enum": ["luks2", "qemu-luks"]}},
                required=("size_mb",),
            ),
        },
        "networks": {
            "type": "array",
            "maxItems": 4,
            "items": {
                "oneOf": [
                    _object({"zone": {"type": "string", "minLength": 1}}, required=("zone",)),
                    _object({"zone_kind": {"enum": ["secure", "untrusted", "vpn-only", "custom"]}},
                            required=("zone_kind",)),  # fmt: skip
                ]
            },
        },
        "firmware": _object(
            {
                "type": {"enum": ["bios", "uefi"]},
                "secure_boot": _BOOL,
                "enrolled_keys": _BOOL,
                # the profile's own secure-boot keys: PEM certificates (apps/profiles/secure_boot.py)
                "keys": _object(
                    {
                        "pk": _PEM,
                        "kek": {"type": "array", "minItems": 1, "maxItems": 8, "items": _PEM},
                        "db": {"type": "array", "minItems": 1, "maxItems": 16, "items": _PEM},
                    },
                    required=("pk", "kek", "db"),
                ),
            }
        ),
        "limits": _object(
            {
                "cpu_quota_percent": {"type": "integer", "minimum": 1, "maximum": 100},
                "memory_max_mb": {"type": "integer", "minimum": MIN_MEMORY_MB},
                "io_bandwidth_mb": {"type": "integer", "minimum": 1},
                "iops": {"type": "integer", "minimum": 1},
            }
        ),
        "tpm": _object({"version": {"enum": ["2.0"]}, "model": {"enum": ["tpm-crb", "tpm-tis"]}}),
        "cpu_features": _object({"sev": _BOOL, "sev_es": _BOOL, "sev_snp": _BOOL}),
        "memory_options": _object({"hugepages": _BOOL, "locked": _BOOL, "no_shared_pages": _BOOL}),
    },
    required=("vcpus", "memory_mb"),
)

_VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def _where(error: jsonschema.ValidationError) -> str:
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
    return path or "the profile"


def _message(error: jsonschema.ValidationError) -> str:
    where = _where(error)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        known = ", ".join(error.schema.get("properties", {}))
        return f"{where}: unknown key {', '.join(map(repr, extra))} (known keys: {known})"
    if error.validator == "type":
        return f"{where}: must be {'an' if error.validator_value == 'integer' else 'a'} {error.validator_value}, " \
               f"not {type(error.instance).__name__} {str(error.instance)[:30]!r}"  # fmt: skip
    if error.validator == "required":
        return f"{where}: {error.message}"
    if error.validator == "oneOf" and isinstance(error.instance, dict):
        return f"{where}: a network names a zone ({{\"zone\": NAME}}) or a zone kind ({{\"zone_kind\": KIND}})"
    return f"{where}: {error.message}"


def validate_spec(spec) -> dict:
    """The spec, if it is a valid profile; else InvalidInput naming each offending key."""
    if not isinstance(spec, dict):
        raise InvalidInput("A profile is a JSON object ({...}).")
    errors = sorted(_VALIDATOR.iter_errors(spec), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise InvalidInput("Invalid profile: " + "; ".join(_message(e) for e in errors[:5]))
    limits = spec.get("limits", {})
    if "memory_max_mb" in limits and limits["memory_max_mb"] < spec["memory_mb"]:
        raise InvalidInput(
            f"limits.memory_max_mb ({limits['memory_max_mb']}) is below memory_mb ({spec['memory_mb']}): "
            "the guest would be killed. Raise the limit (leave room for QEMU's own memory)."
        )
    for index, disk in enumerate(spec.get("disks", [])):
        if "encryption" in disk and not disk.get("encrypted"):
            raise InvalidInput(f"disks[{index}].encryption ({disk['encryption']}) needs disks[{index}].encrypted true.")
    fw = spec.get("firmware", {})
    if fw.get("secure_boot") and fw.get("type", "uefi") != "uefi":
        raise InvalidInput("firmware.secure_boot needs firmware.type 'uefi'.")
    if "keys" in fw:
        if not fw.get("secure_boot"):
            raise InvalidInput("firmware.keys (the profile's own secure-boot keys) needs firmware.secure_boot true.")
        if fw.get("enrolled_keys"):
            raise InvalidInput(
                "firmware.keys (your own PK, KEK and db) and firmware.enrolled_keys (Microsoft's) exclude each "
                "other: set firmware.enrolled_keys to false."
            )
        from .secure_boot import keys_check

        keys_check(fw["keys"], expiry=False)  # a new VM's enrolment also refuses expired ones
    cpu = spec.get("cpu_features", {})
    if sum(bool(cpu.get(k)) for k in ("sev", "sev_es", "sev_snp")) > 1:
        raise InvalidInput("cpu_features: choose one of sev, sev_es, sev_snp.")
    return spec


def merged(profile_spec: dict, overrides: dict | None) -> dict:
    """The profile with a VM's overrides on top (objects merged key by key, lists and
    values replaced), validated."""
    if overrides is not None and not isinstance(overrides, dict):
        raise InvalidInput("Overrides are a JSON object ({...}).")
    out = copy.deepcopy(profile_spec)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = copy.deepcopy(value)
    return validate_spec(out)


SHIPPED = {
    "hardened": {
        "description": "UEFI secure boot, vTPM 2.0, limits, untrusted zone, encrypted disk",
        "vcpus": 2,
        "memory_mb": 2048,
        "disks": [{"size_mb": 20480, "encrypted": True}],
        "networks": [{"zone_kind": "untrusted"}],
        "firmware": {"type": "uefi", "secure_boot": True, "enrolled_keys": True},
        "limits": {"cpu_quota_percent": 80, "memory_max_mb": 3072, "io_bandwidth_mb": 100, "iops": 2000},
        "tpm": {"version": "2.0", "model": "tpm-crb"},
        "cpu_features": {"sev": False, "sev_es": False, "sev_snp": False},
        "memory_options": {"hugepages": False, "locked": False, "no_shared_pages": True},
    },
    "standard": {
        "description": "UEFI, 2 vCPUs, 2 GiB, a 20 GiB disk",
        "vcpus": 2,
        "memory_mb": 2048,
        "disks": [{"size_mb": 20480, "encrypted": False}],
        "firmware": {"type": "uefi", "secure_boot": False},
    },
    "minimal": {
        "description": "BIOS, 1 vCPU, 64 MiB, a 64 MiB disk, no network",
        "vcpus": 1,
        "memory_mb": 64,
        "disks": [{"size_mb": 64, "encrypted": False}],
        "firmware": {"type": "bios"},
    },
}
