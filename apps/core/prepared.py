"""Reads whose SQL the ORM writes once per shape, then runs with new values.

Building and compiling a queryset costs the ORM more than running the query: on the list
pages most of a read's time went there, not to the database. A `Prepared` read keeps the
ORM as the one author of its SQL but asks it once per process and per *shape*:

    def _build(shape, p):        # module level: no closure, no defaults
        kinds, by_state = shape
        qs = VirtualMachine.objects.filter(scope_q(kinds, p))
        return (qs.filter(last_state=p["state"]) if by_state else qs).values("name")
    _read = Prepared(VirtualMachine, _build)
    rows = _read.rows((kinds, True), {"state": "running", "scope0": 3}, limit=50, offset=0)

`shape` (hashable) is everything that changes the SQL text: which filters are set, the
sort, the kinds of the user's scope. The values (ints, strings, datetimes, UUIDs) go in
the mapping `p` and only reach the SQL as parameters. The first read of a shape builds the
queryset with placeholder values, once per value and once more, and checks that the SQL
text stays the same and that each value lands in parameters of its own, unchanged (or
adapted as a datetime): then later reads bind the real values. A value the SQL would
transform other than by a LIKE's escape and wildcards, bake into the text, or not use, a
field that refuses a stand-in, and a shape the ORM finds empty (an `__in` of nothing), make
that shape an ordinary ORM read every time: the result is the same, only slower.

Results are dicts of a `.values()` queryset, with the ORM's converters applied."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from django.core.exceptions import EmptyResultSet, ValidationError
from django.db import connections, router
from django.db.models.query import ValuesIterable

_ORM = object()  # the shape is read through the ORM each time
_INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class _Compiled:
    sql: str
    slots: tuple  # per parameter: (name, adapt) of a value, or (None, constant)
    names: tuple[str, ...]
    converters: tuple  # (position, (converter functions, expression)) as the ORM gives them


def _placeholder(value, k: int, variant: int):
    """A stand-in for `value` that no other parameter of the query can equal."""
    if isinstance(value, bool) or value is None:
        raise TypeError("booleans and None change the SQL: put them in the shape")
    if isinstance(value, int):
        return 1_900_000_000 + k * 10 + variant  # within any integer column's range
    if isinstance(value, str):  # with what a LIKE escape would change: such a lookup is seen
        return f"\x1fprepared_{k}%{variant}\\\x1f"
    if isinstance(value, dt.datetime):
        return dt.datetime(1901, 1, 1, tzinfo=value.tzinfo) + dt.timedelta(seconds=k, microseconds=variant + 1)
    if isinstance(value, uuid.UUID):
        return uuid.UUID(int=(0xF00D << 112) + k * 10 + variant)
    raise TypeError(f"a prepared value must be an int, str, datetime or UUID, not {type(value).__name__}")


class Prepared:
    def __init__(self, model, build: Callable):
        if build.__closure__ or build.__defaults__ or build.__kwdefaults__:
            raise TypeError("a prepared read's build takes everything it varies by as its shape and values")
        self.model, self.build = model, build
        self._compiled: dict = {}

    def rows(self, shape, values: Mapping, *, limit: int | None = None, offset: int = 0) -> list[dict]:
        """The rows of the read for these values (a slice of them with limit and offset)."""
        alias = router.db_for_read(self.model)
        key = (alias, shape, tuple((name, type(value)) for name, value in values.items()))
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compiled[key] = self._compile(alias, shape, values)
        if compiled is _ORM or any(type(v) is int and not _INT64[0] <= v <= _INT64[1] for v in values.values()):
            # (an integer no column holds, from a URL: the ORM knows nothing matches)
            qs = self.build(shape, values)
            return list(qs if limit is None else qs[offset : offset + limit])
        params = [adapt(values[name]) if name is not None else adapt for name, adapt in compiled.slots]
        sql = compiled.sql
        if limit is not None:  # (no OFFSET 0: a keyset read shows it has none)
            sql, params = (f"{sql} LIMIT %s OFFSET %s", [*params, limit, offset]) if offset else (
                f"{sql} LIMIT %s", [*params, limit])
        with connections[alias].cursor() as cursor:
            cursor.execute(sql, params)
            found = cursor.fetchall()
        if compiled.converters:
            found = _converted(found, compiled.converters, connections[alias])
        names = compiled.names
        return [dict(zip(names, row, strict=True)) for row in found]

    def objects(self, shape, values: Mapping, *, limit: int | None = None, offset: int = 0) -> list:
        """The rows as model objects of the fields read (the others deferred, as `.only()`
        gives them); the read's `.values()` names fields by their attname (host_id, not host)."""
        alias = router.db_for_read(self.model)
        rows = self.rows(shape, values, limit=limit, offset=offset)
        return as_objects(self.model, rows, alias)

    def first(self, shape, values: Mapping):
        """The first row's object, or None."""
        found = self.objects(shape, values, limit=1)
        return found[0] if found else None

    def one(self, shape, values: Mapping) -> dict:
        """The single row of an aggregate read."""
        (row,) = self.rows(shape, values)
        return row

    def _compile(self, alias: str, shape, values: Mapping):
        try:
            return self._compiled_for(alias, shape, values)
        except (EmptyResultSet, ValueError, ValidationError):
            # nothing matches (an __in of nothing, a value out of a column's range), or a
            # field refuses a stand-in (an IP address field): the ORM decides each time
            return _ORM

    def _compiled_for(self, alias: str, shape, values: Mapping):
        names = list(values)
        base = {n: _placeholder(values[n], k, 0) for k, n in enumerate(names)}
        qs = self.build(shape, base)
        if qs._iterable_class is not ValuesIterable or qs.query.is_sliced:
            raise TypeError("a prepared read is an unsliced .values() queryset")
        compiler = qs.query.get_compiler(using=alias)
        sql, params = compiler.as_sql()
        # per parameter: (name, adapter) where a value goes, (None, the constant) elsewhere
        owner: list = [None] * len(params)
        for k, name in enumerate(names):
            other = self.build(shape, {**base, name: _placeholder(values[name], k, 1)})
            other_sql, other_params = other.query.get_compiler(using=alias).as_sql()
            if other_sql != sql or len(other_params) != len(params):
                return _ORM  # the value reached the SQL text, not a parameter
            moved = [i for i, (a, b) in enumerate(zip(params, other_params, strict=True)) if a != b]
            if not moved or any(owner[i] is not None for i in moved):
                return _ORM  # unused, or sharing a parameter with another value
            adapt = _adapter(connections[alias], base[name], {params[i] for i in moved})
            if adapt is None:
                return _ORM  # transformed on its way in (a LIKE pattern, a cast)
            for i in moved:
                owner[i] = (name, adapt)
        slots = tuple(owner[i] or (None, params[i]) for i in range(len(params)))
        query = qs.query
        names_out = tuple(query.selected or (*query.extra_select, *query.values_select, *query.annotation_select))
        fields = [s[0] for s in compiler.select[: compiler.col_count]]
        return _Compiled(sql, slots, names_out, tuple(compiler.get_converters(fields).items()))


def as_objects(model, rows: list[dict], alias: str = "default") -> list:
    """Model objects from dicts of some of its fields by attname, the others deferred. The
    values go in the model's field order, whatever the order of the dict (Model.from_db
    takes them so)."""
    if not rows:
        return []
    names = [f.attname for f in model._meta.concrete_fields if f.attname in rows[0]]
    if len(names) != len(rows[0]):
        unknown = sorted(set(rows[0]) - set(names))
        raise TypeError(f"{model.__name__} has no fields {unknown} (a read names fields by attname)")
    return [model.from_db(alias, names, [row[n] for n in names]) for row in rows]


def _adapter(connection, placeholder, seen: set):
    """How a value becomes its parameter, if the placeholder came through as one of those:
    as it is, adapted as a datetime or UUID, or escaped for a LIKE (a startswith, endswith,
    contains or iexact lookup; the stand-in carries the characters each escape changes, so
    only the transform the ORM applied gives it back)."""
    for adapt in _adapters(connection, placeholder):
        if seen == {adapt(placeholder)}:
            return adapt
    return None


def _adapters(connection, placeholder):
    yield _same
    if isinstance(placeholder, dt.datetime):
        yield connection.ops.adapt_datetimefield_value
    elif isinstance(placeholder, uuid.UUID):
        yield _hex
    elif isinstance(placeholder, str):
        like = connection.ops.prep_for_like_query
        yield connection.ops.prep_for_iexact_query
        yield lambda value: f"{like(value)}%"
        yield lambda value: f"%{like(value)}"
        yield lambda value: f"%{like(value)}%"


def _converted(rows, converters, connection):
    """Rows with the ORM's converters applied (as its compiler does: a datetime from SQLite's text)."""
    for row in rows:
        row = list(row)
        for position, (functions, expression) in converters:
            value = row[position]
            for function in functions:
                value = function(value, expression, connection)
            row[position] = value
        yield row


def _same(value):
    return value


def _hex(value):
    return value.hex


def totals(queryset, **aggregates):
    """The aggregates over the whole queryset as a one-row `.values()` read (what
    `.aggregate()` returns, as a queryset a `Prepared` read can compile)."""
    from django.db.models import Value

    whole = queryset.order_by().annotate(whole=Value(1)).values("whole")
    return whole.annotate(**aggregates).values(*aggregates)
