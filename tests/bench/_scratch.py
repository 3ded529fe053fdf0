"""What the benchmarks share: a uniquely named scratch dir pool in the image directory
(settings.IMAGE_DIR/bench-pools/, where QEMU can reach it whatever the clone's path)."""

import uuid
from pathlib import Path

from django.conf import settings

from apps.core.gateways.host_paths import make_traversable_dir


def scratch_pool() -> tuple[str, str, Path]:
    """(tag, pool name, pool directory) for one benchmark run; the caller removes them."""
    tag = uuid.uuid4().hex[:6]
    pool_name = f"bench-{tag}"
    pool_dir = make_traversable_dir(Path(settings.IMAGE_DIR) / "bench-pools" / pool_name)
    return tag, pool_name, pool_dir


def remove_scratch(conn, pool_name: str, pool_dir: Path, domains=()) -> None:
    """Stop and undefine the benchmark's domains, remove its pool and directory, close `conn`
    (a benchmark leaves nothing behind, whatever happened)."""
    import shutil

    import libvirt

    from apps.core.gateways import libvirt as gw

    for name in domains:
        try:
            dom = conn.lookupByName(name)
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        except libvirt.libvirtError:  # never defined, or already gone
            pass
    try:
        gw.pool_remove(settings.LIBVIRT_URI, pool_name, delete_volumes=False)
    except Exception:  # noqa: BLE001  (already gone)
        pass
    conn.close()
    shutil.rmtree(pool_dir, ignore_errors=True)
