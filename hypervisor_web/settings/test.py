import os
import uuid

from .base import *  # noqa: F403
from .base import env

# One id per test run, inherited by the Celery workers the run starts: concurrent runs on
# one machine get their own database and queue and never wipe each other's.
if env("PORTAL_USE_TEST_DB") != "1":
    os.environ.setdefault("PORTAL_TEST_RUN", uuid.uuid4().hex[:8])
TEST_RUN = os.environ.get("PORTAL_TEST_RUN", "shared")

SECRET_KEY = "test-only-insecure-key-0123456789-abcdefghijklmnopqrstuvwxyz"
DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast tests only
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
# django-axes keeps its counters in that cache: per process is right for tests (each test
# starts with a cleared cache, tests/conftest.py), production uses Redis
SILENCED_SYSTEM_CHECKS = [*SILENCED_SYSTEM_CHECKS, "axes.W001"]  # noqa: F405
CELERY_TASK_ALWAYS_EAGER = False
CELERY_TASK_DEFAULT_QUEUE = env("CELERY_QUEUE") or f"portal-test-{TEST_RUN}"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

VAR_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)  # noqa: F405  (the test database lives there)

# Tests and the Celery worker they start share one real database: name it explicitly so
# the worker (PORTAL_USE_TEST_DB=1) opens the database pytest-django created.
_db = DATABASES["default"]  # noqa: F405
if _db["ENGINE"].endswith("sqlite3"):
    # Django's SQLite engine, but its flush (between transactional tests) may empty the
    # append-only audit table, as TRUNCATE does on PostgreSQL: see hypervisor_web/sqlite_test
    _db["ENGINE"] = "hypervisor_web.sqlite_test"
    _db["TEST"] = {"NAME": str(VAR_DIR / f"test-portal-{TEST_RUN}.sqlite3")}  # noqa: F405
else:
    _db["TEST"] = {"NAME": f"test_{_db['NAME']}_{TEST_RUN}"}
if env("PORTAL_USE_TEST_DB") == "1":
    _db["NAME"] = _db["TEST"]["NAME"]

# This run's VM images (pools, the simulated mapper's stand-ins), removed at the end of the run
IMAGE_DIR = IMAGE_DIR / f"test-{TEST_RUN}"  # noqa: F405

# Encryption: cheap PBKDF for tests only (production keeps the defaults of base.py); the
# pytest process and the Celery worker it starts share these directories.
ENCRYPTION_KEY_DIR = VAR_DIR / "test-encryption" / TEST_RUN / "keys"  # noqa: F405
ENCRYPTION_RUNTIME_DIR = VAR_DIR / "test-encryption" / TEST_RUN / "run"  # noqa: F405
ENCRYPTION_KEK_FILE_DIR = VAR_DIR / "test-encryption" / TEST_RUN / "kek"  # noqa: F405  (apart from keys/)
ENCRYPTION_HEADER_BACKUP_DIR = VAR_DIR / "test-encryption" / TEST_RUN / "headers"  # noqa: F405
ENCRYPTION_ALLOW_WEAK_PBKDF = True  # only here: apps/encryption/checks.py refuses it elsewhere
ENCRYPTION_PBKDF_MEMORY_KIB = 32768
ENCRYPTION_PBKDF_FORCE_ITERATIONS = 4
ENCRYPTION_KDF_MEMORY_KIB = 8192
ENCRYPTION_KDF_ITERATIONS = 1
ENCRYPTION_DEVICE_MAPPER = "simulated"  # this machine has no device-mapper
# the libvirt hook runs `manage.py libvirt_hook` for this run's VMs: on this run's database
ENCRYPTION_HOOK_EXTRA_ENV = {"PORTAL_USE_TEST_DB": "1", "PORTAL_TEST_RUN": TEST_RUN}

# Audit chain: this run's key (shared with its worker); no anchors unless a test sets a directory
# (pytest empties the tables between tests, an anchor outliving them would read as truncation)
AUDIT_CHAIN_KEY_PATH = VAR_DIR / "test-audit" / TEST_RUN / "chain.key"  # noqa: F405
AUDIT_ANCHOR_DIR = ""

# Backups: this run's repositories and staging (tests make their destinations under this root)
BACKUP_ALLOWED_ROOTS = [IMAGE_DIR / "backups"]
BACKUP_STAGING_DIR = VAR_DIR / "test-backups" / TEST_RUN / "staging"  # noqa: F405
BACKUP_CACHE_DIR = VAR_DIR / "test-backups" / TEST_RUN / "cache"  # noqa: F405

# This machine's nested KVM has no SMM: secure-boot guests run under TCG here
VMS_SECURE_BOOT_DOMAIN_TYPE = env("VMS_SECURE_BOOT_DOMAIN_TYPE") or "qemu"  # noqa: F405
