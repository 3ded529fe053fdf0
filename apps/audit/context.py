"""Who is acting from where, for the audit log: set by the request middleware and by
the job runner, read by audit.record."""

import contextvars
from contextlib import contextmanager

source_ip: contextvars.ContextVar[str | None] = contextvars.ContextVar("source_ip", default=None)
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


@contextmanager
def bound(ip: str | None, rid: str):
    t1, t2 = source_ip.set(ip), request_id.set(rid)
    try:
        yield
    finally:
        source_ip.reset(t1)
        request_id.reset(t2)
