"""SIEM forwarding to a real syslog collector on loopback (a socketserver thread): RFC 5424
with a JSON payload, octet-counted over TCP, in id order; the collector down -> the backlog
grows and nothing is lost; back -> everything delivered in order exactly once; TLS with a
certificate made in the test."""

import datetime
import ipaddress
import json
import re
import socketserver
import ssl
import threading
import time

import pytest
from django.urls import reverse

from apps.audit import forwarding
from apps.audit.models import AuditEvent, AuditForwardCursor
from apps.audit.services import record

pytestmark = pytest.mark.django_db

HEADER = re.compile(r"^<(\d+)>1 (\S+Z) (\S+) hypervisor-portal - audit - (\{.*\})$")


class Collector:
    """A syslog receiver on 127.0.0.1: parses RFC 6587 octet-counted frames."""

    def __init__(self, port=0, tls_context=None):
        received = self.messages = []

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                try:
                    sock = tls_context.wrap_socket(self.request, server_side=True) if tls_context else self.request
                except (ssl.SSLError, OSError):  # the client refused our certificate
                    return
                buf = b""
                while True:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buf += data
                    while b" " in buf:
                        length, _, rest = buf.partition(b" ")
                        if len(rest) < int(length):
                            break
                        received.append(rest[: int(length)].decode())
                        buf = rest[int(length) :]

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def ids(self, n, timeout=5.0):
        deadline = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return [json.loads(HEADER.match(m).group(4))["id"] for m in self.messages]


@pytest.fixture
def collector(settings):
    c = Collector()
    settings.AUDIT_SYSLOG_HOST, settings.AUDIT_SYSLOG_PORT = "127.0.0.1", c.port
    yield c
    c.stop()


def events(actor, n, **params):
    return [
        record(actor=actor, action="test.thing.do", target=("thing", i + 1, f"thing-{i + 1}"), outcome="success",
               params={"n": i, **params})
        for i in range(n)
    ]  # fmt: skip


def test_events_arrive_as_rfc5424_json_in_id_order(operator, collector, settings):
    settings.AUDIT_SYSLOG_BATCH = 2  # three writes, the cursor moving after each
    sent = events(operator, 5, passphrase="hunter2")
    assert forwarding.forward_pending() == {"sent": 5, "error": "", "enabled": True}
    assert collector.ids(5) == [e.pk for e in sent]
    pri, stamp, _host, body = HEADER.match(collector.messages[0]).groups()
    assert int(pri) == 13 * 8 + 5  # log audit, notice
    payload = json.loads(body)
    first = sent[0]
    assert payload["actor"] == {"id": operator.pk, "name": operator.username}
    assert payload["target"] == {"type": "thing", "id": "1", "name": "thing-1"}
    assert (payload["action"], payload["outcome"]) == ("test.thing.do", "success")
    assert payload["params"] == {"n": 0, "passphrase": "[redacted]"}
    assert payload["chain"] == {"prev_hash": first.prev_hash, "hash": first.hash}
    assert datetime.datetime.fromisoformat(stamp) == first.created_at
    assert "hunter2" not in "".join(collector.messages)
    assert AuditForwardCursor.objects.get(id=1).forwarded_id == sent[-1].pk
    assert forwarding.forward_pending()["sent"] == 0  # nothing twice


def test_a_collector_down_keeps_the_backlog_and_delivers_it_late_in_order_exactly_once(
    operator, collector, settings, client, auditor
):
    first = events(operator, 2)
    forwarding.forward_pending()
    assert collector.ids(2) == [e.pk for e in first]
    collector.stop()

    late = events(operator, 3)
    result = forwarding.forward_pending()
    assert result["sent"] == 0 and "cannot connect" in result["error"]
    assert forwarding.backlog()["pending"] == 3
    cursor = AuditForwardCursor.objects.get(id=1)
    assert cursor.forwarded_id == first[-1].pk and "cannot connect" in cursor.last_error
    client.force_login(auditor)
    page = client.get(reverse("audit:events")).content.decode()
    waiting = forwarding.backlog()["pending"]  # 3, and the sign-in just audited
    assert f"<strong>{waiting}</strong> events waiting" in page and "cannot connect" in page

    back = Collector(port=collector.port)
    try:
        late += events(operator, 1)
        queued = list(AuditEvent.objects.filter(id__gt=first[-1].pk).order_by("id").values_list("pk", flat=True))
        assert {e.pk for e in late} < set(queued)  # with the sign-in of the page visit
        assert forwarding.forward_pending()["sent"] == len(queued)
        assert back.ids(len(queued)) == queued
        time.sleep(0.1)  # nothing more arrives
        assert len(back.messages) == len(queued)
        assert collector.ids(2) == [e.pk for e in first]  # and nothing was sent to the old one twice
    finally:
        back.stop()
    assert forwarding.backlog()["pending"] == 0
    assert AuditForwardCursor.objects.get(id=1).last_error == ""
    every_event = list(AuditEvent.objects.order_by("id").values_list("pk", flat=True))
    assert collector.ids(2) + back.ids(0) == every_event  # each one once, in order, across both collectors


def self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test syslog collector")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = tmp_path / "collector.pem", tmp_path / "collector.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_tls_to_a_collector_whose_certificate_the_ca_file_names(operator, settings, tmp_path):
    cert_path, key_path = self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    tls = Collector(tls_context=context)
    try:
        settings.AUDIT_SYSLOG_HOST, settings.AUDIT_SYSLOG_PORT, settings.AUDIT_SYSLOG_TLS = "127.0.0.1", tls.port, True
        sent = events(operator, 2)
        refused = forwarding.forward_pending()  # the system CAs do not know this certificate
        assert refused["sent"] == 0 and "TLS" in refused["error"] and "CERTIFICATE_VERIFY_FAILED" in refused["error"]
        settings.AUDIT_SYSLOG_CA_FILE = str(cert_path)
        assert forwarding.forward_pending()["sent"] == 2
        assert tls.ids(2) == [e.pk for e in sent]
    finally:
        tls.stop()


def test_forwarding_is_off_without_a_host(operator, settings):
    settings.AUDIT_SYSLOG_HOST = ""
    events(operator, 1)
    assert forwarding.forward_pending() == {"sent": 0, "error": "", "enabled": False}
    assert not forwarding.backlog()["enabled"]
