"""One page of a list as plain values.

Like Paginator.get_page (a page number past the end gives the last page, a bad one the
first), but the rows come as dicts (`.values()`: no model objects), which templates read
like objects, and the count is taken once, from the filtered queryset without its joins
and ordering."""

from __future__ import annotations

from django.core.paginator import Page, Paginator
from django.db.models import QuerySet


def _number(page_number) -> int:
    try:
        return max(1, int(page_number))
    except (TypeError, ValueError):
        return 1


def page_to_show(page_number, total: int, per_page: int) -> int:
    """The page to show: a number past the end gives the last page, a bad one the first."""
    return min(_number(page_number), max(1, -(-total // per_page)))


def page_of(rows: list, number: int, per_page: int, total: int) -> Page:
    """A Page of rows already read (page `number` of `total`)."""
    paginator = Paginator((), per_page)
    paginator.__dict__["count"] = total  # a cached_property, answered here
    return Page(rows, number, paginator)


def values_page(queryset: QuerySet, page_number, per_page: int, *fields, total: int | None = None,
                **expressions) -> Page:  # fmt: skip
    """Page `page_number` of `queryset` (already ordered): dicts of `fields` and `expressions`.
    `total`: the queryset's count when the caller has it already."""
    if total is None:
        total = queryset.order_by().count()
    number = page_to_show(page_number, total, per_page)
    start = (number - 1) * per_page
    rows = list(queryset.values(*fields, **expressions)[start : start + per_page]) if total else []
    return page_of(rows, number, per_page, total)
