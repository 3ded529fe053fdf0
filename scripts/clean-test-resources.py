"""Remove libvirt objects left behind by test runs that were cut short (tvm-*, tpool-*,
tnet-*). Never run while a test run is going on. Usage: make clean-test-resources"""

import os
import shutil
import sys

import django

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hypervisor_web.settings.dev")
django.setup()

from django.conf import settings  # noqa: E402

from apps.core.gateways import libvirt as gw  # noqa: E402
from apps.core.gateways.libvirt import network_remove  # noqa: E402

PREFIXES = ("tvm-", "tpool-", "tnet-", "bench-")
uri = settings.LIBVIRT_URI
for d in gw.domain_list(uri):
    if d.name.startswith(PREFIXES):
        gw.domain_undefine(uri, d.name)
        print("removed VM", d.name)
for p in gw.pool_list(uri):
    if p.name.startswith(PREFIXES):
        gw.pool_remove(uri, p.name)
        print("removed pool", p.name)
for n in gw.network_list(uri):
    if n.name.startswith(PREFIXES):
        network_remove(uri, n.name)
        print("removed network", n.name)
for run_dir in sorted(settings.IMAGE_DIR.glob("test-*")):  # images of cut-short runs
    shutil.rmtree(run_dir, ignore_errors=True)
    print("removed", run_dir)
