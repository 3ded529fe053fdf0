from .base import *  # noqa: F403
from .base import VAR_DIR, env, env_bool

DEBUG = True
SECRET_KEY = env("SECRET_KEY") or "dev-only-insecure-key-do-not-use-in-production-0123456789"
VAR_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)  # private: see apps/core/checks.py
# `make run` serves on 127.0.0.1 without a proxy: a local Prometheus may scrape /metrics
METRICS_ALLOW_LOOPBACK = env_bool("METRICS_ALLOW_LOOPBACK", True)
