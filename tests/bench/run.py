"""`make bench`: run every benchmark (tests/bench/bench_*.py) and print their ratios.

Benchmarks are not tests: pytest does not collect them and nothing here asserts a time.
Each module offers `run(args) -> dict` with at least "name", "ratio" and "target".
Each module runs on a throwaway database of its own, made and migrated before it and
removed after it, whatever happens: an SQLite file under a temporary directory, or, with
`--postgres URL`, a database created on that server and dropped after. So no benchmark sees
another's rows (the access review's million unchained audit events are not in the audit
chain's walk), and a DATABASE_URL in the environment is ignored: a benchmark never writes
into a database that outlives it. A module that fails is reported as failed (ratio inf,
with its error) and the others still run; the exit status is then 1."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import shutil
import sys
import tempfile
import traceback
import uuid
from pathlib import Path


def _postgres_scratch(server_url: str) -> tuple[str, callable]:
    """Create a database of its own on the server; return its name and its dropper."""
    import psycopg

    name = f"portal_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return name, drop


def _setup_django(workdir: Path, postgres: str | None):
    """Django set up on a first scratch database (migrated); returns its dropper."""
    os.environ["DJANGO_SETTINGS_MODULE"] = "hypervisor_web.settings.test"
    os.environ["PORTAL_USE_TEST_DB"] = "0"
    if postgres:
        name, drop = _postgres_scratch(postgres)
        os.environ["DATABASE_URL"] = f"{postgres.rpartition('/')[0]}/{name}"
    else:
        path = workdir / f"bench-{uuid.uuid4().hex[:8]}.sqlite3"
        os.environ["DATABASE_URL"] = f"sqlite:///{path}"
        drop = path.unlink
    os.environ["PORTAL_VAR_DIR"] = str(workdir)
    import django

    django.setup()
    return _migrated(_closing(drop))


def _fresh_database(workdir: Path, postgres: str | None):
    """Point Django at a new scratch database, migrated; returns its dropper."""
    from django.db import connections

    connections.close_all()
    if postgres:
        name, drop = _postgres_scratch(postgres)
        os.environ["DATABASE_URL"] = f"{postgres.rpartition('/')[0]}/{name}"
    else:
        path = workdir / f"bench-{uuid.uuid4().hex[:8]}.sqlite3"
        name, drop = str(path), path.unlink
        os.environ["DATABASE_URL"] = f"sqlite:///{path}"
    # this process, as Django's test runner switches databases; the processes a benchmark
    # starts (the collector, gunicorn) by DATABASE_URL
    connections["default"].settings_dict["NAME"] = name
    return _migrated(_closing(drop))


def _migrated(drop):
    """Migrate the new database; a failed migration drops it before the error goes on."""
    from django.core.management import call_command

    try:
        call_command("migrate", verbosity=0, interactive=False)
    except BaseException:
        drop()
        raise
    return drop


def _closing(drop):
    def closed_then_dropped() -> None:
        from django.db import connections

        connections.close_all()
        drop()

    return closed_then_dropped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", help="run only benchmarks whose name contains this")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the sizes (e.g. 0.1 for a quick run)")
    parser.add_argument("--postgres", metavar="URL", help="run on scratch databases created on this server")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))
    here = Path(__file__).resolve().parent
    names = [i.name for i in sorted(pkgutil.iter_modules([str(here)]), key=lambda i: i.name)
             if i.name.startswith("bench_") and (not args.only or args.only in i.name)]  # fmt: skip
    results = []
    with tempfile.TemporaryDirectory(prefix="portal-bench-") as tmp:
        drop = None
        try:
            for n, name in enumerate(names):
                drop = _setup_django(Path(tmp), args.postgres) if n == 0 else _fresh_database(Path(tmp), args.postgres)
                print(f"== {name}", flush=True)
                try:
                    results.append(importlib.import_module(f"tests.bench.{name}").run(args))
                except Exception as exc:  # reported, and the other benchmarks still run
                    traceback.print_exc()
                    results.append({"name": f"{name} FAILED", "ratio": float("inf"), "target": "-",
                                    "error": f"{type(exc).__name__}: {exc}"[:500]})  # fmt: skip
                finally:
                    drop()
                    drop = None
        finally:
            if drop is not None:
                drop()
            if names:
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
    return 1 if any(r["name"].endswith(" FAILED") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
