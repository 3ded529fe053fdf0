"""What the project ships for Prometheus, Alertmanager and Grafana (deploy/): the rules pass
`promtool check rules` and their unit tests (`promtool test rules`), the Prometheus config
passes `promtool check config`, every metric they and the dashboard use is one the portal
exports (or one named below as coming later), and compose wires them together."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
# metrics the rules already use, exported once their feature exists
LATER: set[str] = set()  # metrics the rules use before the portal exports them (none now)


def promtool():
    path = shutil.which("promtool")
    assert path is not None, "promtool is missing: `make setup` installs it (Debian prometheus)"
    return path


def run(*argv, cwd=DEPLOY / "prometheus"):
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_alert_rules_are_valid():
    out = run(promtool(), "check", "rules", "alerts.yml")
    assert "SUCCESS: 15 rules found" in out


def test_the_alert_rules_pass_their_unit_tests():
    assert "SUCCESS" in run(promtool(), "test", "rules", "alerts_test.yml")


def test_every_alert_rule_has_a_unit_test_that_makes_it_fire():
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alerts = {r["alert"] for group in rules["groups"] for r in group["rules"] if "alert" in r}
    cases = yaml.safe_load((DEPLOY / "prometheus" / "alerts_test.yml").read_text())["tests"]
    firing = {t["alertname"] for case in cases for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    assert alerts - firing == set(), "alert rules no promtool test makes fire"


def test_the_prometheus_config_is_valid_and_scrapes_with_the_token(tmp_path):
    config = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    parsed = yaml.safe_load(config)
    job = next(j for j in parsed["scrape_configs"] if j["job_name"] == "hypervisor-portal")
    assert job["authorization"] == {"type": "Bearer", "credentials_file": "/run/secrets/metrics_token"}
    assert job["metrics_path"] == "/metrics" and job["static_configs"] == [{"targets": ["web:8000"]}]
    # the token file only exists inside the container: point at a stand-in to check the rest
    token = tmp_path / "token"
    token.write_text("x")
    (tmp_path / "prometheus.yml").write_text(config.replace("/run/secrets/metrics_token", str(token)))
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    run(promtool(), "check", "config", "prometheus.yml", cwd=tmp_path)


def _metric_names(text: str) -> set[str]:
    return set(re.findall(r"\bportal_[a-z_]+\b", text))


@pytest.fixture
def exported(db):
    """Every metric family name one scrape declares (HELP lines are written even for
    families without samples)."""
    from prometheus_client import generate_latest

    from apps.monitoring.metrics import _registry

    body = generate_latest(_registry).decode()
    names = set(re.findall(r"^# HELP (\S+)", body, re.M))
    for kind_suffix in ("_total", "_sum", "_count"):
        names |= {n + kind_suffix for n in list(names)}
    return names


def test_rules_and_dashboard_use_only_exported_metrics(exported):
    rules = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "hypervisor-portal.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    unknown = (_metric_names(rules) | _metric_names(exprs)) - exported - LATER
    assert not unknown, f"not exported by apps/monitoring/metrics.py: {sorted(unknown)}"
    assert LATER.isdisjoint(exported), "a LATER metric is exported now: take it off the list"


def test_the_dashboard_reads_the_provisioned_datasource():
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "hypervisor-portal.json").read_text())
    source = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = source["datasources"][0]["uid"]
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    targets = [t for p in dashboard["panels"] for t in p.get("targets", [])]
    assert targets and all(t["datasource"]["uid"] == uid for t in targets)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_compose_wires_the_monitoring_profile():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    web, prom, am, grafana = (services[n] for n in ("web", "prometheus", "alertmanager", "grafana"))
    assert web["environment"]["METRICS_TOKEN_FILE"] == "/run/secrets/metrics_token"
    assert "metrics_token" in web["secrets"] and "metrics_token" in prom["secrets"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prom["volumes"]
    assert "./deploy/alertmanager:/etc/alertmanager:ro" in am["volumes"]
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana["volumes"]
    assert "web" in web["environment"]["ALLOWED_HOSTS"].split(",")
    prometheus_cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    am_targets = prometheus_cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert am_targets == ["alertmanager:9093"]
    for s in (prom, am, grafana):  # published on loopback only
        assert all(p.startswith("127.0.0.1:") for p in s["ports"])
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    alertmanager = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    names = {r["name"] for r in alertmanager["receivers"]}
    assert alertmanager["route"]["receiver"] in names
