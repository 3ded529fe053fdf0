"""The list pages' two helpers: a row link equal to reverse()'s, and a page of plain values
that pages like Paginator.get_page."""

from __future__ import annotations

import uuid

import pytest
from django.db.models import F
from django.urls import reverse
from django.utils import timezone

from apps.core.models import Host
from apps.core.paging import values_page
from apps.core.urlmaker import url_maker
from apps.vms.models import VirtualMachine


@pytest.mark.parametrize("host, name", [("lab", "vm-1"), ("h.1_x~y", "v"), ("sp ace", "ü%20"), ("a:b@c", "x+y")])
def test_a_row_link_is_what_reverse_gives(host, name):
    assert url_maker("vms:detail", 2)(host, name) == reverse("vms:detail", args=[host, name])


def test_a_row_link_refuses_a_slash_as_reverse_does():
    with pytest.raises(ValueError):
        url_maker("vms:detail", 2)("lab", "a/b")


@pytest.mark.django_db
def test_a_values_page_pages_like_get_page():
    host = Host.objects.create(name="lab", uri="test:///default", collected_at=timezone.now())
    VirtualMachine.objects.bulk_create(VirtualMachine(host=host, uuid=uuid.uuid4(), name=f"vm-{i:02d}")
                                       for i in range(23))  # fmt: skip
    qs = VirtualMachine.objects.order_by("name")
    second = values_page(qs, "2", 10, "name", host_name=F("host__name"))
    assert [(r["name"], r["host_name"]) for r in second] == [(f"vm-{i:02d}", "lab") for i in range(10, 20)]
    assert (second.number, second.paginator.count, second.paginator.num_pages, second.has_next()) == (2, 23, 3, True)
    last = values_page(qs, "99", 10, "name")  # past the end: the last page
    assert last.number == 3 and [r["name"] for r in last] == ["vm-20", "vm-21", "vm-22"]
    assert values_page(qs, "x", 10, "name").number == 1  # not a number: the first
    empty = values_page(qs.none(), "5", 10, "name")
    assert empty.number == 1 and list(empty) == [] and empty.paginator.count == 0
