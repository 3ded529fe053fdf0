"""One object's events newest first: the (target_type, target_id) index gains (created_at,
id), so a VM's History tab (and the log's host and VM filters) walk the index in order and
stop after a page instead of reading and sorting every event about the object. Only
CREATE/DROP INDEX: on SQLite no table is rebuilt (its triggers stay)."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('audit', '0006_log_browsing_indexes'),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name='auditevent',
            name='audit_target_ref_idx',
        ),
        migrations.AddIndex(
            model_name='auditevent',
            index=models.Index(fields=['target_type', 'target_id', 'created_at', 'id'],
                               name='audit_target_ref_time_idx'),
        ),
    ]
