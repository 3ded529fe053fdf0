"""The shipped profiles: hardened, standard, minimal (apps/profiles/schema.py SHIPPED)."""

from django.db import migrations


def ship(apps, schema_editor):
    from apps.profiles.schema import SHIPPED

    VmProfile = apps.get_model("profiles", "VmProfile")
    VmProfileVersion = apps.get_model("profiles", "VmProfileVersion")
    for name, spec in SHIPPED.items():
        spec = {k: v for k, v in spec.items() if k != "description"}
        profile, created = VmProfile.objects.get_or_create(
            name=name, defaults={"spec": spec, "description": SHIPPED[name]["description"], "updated_by": "system"}
        )
        if created:
            VmProfileVersion.objects.create(profile=profile, version=1, spec=spec, description=profile.description,
                                            actor_name="system")  # fmt: skip


class Migration(migrations.Migration):
    dependencies = [("profiles", "0001_initial")]
    operations = [migrations.RunPython(ship, migrations.RunPython.noop)]
