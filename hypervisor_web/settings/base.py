"""Settings shared by every environment. Every value read from the environment is read
here, once, with its default; the README's configuration table lists them all."""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent.parent


def env(name: str, default: str | None = None) -> str | None:
    """Read NAME, or the contents of the file named by NAME_FILE (for secrets)."""
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        return Path(file_path).read_text().strip()
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    value = env(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = env(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from exc


VAR_DIR = Path(env("PORTAL_VAR_DIR", str(BASE_DIR / "var")))
# VM images the portal makes on this host (the demo pool; the tests' pools): QEMU runs as its
# own user (libvirt-qemu) and must be able to enter every directory on the way, so they live
# neither in the private state directory nor in a clone under a 0700 home.
IMAGE_DIR = Path(env("PORTAL_IMAGE_DIR", "/var/lib/hypervisor-portal/images"))

SECRET_KEY = env("SECRET_KEY")
DEBUG = False
ALLOWED_HOSTS = [h for h in (env("ALLOWED_HOSTS", "localhost,127.0.0.1") or "").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in (env("CSRF_TRUSTED_ORIGINS", "") or "").split(",") if o]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
    "axes",
    "apps.core",
    "apps.accounts",
    "apps.audit",
    "apps.vms",
    "apps.storage",
    "apps.network",
    "apps.encryption",
    "apps.backups",
    "apps.monitoring",
    "apps.profiles",
    "apps.reviews",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "apps.accounts.mfa.SecondFactorMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "apps.audit.middleware.RequestContextMiddleware",
    "apps.accounts.sessions.SessionEpochMiddleware",  # after the request context: refusals audited with the address
    "apps.core.middleware.ContentSecurityPolicyMiddleware",
    "apps.core.middleware.PortalErrorMiddleware",
    "axes.middleware.AxesMiddleware",  # last: turns a locked-out sign-in into the lockout page
]

ROOT_URLCONF = "hypervisor_web.urls"
WSGI_APPLICATION = "hypervisor_web.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "builtins": ["template_partials.templatetags.partials"],
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "apps.accounts.context_processors.permissions",
            ],
        },
    }
]

DATABASES = {
    "default": dj_database_url.parse(env("DATABASE_URL", f"sqlite:///{VAR_DIR / 'portal.sqlite3'}"), conn_max_age=60)
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # The web process and the workers write at once: take the write lock when a transaction
    # starts (waiting up to 20 s) instead of failing with "database is locked" mid-way.
    DATABASES["default"].setdefault("OPTIONS", {}).update(timeout=20, transaction_mode="IMMEDIATE")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env("REDIS_URL", "redis://127.0.0.1:6379/0")
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "portal",
    }
}

PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"
SESSION_COOKIE_AGE = env_int("SESSION_COOKIE_AGE", 8 * 3600)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Strict"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

LOGIN_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5)
LOGIN_FAILURE_WINDOW = env_int("LOGIN_FAILURE_WINDOW", 900)
REAUTH_MAX_AGE = env_int("REAUTH_MAX_AGE", 600)
REAUTH_FAILURE_LIMIT = env_int("REAUTH_FAILURE_LIMIT", 5)  # counted apart from sign-ins

# Sign-in throttling: django-axes, by user name, in the cache (Redis), for LOGIN_FAILURE_WINDOW
# after LOGIN_FAILURE_LIMIT failures; every lockout is audited (apps.audit.auth_events).
# `manage.py axes_reset_username NAME` lifts a lockout early.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "apps.accounts.backends.PortalModelBackend",  # ModelBackend, the user read prepared
]
AXES_HANDLER = "axes.handlers.cache.AxesCacheHandler"
AXES_FAILURE_LIMIT = "apps.accounts.throttle.login_failure_limit"  # reads LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = "apps.accounts.throttle.login_cool_off"  # reads LOGIN_FAILURE_WINDOW
# By user name only: the address the portal sees is REMOTE_ADDR (a client's X-Forwarded-For
# is not trusted), which behind the TLS proxy is the proxy's for everyone, so locking an
# address would lock every user out at once (axes.W006 warns of this choice).
AXES_LOCKOUT_PARAMETERS = ["username"]
SILENCED_SYSTEM_CHECKS = ["axes.W006"]
AXES_CLIENT_IP_CALLABLE = "apps.audit.middleware.client_ip"  # the address the audit log shows
AXES_LOCKOUT_CALLABLE = "apps.accounts.views.locked_out"
AXES_RESET_ON_SUCCESS = True
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False  # a try while locked out is refused, not counted
AXES_VERBOSE = False

# Two-factor sign-in (TOTP, apps.accounts.mfa): always for these roles; for everyone with
# MFA_REQUIRED_FOR_ALL. A user who has enrolled is always asked for the code.
MFA_REQUIRED_ROLES = ("admin",)
MFA_REQUIRED_FOR_ALL = env_bool("MFA_REQUIRED_FOR_ALL", False)
OTP_TOTP_ISSUER = env("OTP_TOTP_ISSUER", "Hypervisor portal")
MFA_RECOVERY_CODES = 10

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"

# libvirt
LIBVIRT_URI = env("LIBVIRT_URI", "qemu:///system")
DEFAULT_HOST_NAME = env("DEFAULT_HOST_NAME", "local")

# Encryption (apps.encryption): key store, KEK provider and LUKS defaults.
# Production must keep the PBKDF cost at or above cryptsetup's defaults (1 GiB, 4 rounds).
ENCRYPTION_KEY_DIR = Path(env("ENCRYPTION_KEY_DIR", str(VAR_DIR / "keys")))
# Where an unsealed passphrase KEK is kept while the store is open: must be a tmpfs (RAM),
# so a reboot seals the store again.
ENCRYPTION_RUNTIME_DIR = Path(env("ENCRYPTION_RUNTIME_DIR", "/run/hypervisor-portal"))
ENCRYPTION_KEK_PROVIDER = env("ENCRYPTION_KEK_PROVIDER", "file")  # file | tpm2 | passphrase | pkcs11
# The `file` KEK (and the `tpm2` sealed KEK blobs) live apart from the keys they wrap: a
# root-only directory outside the state directory. Inside ENCRYPTION_KEY_DIR is refused.
ENCRYPTION_KEK_FILE_DIR = Path(env("ENCRYPTION_KEK_FILE_DIR", "/etc/hypervisor-portal/kek"))
# The TPM 2.0 of the `tpm2` provider, as a tpm2-tools TCTI (tests: "swtpm:host=127.0.0.1,port=N")
ENCRYPTION_TPM2_TCTI = env("ENCRYPTION_TPM2_TCTI", "device:/dev/tpmrm0")
ENCRYPTION_PKCS11_LIBRARY = env("ENCRYPTION_PKCS11_LIBRARY", "/usr/lib/softhsm/libsofthsm2.so")
ENCRYPTION_PKCS11_TOKEN = env("ENCRYPTION_PKCS11_TOKEN", "portal-kek")
ENCRYPTION_PKCS11_PIN = env("ENCRYPTION_PKCS11_PIN", "")  # use ENCRYPTION_PKCS11_PIN_FILE
ENCRYPTION_LUKS_CIPHER = env("ENCRYPTION_LUKS_CIPHER", "aes-xts-plain64")
ENCRYPTION_LUKS_KEY_SIZE = env_int("ENCRYPTION_LUKS_KEY_SIZE", 512)
ENCRYPTION_PBKDF = env("ENCRYPTION_PBKDF", "argon2id")
ENCRYPTION_PBKDF_MEMORY_KIB = env_int("ENCRYPTION_PBKDF_MEMORY_KIB", 1048576)
ENCRYPTION_PBKDF_ITER_TIME_MS = env_int("ENCRYPTION_PBKDF_ITER_TIME_MS", 2000)
ENCRYPTION_PBKDF_FORCE_ITERATIONS = env_int("ENCRYPTION_PBKDF_FORCE_ITERATIONS", 0)  # 0: benchmark (iter time)
# Argon2id cost of the passphrase KEK and of escrow files (RFC 9106 second recommendation).
ENCRYPTION_KDF_MEMORY_KIB = env_int("ENCRYPTION_KDF_MEMORY_KIB", 65536)
ENCRYPTION_KDF_ITERATIONS = env_int("ENCRYPTION_KDF_ITERATIONS", 3)
ENCRYPTION_KEY_MAX_AGE_DAYS = env_int("ENCRYPTION_KEY_MAX_AGE_DAYS", 365)
ENCRYPTION_HEADER_BACKUP_DIR = Path(env("ENCRYPTION_HEADER_BACKUP_DIR", str(VAR_DIR / "luks-headers")))
ENCRYPTION_COMMAND_TIMEOUT = env_int("ENCRYPTION_COMMAND_TIMEOUT", 6 * 3600)
# "cryptsetup" opens real dm-crypt mappings; "simulated" stands in for the kernel step on
# hosts without device-mapper (see apps/encryption/gateways/cryptsetup.py).
ENCRYPTION_DEVICE_MAPPER = env("ENCRYPTION_DEVICE_MAPPER", "cryptsetup")
# Where the portal registers its VMs with encrypted disks for the libvirt qemu hook (root-only;
# must match PORTAL_HOOK_REGISTRY in /etc/hypervisor-portal/hook.env, written by setup).
ENCRYPTION_HOOK_REGISTRY_DIR = Path(env("ENCRYPTION_HOOK_REGISTRY_DIR", "/var/lib/hypervisor-portal/hook-domains"))
# The key of a deleted encrypted disk is kept (wrapped) this long, then destroyed by beat.
ENCRYPTION_RETIRED_KEY_GRACE_DAYS = env_int("ENCRYPTION_RETIRED_KEY_GRACE_DAYS", 30)

# Celery
CELERY_BROKER_URL = env("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Long jobs (in-place encryption, registered with long=True) run in apps.core.tasks.run_long_job
# under this hard time limit, above ENCRYPTION_COMMAND_TIMEOUT. Redis re-delivers a message
# not acknowledged within the visibility timeout (acks_late: a job is acknowledged when it
# ends), so the visibility timeout must exceed the longest job's time limit.
JOB_LONG_TIME_LIMIT = env_int("JOB_LONG_TIME_LIMIT", ENCRYPTION_COMMAND_TIMEOUT + 1800)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", ENCRYPTION_COMMAND_TIMEOUT + 3600)
}
CELERY_TASK_DEFAULT_QUEUE = env("CELERY_QUEUE", "portal")
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
JOB_STALE_SECONDS = env_int("JOB_STALE_SECONDS", 1800)
COLLECTOR_INTERVAL = env_int("COLLECTOR_INTERVAL", 30)  # seconds between bulk reads of each host

# The console proxy (apps/vms/console_proxy.py, `manage.py console_proxy`, started by `make run`):
# it listens on loopback only and joins a browser's websocket to the VM's VNC unix socket.
CONSOLE_PROXY_BIND = env("CONSOLE_PROXY_BIND", "127.0.0.1")
CONSOLE_PROXY_PORT = env_int("CONSOLE_PROXY_PORT", 6080)
# the websocket URL browsers use to reach it; empty: ws://<the page's host>:CONSOLE_PROXY_PORT/console
CONSOLE_PUBLIC_URL = env("CONSOLE_PUBLIC_URL", "")
CONSOLE_TOKEN_SECONDS = env_int("CONSOLE_TOKEN_SECONDS", 30)  # a console token must be redeemed this soon
CONSOLE_MAX_SECONDS = env_int("CONSOLE_MAX_SECONDS", 28800)  # a console session is closed after this long
# A command past its timeout (or whose job hit its soft time limit) gets SIGTERM, and SIGKILL
# only this many seconds later: cryptsetup finishes the block it is writing and checkpoints.
# Keep it under the 300 s between a long job's soft and hard time limits.
COMMAND_KILL_GRACE = env_int("COMMAND_KILL_GRACE", 60)
CELERY_BEAT_SCHEDULE = {
    "jobs-reap-stale": {"task": "apps.core.tasks.jobs_reap_stale", "schedule": 60.0},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO")},
}

# Storage (apps.storage): quotas, pool limits, monitoring. The defaults seed the settings
# an admin then edits in the portal (Storage > Settings).
STORAGE_CHECK_INTERVAL = env_int("STORAGE_CHECK_INTERVAL", 300)  # seconds between usage checks
STORAGE_DEFAULT_QUOTA_GIB = env_int("STORAGE_DEFAULT_QUOTA_GIB", 100)
STORAGE_DEFAULT_ALERT_PERCENT = env_int("STORAGE_DEFAULT_ALERT_PERCENT", 80)
STORAGE_DEFAULT_BREACH_ACTION = env("STORAGE_DEFAULT_BREACH_ACTION", "alert")  # alert | refuse | suspend
STORAGE_DEFAULT_MAX_OVERCOMMIT = env("STORAGE_DEFAULT_MAX_OVERCOMMIT", "3.0")  # provisioned / capacity
STORAGE_DEFAULT_RESERVE_PERCENT = env_int("STORAGE_DEFAULT_RESERVE_PERCENT", 10)
STORAGE_ALERT_HYSTERESIS_PERCENT = env_int("STORAGE_ALERT_HYSTERESIS_PERCENT", 5)  # no flapping
STORAGE_MAX_SIZE_GIB = env_int("STORAGE_MAX_SIZE_GIB", 1 << 20)  # larger quotas/volumes are typos
STORAGE_SAMPLE_RAW_HOURS = env_int("STORAGE_SAMPLE_RAW_HOURS", 48)  # then hourly averages
STORAGE_SAMPLE_HOURLY_DAYS = env_int("STORAGE_SAMPLE_HOURLY_DAYS", 30)  # then daily averages
STORAGE_SAMPLE_KEEP_DAYS = env_int("STORAGE_SAMPLE_KEEP_DAYS", 400)
# concurrent libvirt calls of the periodic check (volume reads, domain stats); 1: one after another
STORAGE_LIBVIRT_READ_WORKERS = env_int("STORAGE_LIBVIRT_READ_WORKERS", 4)
# Outgoing mail (storage alerts): Django's send_mail.
EMAIL_HOST = env("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env("EMAIL_HOST_PASSWORD", "")  # use EMAIL_HOST_PASSWORD_FILE
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10)
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", "hypervisor-portal@localhost")
CELERY_BEAT_SCHEDULE["encryption-retired-keys-destroy"] = {
    "task": "apps.encryption.tasks.retired_keys_destroy",
    "schedule": 3600.0,
}
CELERY_BEAT_SCHEDULE["encryption-definitions-protect"] = {
    "task": "apps.encryption.tasks.definitions_protect",
    "schedule": 300.0,
}
CELERY_BEAT_SCHEDULE["storage-check"] = {
    "task": "apps.storage.tasks.storage_check",
    "schedule": float(STORAGE_CHECK_INTERVAL),
}

# Backups (apps.backups): restic repositories under allowed roots, their passwords in the key
# store (never beside the repository).
BACKUP_ALLOWED_ROOTS = [
    Path(p) for p in (env("BACKUP_ALLOWED_ROOTS", "/var/backups/hypervisor-portal") or "").split(",") if p.strip()
]
BACKUP_STAGING_DIR = Path(env("BACKUP_STAGING_DIR", str(VAR_DIR / "backup-staging")))  # domain XML, manifests
BACKUP_CACHE_DIR = Path(env("BACKUP_CACHE_DIR", str(VAR_DIR / "backup-cache")))  # restic's local cache
# LUKS headers and wrapped disk keys go to a restic repository of their own: this directory
# (inside an allowed root), or, empty, "<destination>-keys" beside each destination
BACKUP_KEYS_DESTINATION = env("BACKUP_KEYS_DESTINATION", "")
# restic's compression of disk data: auto (zstd fastest), off (~20% less CPU per byte, bigger
# repository for compressible disks; right for images of encrypted disks), max
BACKUP_COMPRESSION = env("BACKUP_COMPRESSION", "auto")
if BACKUP_COMPRESSION not in ("auto", "off", "max"):
    raise ImproperlyConfigured(f"BACKUP_COMPRESSION must be auto, off or max, not {BACKUP_COMPRESSION!r}")
BACKUP_COMMAND_TIMEOUT = env_int("BACKUP_COMMAND_TIMEOUT", 6 * 3600)  # one restic backup/restore/check
BACKUP_DUE_CHECK_INTERVAL = env_int("BACKUP_DUE_CHECK_INTERVAL", 300)  # seconds between looks at the policies
BACKUP_VERIFY_MAX_AGE_DAYS = env_int("BACKUP_VERIFY_MAX_AGE_DAYS", 7)  # older verifications are flagged
CELERY_BEAT_SCHEDULE["backups-due"] = {
    "task": "apps.backups.tasks.backups_due",
    "schedule": float(BACKUP_DUE_CHECK_INTERVAL),
}
CELERY_BEAT_SCHEDULE["backups-verify-due"] = {  # restore the latest backup of each VM into scratch, compare
    "task": "apps.backups.tasks.backups_verify_due",
    "schedule": 3600.0,
}
# Monitoring (apps.monitoring): /metrics for Prometheus and the host security posture.
# /metrics answers a bearer token (METRICS_TOKEN, use METRICS_TOKEN_FILE) or, when
# METRICS_ALLOW_LOOPBACK is set, requests from loopback that no proxy forwarded; never anyone else.
METRICS_TOKEN = env("METRICS_TOKEN", "")
METRICS_ALLOW_LOOPBACK = env_bool("METRICS_ALLOW_LOOPBACK", False)
# libvirt's bulk statistics are read once per host per this many seconds (the scrape interval)
METRICS_LIBVIRT_CACHE_SECONDS = env_int("METRICS_LIBVIRT_CACHE_SECONDS", 15)
POSTURE_CHECK_INTERVAL = env_int("POSTURE_CHECK_INTERVAL", 3600)  # seconds between posture runs (beat)
POSTURE_COMMAND_TIMEOUT = env_int("POSTURE_COMMAND_TIMEOUT", 30)  # a check command past this is "unknown"
POSTURE_IP_FORWARD = env("POSTURE_IP_FORWARD", "0")  # "0", "1" or "any": the host's forwarding policy
POSTURE_SCRAPE_MAX_AGE = env_int("POSTURE_SCRAPE_MAX_AGE", 900)  # seconds: older means monitoring is off
_WATCHED = "/etc/libvirt,/var/lib/libvirt,/etc/hypervisor-portal"  # auditd should watch these
POSTURE_AUDIT_WATCH_PATHS = [p for p in (env("POSTURE_AUDIT_WATCH_PATHS", _WATCHED) or "").split(",") if p.strip()]
# the SSH check reads `sshd -T` of this config file (empty: sshd's own, /etc/ssh/sshd_config),
# with this host key (empty: the config's HostKey lines) when the worker cannot read the host's keys
POSTURE_SSHD_CONFIG = env("POSTURE_SSHD_CONFIG", "")
POSTURE_SSHD_HOST_KEY = env("POSTURE_SSHD_HOST_KEY", "")
HOST_CHECK_PATH = env("HOST_CHECK_PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
POSTURE_FIREWALL_REVIEW_DAYS = env_int("POSTURE_FIREWALL_REVIEW_DAYS", 90)  # a confirmed apply at least this often
POSTURE_PLAN_REVIEW_DAYS = env_int("POSTURE_PLAN_REVIEW_DAYS", 365)  # the incident plan is reviewed this often
AUDIT_RULES_FILE = env("AUDIT_RULES_FILE", "/etc/audit/rules.d/hypervisor-portal.rules")  # the portal installs it
LYNIS_TIMEOUT = env_int("LYNIS_TIMEOUT", 1200)  # seconds a lynis scan (a job) may take
# lynis test ids (e.g. "KRNL-6000,SSH-7408") to run instead of the whole audit; empty: every test
LYNIS_TESTS = [t.strip() for t in (env("LYNIS_TESTS", "") or "").split(",") if t.strip()]
# Audit chain (apps.audit.chain): its HMAC key lives outside the database, in the key store's
# directory (0400 file, 0700 directory; web and workers read the same file); anchors of the
# verified head are written outside the database too ("" turns anchoring off).
AUDIT_VERIFY_INTERVAL = env_int("AUDIT_VERIFY_INTERVAL", 300)  # seconds between incremental verifications
AUDIT_CHAIN_KEY_PATH = Path(env("AUDIT_CHAIN_KEY_PATH", str(ENCRYPTION_KEY_DIR / "audit" / "chain.key")))
AUDIT_ANCHOR_DIR = env("AUDIT_ANCHOR_DIR", str(VAR_DIR / "anchors"))
# SIEM forwarding (apps.audit.forwarding): every event as RFC 5424 syslog with a JSON payload,
# over TCP (octet counting, RFC 6587), optionally TLS. Off while AUDIT_SYSLOG_HOST is empty.
AUDIT_SYSLOG_HOST = env("AUDIT_SYSLOG_HOST", "")
AUDIT_SYSLOG_PORT = env_int("AUDIT_SYSLOG_PORT", 6514)
AUDIT_SYSLOG_TLS = env_bool("AUDIT_SYSLOG_TLS", False)
AUDIT_SYSLOG_CA_FILE = env("AUDIT_SYSLOG_CA_FILE", "")  # CA bundle for the collector's certificate; "" = system CAs
AUDIT_SYSLOG_TIMEOUT = env_int("AUDIT_SYSLOG_TIMEOUT", 10)  # seconds per connect / write
AUDIT_SYSLOG_BATCH = env_int("AUDIT_SYSLOG_BATCH", 500)  # events per write; the cursor moves after each
AUDIT_SYSLOG_INTERVAL = env_int("AUDIT_SYSLOG_INTERVAL", 10)  # seconds between sends of the backlog (beat)
AUDIT_SYSLOG_FACILITY = env_int("AUDIT_SYSLOG_FACILITY", 13)  # 13: log audit
AUDIT_SYSLOG_APP_NAME = env("AUDIT_SYSLOG_APP_NAME", "hypervisor-portal")
CELERY_BEAT_SCHEDULE["monitoring-posture-check"] = {
    "task": "apps.monitoring.tasks.posture_check",
    "schedule": float(POSTURE_CHECK_INTERVAL),
}
CELERY_BEAT_SCHEDULE["audit-chain-verify"] = {
    "task": "apps.audit.tasks.audit_chain_verify",
    "schedule": float(AUDIT_VERIFY_INTERVAL),
}
CELERY_BEAT_SCHEDULE["audit-forward"] = {
    "task": "apps.audit.tasks.audit_forward",
    "schedule": float(AUDIT_SYSLOG_INTERVAL),
}
CELERY_BEAT_SCHEDULE["monitoring-worker-heartbeat"] = {
    "task": "apps.monitoring.tasks.worker_heartbeat",
    "schedule": 60.0,
}
# Notifications (apps.monitoring.notifications): where alerts go, besides the pages.
NOTIFY_EMAIL_TO = [a.strip() for a in (env("NOTIFY_EMAIL_TO", "") or "").split(",") if a.strip()]
NOTIFY_WEBHOOK_URL = env("NOTIFY_WEBHOOK_URL", "")
NOTIFY_WEBHOOK_SECRET = env("NOTIFY_WEBHOOK_SECRET", "")  # use NOTIFY_WEBHOOK_SECRET_FILE
NOTIFY_ALERTMANAGER_URL = env("NOTIFY_ALERTMANAGER_URL", "")  # e.g. http://alertmanager:9093
NOTIFY_TIMEOUT = env_int("NOTIFY_TIMEOUT", 5)  # seconds per attempt
NOTIFY_ATTEMPTS = env_int("NOTIFY_ATTEMPTS", 3)
NOTIFY_RETRY_PAUSE = env_int("NOTIFY_RETRY_PAUSE", 5)  # seconds before the 2nd attempt, doubled after
# Network (apps.network): zones, the per-VM nftables firewall, quarantine
NETWORK_NFT_TABLE = env("NETWORK_NFT_TABLE", "portal_fw")  # our tables: bridge and inet families
FIREWALL_CONFIRM_SECONDS = env_int("FIREWALL_CONFIRM_SECONDS", 60)  # an unconfirmed apply rolls back after this
FIREWALL_CHECK_INTERVAL = env_int("FIREWALL_CHECK_INTERVAL", 60)  # seconds between drift/rollback checks
CELERY_BEAT_SCHEDULE["firewall-check"] = {
    "task": "apps.network.tasks.firewall_check",
    "schedule": float(FIREWALL_CHECK_INTERVAL),
}

# Access reviews (apps.reviews)
ACCESS_REVIEW_DORMANT_DAYS = env_int("ACCESS_REVIEW_DORMANT_DAYS", 90)  # no sign-in this long: flagged dormant
ACCESS_REVIEW_DENIAL_THRESHOLD = env_int("ACCESS_REVIEW_DENIAL_THRESHOLD", 5)  # denials before "many denials"
ACCESS_DISABLE_DORMANT_DAYS = env_int("ACCESS_DISABLE_DORMANT_DAYS", 0)  # >0: beat disables accounts dormant this long
CELERY_BEAT_SCHEDULE["reviews-disable-dormant"] = {
    "task": "apps.reviews.tasks.dormant_accounts_disable",
    "schedule": 3600.0,
}

# VM creation (apps/profiles): the domain type of secure-boot guests. Empty: kvm where
# /dev/kvm exists. A KVM without SMM (nested, as on CI machines) cannot run secure boot:
# set "qemu" (TCG) there.
VMS_SECURE_BOOT_DOMAIN_TYPE = env("VMS_SECURE_BOOT_DOMAIN_TYPE", "")
# A profile's own secure-boot keys (firmware.keys) are enrolled into a per-VM copy of OVMF's
# empty varstore (Debian's ovmf; it matches OVMF_CODE_4M.secboot.fd, which libvirt picks for
# secure boot without Microsoft's keys), written to libvirt's NVRAM directory.
VMS_OVMF_VARS_TEMPLATE = env("VMS_OVMF_VARS_TEMPLATE", "/usr/share/OVMF/OVMF_VARS_4M.fd")
VMS_NVRAM_DIR = env("VMS_NVRAM_DIR", "/var/lib/libvirt/qemu/nvram")
