"""Indexes for the audit log pages: keyset reads by (created_at, id), alone or under the
common filters (actor, target, address), and the detail page's lookups by request id and
target. The action prefix uses the varchar_pattern_ops index Django builds for `action` on
PostgreSQL. Only CREATE/DROP INDEX: on SQLite no table is rebuilt (its triggers stay)."""

from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('audit', '0005_rekey_chain'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name='auditevent',
            name='audit_audit_actor_n_0a4b50_idx',
        ),
        migrations.AddIndex(
            model_name='auditevent',
            index=models.Index(fields=['created_at', 'id'], name='audit_time_id_idx'),
        ),
        migrations.AddIndex(
            model_name='auditevent',
            index=models.Index(fields=['actor_name', 'created_at', 'id'], name='audit_actor_time_idx'),
        ),
        migrations.AddIndex(
            model_name='auditevent',
            index=models.Index(fields=['target_name', 'created_at', 'id'], name='audit_target_time_idx'),
        ),
        migrations.AddIndex(
            model_name='auditevent',
            index=models.Index(fields=['source_ip', 'created_at', 'id'], name='audit_ip_time_idx'),
        ),
        migrations.AddIndex(
            model_name='auditevent',
            index=models.Index(fields=['target_type', 'target_id'], name='audit_target_ref_idx'),
        ),
        migrations.AddIndex(
            model_name='auditevent',
            index=models.Index(fields=['request_id'], name='audit_request_idx'),
        ),
    ]
