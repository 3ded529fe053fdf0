"""What the benchmarks share: a uniquely named scratch dir pool under var/bench-pools/."""

import uuid
from pathlib import Path

from django.conf import settings


def scratch_pool() -> tuple[str, str, Path]:
    """(tag, pool name, pool directory) for one benchmark run; the caller removes them."""
    tag = uuid.uuid4().hex[:6]
    pool_name = f"bench-{tag}"
    pool_dir = Path(settings.BASE_DIR) / "var" / "bench-pools" / pool_name
    pool_dir.mkdir(parents=True, exist_ok=True)
    return tag, pool_name, pool_dir
