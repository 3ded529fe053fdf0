"""The README's configuration table names every variable the settings read."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_read_from_the_environment_is_documented():
    readme = (ROOT / "README.md").read_text()
    names = set()
    for path in (ROOT / "hypervisor_web" / "settings").glob("*.py"):
        names |= set(re.findall(r'env(?:_int|_bool)?\("([A-Z0-9_]+)"', path.read_text()))
    internal = {"PORTAL_USE_TEST_DB"}  # set by the test suite for its own worker
    missing = sorted(n for n in names - internal if f"`{n}`" not in readme)
    assert not missing, f"settings not in the README's table: {missing}"


def test_ci_runs_exactly_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()
    assert ci.strip().splitlines()[-1] == "make test"
