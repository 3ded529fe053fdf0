"""Key the audit chain: the events written before, under the unkeyed SHA-256 chain, are
verified with it and re-linked with HMAC-SHA256 under the chain key (created here, outside
the database: settings.AUDIT_CHAIN_KEY_PATH). A broken old chain stops the migration naming
the event. One rule then verifies the whole log: no per-event version marker that a forger
with database access could set back to the unkeyed rule. See apps.audit.chain.rekey_legacy."""

from django.db import migrations


def forwards(apps, schema_editor):
    from apps.audit.chain import rekey_legacy

    rekey_legacy(
        apps.get_model("audit", "AuditEvent"), apps.get_model("audit", "AuditChainHead"), schema_editor.connection
    )


class Migration(migrations.Migration):
    dependencies = [("audit", "0004_chain_checkpoint_forward_cursor")]
    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
