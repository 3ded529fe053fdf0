"""Moved to apps/storage/disks.py (a read, not a service); kept for the encryption app's
import until its owner switches to the new path."""

from ..disks import host_snapshot, vm_disks

__all__ = ["host_snapshot", "vm_disks"]
