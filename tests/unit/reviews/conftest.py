"""VM rows made directly in the database (no libvirt): who can act on them is a question of
role assignments only."""

import uuid

import pytest

from apps.core.models import Host
from apps.vms.models import VirtualMachine


@pytest.fixture
def hosts(db):
    return (
        Host.objects.create(name="rev-h1", uri="test:///default"),
        Host.objects.create(name="rev-h2", uri="test:///default"),
    )


@pytest.fixture
def make_vm(hosts):
    def make(name: str, host=None, zone: str = "default") -> VirtualMachine:
        return VirtualMachine.objects.create(host=host or hosts[0], uuid=uuid.uuid4(), name=name, zone=zone)

    return make
