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
