"""The VM console through the portal's proxy, and the security facts the collector reads, on
the real libvirtd: one 64 MiB guest with VNC on a unix socket (SeaBIOS draws its frame, no
OS needed) boots once for the module; the proxy runs in a thread of this process on an
ephemeral loopback port, its database work on connections of its own (transactional tests)."""

import os
import shutil
import struct
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.core import signing
from django.core.management import CommandError, call_command
from django.urls import reverse
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from apps.accounts.models import Role
from apps.audit.models import AuditEvent
from apps.core.gateways import libvirt as gw
from apps.core.gateways.libvirt.xml import domain_xml
from apps.vms import console
from apps.vms.collector import domain_refresh, host_security_store
from apps.vms.models import ConsoleSession, VirtualMachine
from tests.conftest import unique

pytestmark = pytest.mark.libvirt
# the proxy thread reads the database on connections of its own: the tests that use it commit
proxied = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def console_domain(libvirt_uri, test_pool):
    """One running guest for the module, VNC on a unix socket (the minimal builder's graphics)."""
    name = unique("tcon")
    vol = gw.volume_create(libvirt_uri, test_pool, f"{name}.qcow2", 1 << 30)
    uuid = gw.domain_define(libvirt_uri, domain_xml(name=name, memory_mib=64, vcpus=1, disk_paths=[vol.path],
                                                     networks=[]))  # fmt: skip
    gw.domain_start(libvirt_uri, name)
    yield name, uuid
    gw.domain_undefine(libvirt_uri, name)
    gw.volume_delete_if_exists(libvirt_uri, test_pool, f"{name}.qcow2")


@pytest.fixture(scope="module")
def proxy_url(console_proxy_url):
    return console_proxy_url


@pytest.fixture
def con_vm(host, console_domain):
    name, uuid = console_domain
    host_security_store(host)
    domain_refresh(host, name, uuid, "started")
    return VirtualMachine.objects.get(host=host, uuid=uuid)


def _token(client, vm) -> str:
    response = client.post(reverse("vms:console_token", args=[vm.host.name, vm.name]))
    assert response.status_code == 200, response.content
    url = urlsplit(response.json()["url"])
    assert url.scheme == "ws" and url.path == "/console"
    return url.query.removeprefix("token=")


class _Rfb:
    """Just enough of an RFB 3.8 client over the websocket to read one frame."""

    def __init__(self, ws):
        self.ws, self.buf = ws, b""

    def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.buf += self.ws.recv(timeout=20)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def handshake(self) -> tuple[int, int, int]:
        assert self.read(12) == b"RFB 003.008\n"
        self.ws.send(b"RFB 003.008\n")
        (count,) = self.read(1)
        types = self.read(count)
        assert 1 in types, f"the VNC socket should need no password (the proxy authenticated): {types!r}"
        self.ws.send(b"\x01")  # security type None
        assert self.read(4) == b"\x00\x00\x00\x00"  # SecurityResult OK
        self.ws.send(b"\x01")  # ClientInit: shared
        width, height = struct.unpack(">HH", self.read(4))
        bpp = self.read(16)[0]
        (name_len,) = struct.unpack(">I", self.read(4))
        self.read(name_len)
        return width, height, bpp

    def frame(self, width: int, height: int, bpp: int) -> bytes:
        self.ws.send(struct.pack(">BxHi", 2, 1, 0))  # SetEncodings: Raw only
        self.ws.send(struct.pack(">BBHHHH", 3, 0, 0, 0, width, height))  # full FramebufferUpdateRequest
        while True:
            msg_type = self.read(1)[0]
            if msg_type == 0:
                break
            assert msg_type == 2, f"unexpected server message {msg_type}"  # Bell: ignore
        self.read(1)
        (rects,) = struct.unpack(">H", self.read(2))
        pixels = b""
        for _ in range(rects):
            _x, _y, w, h, enc = struct.unpack(">HHHHi", self.read(12))
            if enc == 0:
                pixels += self.read(w * h * bpp // 8)
        return pixels


def test_the_collector_reads_the_vms_security_facts_and_the_hosts_drivers(con_vm, host):
    host.refresh_from_db()
    assert "dac" in host.security_models
    facts = con_vm.security
    assert facts["running"] is True and facts["firmware"]["type"] == "bios"
    (g,) = facts["graphics"]
    assert g["type"] == "vnc" and g["listen"] == "socket" and Path(g["socket"]).is_socket()
    assert g["port"] == 0  # no network port at all
    assert any(label["model"] == "dac" for label in facts["seclabels"])


def test_the_vm_page_shows_the_security_summary_and_the_console_only_to_operators(client, operator, viewer, con_vm):
    url = reverse("vms:detail", args=[con_vm.host.name, con_vm.name])
    client.force_login(operator)
    page = client.get(url).content.decode()
    assert 'data-testid="security-summary"' in page
    assert 'data-security="firmware" data-status="bad"' in page and 'data-security="tpm" data-status="bad"' in page
    assert 'data-testid="console-button"' in page
    if not host_has_lsm():
        assert 'data-security="confinement" data-status="bad"' in page
        assert "This host has no LSM" in page and 'data-testid="host-confinement"' in page
        dashboard = client.get(reverse("dashboard")).content.decode()
        assert 'data-testid="host-confinement"' in dashboard and "This host has no LSM" in dashboard
        security = client.get(reverse("monitoring:security")).content.decode()
        assert "Confinement: This host has no LSM" in security
    client.force_login(viewer)
    page = client.get(url).content.decode()
    assert 'data-testid="security-summary"' in page and 'data-testid="console-button"' not in page


def host_has_lsm() -> bool:
    return Path("/sys/kernel/security/lsm").exists() and any(
        m in Path("/sys/kernel/security/lsm").read_text() for m in ("apparmor", "selinux")
    )


@proxied
def test_an_operator_reads_a_frame_through_the_proxy_and_the_session_is_audited(client, operator, con_vm, proxy_url):
    client.force_login(operator)
    page = client.get(reverse("vms:console", args=[con_vm.host.name, con_vm.name]))
    assert page.status_code == 200 and b"vms-console.js" in page.content
    assert ":6080" in page["Content-Security-Policy"]  # connect-src names the proxy
    token = _token(client, con_vm)
    with connect(f"{proxy_url}?token={token}", open_timeout=10) as ws:
        rfb = _Rfb(ws)
        width, height, bpp = rfb.handshake()
        assert width > 0 and height > 0 and bpp in (8, 16, 32)
        pixels = rfb.frame(width, height, bpp)
    assert len(pixels) == width * height * bpp // 8
    assert len(set(pixels)) > 1, "the frame should show something (SeaBIOS' text), not one colour"
    deadline = time.monotonic() + 10
    while not AuditEvent.objects.filter(action="vms.console.end").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    events = list(AuditEvent.objects.filter(action__startswith="vms.console.").order_by("id"))
    assert [(e.action, e.outcome, e.actor_name, e.target_name) for e in events] == [
        ("vms.console.open", "success", operator.username, con_vm.name),
        ("vms.console.start", "success", operator.username, con_vm.name),
        ("vms.console.end", "success", operator.username, con_vm.name),
    ]
    assert events[2].params["bytes_to_browser"] >= len(pixels) and events[2].params["reason"] == "browser closed"
    session = ConsoleSession.objects.get()
    assert session.redeemed_at is not None and session.ended_at is not None

    with connect(f"{proxy_url}?token={token}", open_timeout=10) as ws:  # the same token again
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd.code == 1008 and "already used" in closed.value.rcvd.reason
    assert AuditEvent.objects.filter(action="vms.console.start", outcome="denied", error="console token already used",
                                     actor_name=operator.username).exists()  # fmt: skip


@proxied
def test_disabling_the_user_ends_an_open_console_session(client, operator, admin, con_vm, proxy_url, monkeypatch):
    from apps.accounts.services import user_set_active
    from apps.vms import console_proxy

    monkeypatch.setattr(console_proxy, "RECHECK_SECONDS", 0.2)
    client.force_login(operator)
    token = _token(client, con_vm)
    with connect(f"{proxy_url}?token={token}", open_timeout=10) as ws:
        _Rfb(ws).handshake()
        user_set_active(actor=admin, user=operator, active=False)
        with pytest.raises(ConnectionClosed):
            while True:
                ws.recv(timeout=10)
    deadline = time.monotonic() + 10
    while not AuditEvent.objects.filter(action="vms.console.end").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert AuditEvent.objects.get(action="vms.console.end").params["reason"] == "access revoked: user disabled"


def _refused(proxy_url, token) -> str:
    with connect(f"{proxy_url}?token={token}", open_timeout=10) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd.code == 1008
    return closed.value.rcvd.reason


@proxied
def test_forged_expired_and_foreign_tokens_are_refused_and_audited(client, operator, con_vm, proxy_url, settings,
                                                                   host):  # fmt: skip
    client.force_login(operator)
    token = _token(client, con_vm)
    assert "invalid" in _refused(proxy_url, token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB"))
    assert "invalid" in _refused(proxy_url, "")
    assert "invalid" in _refused(proxy_url, signing.dumps({"s": 1, "n": "x", "u": operator.pk, "v": con_vm.pk},
                                                          salt="another-purpose"))  # fmt: skip
    # a token of this session but for another VM (as if the signing key had leaked): no such session
    other = VirtualMachine.objects.create(host=host, uuid="00000000-0000-0000-0000-00000000c0de", name="other-vm",
                                          last_state="running")  # fmt: skip
    session = ConsoleSession.objects.get()
    forged = signing.dumps({"s": session.pk, "n": session.nonce, "u": operator.pk, "v": other.pk}, salt=console.SALT,
                           compress=True)  # fmt: skip
    assert "no such session" in _refused(proxy_url, forged)
    # expired: past the signature's max age, and past the session's own expiry
    settings.CONSOLE_TOKEN_SECONDS = 1
    time.sleep(1.1)
    assert "expired" in _refused(proxy_url, token)
    settings.CONSOLE_TOKEN_SECONDS = 30
    ConsoleSession.objects.filter(pk=session.pk).update(expires_at=session.created_at)
    assert "expired" in _refused(proxy_url, token)
    denied = AuditEvent.objects.filter(action="vms.console.start", outcome="denied")
    errors = list(denied.values_list("error", flat=True))
    assert errors.count("console token invalid (bad signature or malformed)") == 3
    assert "console token names no such session" in errors and errors.count("console token expired") == 2
    assert not AuditEvent.objects.filter(action="vms.console.start", outcome="success").exists()


def test_viewers_get_403_and_a_vm_outside_the_scope_is_404_both_audited(client, viewer, make_user, con_vm, host):
    client.force_login(viewer)
    page_url = reverse("vms:console", args=[con_vm.host.name, con_vm.name])
    token_url = reverse("vms:console_token", args=[con_vm.host.name, con_vm.name])
    assert client.get(page_url).status_code == 403
    assert client.post(token_url).status_code == 403
    assert not ConsoleSession.objects.exists()
    denied = AuditEvent.objects.filter(actor_name=viewer.username, outcome="denied")
    assert denied.filter(action="page.console").exists() and denied.filter(action="page.console_token").exists()

    mine = VirtualMachine.objects.create(host=host, uuid="00000000-0000-0000-0000-00000000beef", name="mine",
                                         last_state="running")  # fmt: skip
    scoped = make_user(role=Role.OPERATOR, scope="vm", vm=mine)
    client.force_login(scoped)
    assert client.post(token_url).status_code == 404
    assert not ConsoleSession.objects.exists()
    lookup = AuditEvent.objects.get(action="vms.vm.lookup", actor_name=scoped.username)
    assert (lookup.outcome, lookup.target_name) == ("denied", con_vm.name)


def test_a_vm_whose_vnc_is_on_a_port_gets_no_console(client, operator, host):
    vm = VirtualMachine.objects.create(host=host, uuid="00000000-0000-0000-0000-0000000000aa", name="tcp-vnc",
                                       last_state="running", security={"graphics": [
                                           {"type": "vnc", "listen": "address", "socket": "", "address": "127.0.0.1",
                                            "port": 5901, "password": False}]})  # fmt: skip
    client.force_login(operator)
    page = client.get(reverse("vms:console", args=[host.name, vm.name])).content.decode()
    assert 'data-testid="console-unavailable"' in page and "127.0.0.1:5901, not on a unix socket" in page
    response = client.post(reverse("vms:console_token", args=[host.name, vm.name]))
    assert response.status_code == 409 and not ConsoleSession.objects.exists()
    assert AuditEvent.objects.get(action="vms.console.open").outcome == "failed"


def test_the_proxy_command_refuses_to_listen_beyond_loopback():
    with pytest.raises(CommandError, match="loopback only"):
        call_command("console_proxy", "--bind", "0.0.0.0")  # noqa: S104


OVMF = "/usr/share/OVMF/OVMF_CODE_4M.ms.fd"
EFI_XML = """<domain type='qemu'>
  <name>{name}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>
  <os firmware='efi'><type arch='x86_64' machine='q35'>hvm</type>
    <firmware><feature enabled='yes' name='secure-boot'/><feature enabled='yes' name='enrolled-keys'/></firmware></os>
  <features><acpi/><smm state='on'/></features>
  <devices><graphics type='vnc'><listen type='socket'/></graphics>
    <tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm></devices>
</domain>"""


def test_a_secure_boot_vm_with_a_vtpm_shows_green_firmware_secure_boot_and_tpm(client, operator, host, libvirt_uri):
    """TCG (type qemu): this machine's KVM has no SMM, which OVMF's secure-boot build needs."""
    if not os.path.exists(OVMF) or shutil.which("swtpm") is None:
        pytest.fail("OVMF (Debian's ovmf) and swtpm are installed by scripts/setup-system.sh: run `make test`")
    name = unique("tefi")
    uuid = gw.domain_define(libvirt_uri, EFI_XML.format(name=name))
    try:
        gw.domain_start(libvirt_uri, name)
        domain_refresh(host, name, uuid, "started")
        vm = VirtualMachine.objects.get(host=host, uuid=uuid)
        swtpm = subprocess.run(["pgrep", "-f", f"swtpm socket.*{name}"], capture_output=True, text=True).stdout
        assert swtpm.strip(), "libvirt should have started swtpm for the vTPM"
        client.force_login(operator)
        page = client.get(reverse("vms:detail", args=[host.name, name])).content.decode()
    finally:
        subprocess.run(["virsh", "-c", libvirt_uri, "destroy", name], capture_output=True)
        subprocess.run(["virsh", "-c", libvirt_uri, "undefine", name, "--nvram", "--tpm"], capture_output=True)
    fw = vm.security["firmware"]
    assert fw["type"] == "uefi" and fw["secure_boot"] is True and fw["loader"].startswith("/usr/share/OVMF/")
    assert fw["nvram"].endswith(f"{name}_VARS.fd")
    assert vm.security["tpm"] == [{"model": "tpm-crb", "backend": "emulator", "version": "2.0"}]
    for key in ("firmware", "secure_boot", "tpm"):
        assert f'data-security="{key}" data-status="good"' in page
    assert "TPM 2.0 (tpm-crb, emulator)" in page
