"""VM profiles: read, save (each save is a new version), import and export as the guide's
JSON. Admins change them (profiles.change); whoever may create VMs reads them."""

from __future__ import annotations

import json

from django.db import transaction

from apps.accounts.permissions import authorize
from apps.audit.services import audited
from apps.core.errors import InvalidInput, NotFound
from apps.core.validators import validate_name

from .models import VmProfile, VmProfileVersion
from .schema import validate_spec

MAX_JSON_CHARS = 20_000


def profiles_list(*, actor) -> list[VmProfile]:
    authorize(actor, "vms.create", anywhere=True, action="profiles.list")
    return list(VmProfile.objects.all())


def profile_get(*, actor, name: str) -> VmProfile:
    authorize(actor, "vms.create", anywhere=True, action="profiles.view")
    profile = VmProfile.objects.filter(name=name).first()
    if profile is None:
        raise NotFound(f"No VM profile named {name[:63]!r}.")
    return profile


def parse_json(text: str, what: str = "profile") -> dict:
    if len(text) > MAX_JSON_CHARS:
        raise InvalidInput(f"The {what} JSON is limited to {MAX_JSON_CHARS} characters.")
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise InvalidInput(f"The {what} is not valid JSON: {exc.msg} at {where}.") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"The {what} must be a JSON object ({{...}}).")
    return value


def profile_save(*, actor, name: str, spec: dict, description: str = "") -> VmProfile:
    """Create the profile or save a new version of it (the old versions stay)."""
    with audited(actor=actor, action="profiles.profile.save", target=("vmprofile", "", name[:63]),
                 perm="profiles.change", params={"name": name[:63]}) as ev:  # fmt: skip
        validate_name(name, "profile name")
        if len(description) > 200:
            raise InvalidInput("The description is limited to 200 characters.")
        spec = {k: v for k, v in spec.items() if k not in ("name", "description")}
        validate_spec(spec)
        with transaction.atomic():
            profile = VmProfile.objects.select_for_update().filter(name=name).first()
            actor_name = getattr(actor, "username", "") or "system"
            if profile is None:
                profile = VmProfile.objects.create(name=name, spec=spec, description=description,
                                                   updated_by=actor_name)  # fmt: skip
            else:
                ev.params["before"] = {"version": profile.version, "spec": profile.spec}
                profile.version += 1
                profile.spec, profile.description, profile.updated_by = spec, description, actor_name
                profile.save()
            VmProfileVersion.objects.create(profile=profile, version=profile.version, spec=spec,
                                            description=description, actor_name=actor_name)  # fmt: skip
        ev.target = profile
        ev.params["after"] = {"version": profile.version, "spec": spec}
    return profile


def profile_import(*, actor, text: str) -> VmProfile:
    """A profile from the guide's JSON (with its "name")."""
    with audited(actor=actor, action="profiles.profile.import", perm="profiles.change") as ev:
        data = parse_json(text)
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidInput('The profile JSON needs a "name".')
        description = data.get("description", "")
        if not isinstance(description, str):
            raise InvalidInput("description: must be a string.")
        validate_spec(data)
        ev.params["name"] = name
        ev.recorded = True  # profile_save records the save
    return profile_save(actor=actor, name=name, spec=data, description=description)


def profile_export(profile: VmProfile) -> str:
    return json.dumps({"name": profile.name, "description": profile.description, **profile.spec}, indent=2)
