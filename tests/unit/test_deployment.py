"""What can be checked of the deployment here: no Docker engine runs on these machines, so
the compose file is parsed and checked; production settings pass `check --deploy`."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_the_six_services_with_health_checks():
    services = compose()["services"]
    always = {name for name, s in services.items() if "profiles" not in s}
    assert always == {"web", "worker", "beat", "collector", "postgres", "redis"}
    optional = {name: s["profiles"] for name, s in services.items() if "profiles" in s}
    assert optional == {name: ["monitoring"] for name in ("prometheus", "alertmanager", "grafana")}
    for name, service in services.items():
        assert "healthcheck" in service and service["healthcheck"]["test"], f"{name} has no health check"


def test_portal_services_share_one_image_and_the_libvirt_socket():
    services = compose()["services"]
    for name in ("web", "worker", "beat", "collector"):
        s = services[name]
        assert s["image"] == "hypervisor-portal:latest"
        assert "/var/run/libvirt/libvirt-sock:/var/run/libvirt/libvirt-sock" in s["volumes"]
        env = s["environment"]
        assert env["DJANGO_SETTINGS_MODULE"] == "hypervisor_web.settings.prod"
        assert env["DATABASE_URL"].startswith("postgres://") and "@postgres:" in env["DATABASE_URL"]
        assert env["REDIS_URL"].startswith("redis://redis:")
        assert "SECRET_KEY" not in env and env["SECRET_KEY_FILE"].startswith("/run/secrets/")
        assert s["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "gunicorn" in services["web"]["command"]
    assert services["worker"]["command"].startswith("celery -A hypervisor_web worker")
    assert services["beat"]["command"].startswith("celery -A hypervisor_web beat")
    assert services["web"]["ports"] == ["127.0.0.1:8000:8000"]  # not on every interface by default


def test_dockerfile_builds_from_the_project_requirements():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11" in dockerfile
    assert "pip install --no-cache-dir -r requirements.txt" in dockerfile
    assert "USER portal" in dockerfile


def test_production_settings_pass_check_deploy():
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "hypervisor_web.settings.prod",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "portal.example.com",
    }
    env.pop("DATABASE_URL", None)
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)  # set by the Playwright tests for their own process only
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_settings_refuse_a_missing_secret_key():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "hypervisor_web.settings.prod"}
    env.pop("SECRET_KEY", None)
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr
