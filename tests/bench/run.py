"""`make bench`: run every benchmark (tests/bench/bench_*.py) and print their ratios.

Benchmarks are not tests: pytest does not collect them and nothing here asserts a time.
Each module offers `run(args) -> dict` with at least "name", "ratio" and "target".
Django is set up on a throwaway database that is removed at the end, whatever happens: an
SQLite file under a temporary directory, or, with `--postgres URL`, a database created for
this run on that server and dropped after it. A DATABASE_URL in the environment is ignored,
so a benchmark never writes into a database that outlives it."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import shutil
import sys
import tempfile
from pathlib import Path


def _postgres_scratch(server_url: str) -> tuple[str, callable]:
    """Create a database of this run's own on the server; return its URL and its dropper."""
    import uuid

    import psycopg

    name = f"portal_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        from django.db import connections

        connections.close_all()
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    base, _, _ = server_url.rpartition("/")
    return f"{base}/{name}", drop


def _setup_django(workdir: Path, postgres: str | None):
    os.environ["DJANGO_SETTINGS_MODULE"] = "hypervisor_web.settings.test"
    os.environ["PORTAL_USE_TEST_DB"] = "0"
    drop = None
    if postgres:
        url, drop = _postgres_scratch(postgres)
    else:
        url = f"sqlite:///{workdir / 'bench.sqlite3'}"
    os.environ["DATABASE_URL"] = url
    os.environ["PORTAL_VAR_DIR"] = str(workdir)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)
    return drop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", help="run only benchmarks whose name contains this")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the sizes (e.g. 0.1 for a quick run)")
    parser.add_argument("--postgres", metavar="URL", help="run on a scratch database created on this server")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))
    with tempfile.TemporaryDirectory(prefix="portal-bench-") as tmp:
        drop = _setup_django(Path(tmp), args.postgres)
        results = []
        try:
            here = Path(__file__).resolve().parent
            for info in sorted(pkgutil.iter_modules([str(here)]), key=lambda i: i.name):
                if not info.name.startswith("bench_") or (args.only and args.only not in info.name):
                    continue
                module = importlib.import_module(f"tests.bench.{info.name}")
                print(f"== {info.name}", flush=True)
                results.append(module.run(args))
        finally:
            if drop is not None:
                drop()
            from django.conf import settings

            if settings.IMAGE_DIR.name.startswith("test-"):  # this run's own image directory
                shutil.rmtree(settings.IMAGE_DIR, ignore_errors=True)
    print()
    print(f"{'benchmark':40} {'ratio':>8} {'target':>8}")
    for r in results:
        print(f"{r['name']:40} {r['ratio']:>8.2f} {r['target']:>8}")
        for key, value in r.items():
            if key not in ("name", "ratio", "target"):
                print(f"    {key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
