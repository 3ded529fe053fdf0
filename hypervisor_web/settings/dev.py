from .base import *  # noqa: F403
from .base import VAR_DIR, env

DEBUG = True
SECRET_KEY = env("SECRET_KEY") or "dev-only-insecure-key-do-not-use-in-production-0123456789"
VAR_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)  # private: see apps/core/checks.py
