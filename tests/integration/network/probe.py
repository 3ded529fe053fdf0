"""Run inside a test network namespace: `python probe.py tcp|udp|ping ADDR [PORT]` exits 0
when the peer answered within a second, 1 otherwise; `python probe.py whoami ADDR PORT` prints
the source address the peer saw (UDP); `python probe.py serve PORT...` answers TCP connects and
UDP datagrams on those ports (IPv4 and IPv6; to "who?" the sender's address) until killed."""

import os
import select
import socket
import struct
import sys
import time


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def ping(addr: str) -> bool:
    v6 = ":" in addr
    sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_RAW,
                         socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    kind = 128 if v6 else 8
    header = struct.pack("!BBHHH", kind, 0, 0, ident, 1)
    packet = header if v6 else struct.pack("!BBHHH", kind, 0, checksum(header + b"probe"), ident, 1)
    sock.sendto(packet + b"probe", (addr, 0))  # the kernel computes the ICMPv6 checksum
    deadline = time.monotonic() + 0.5
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            return False
        data, _ = sock.recvfrom(2048)
        icmp = data if v6 else data[(data[0] & 0x0F) * 4:]
        if icmp[0] == (129 if v6 else 0) and struct.unpack("!H", icmp[4:6])[0] == ident:
            return True
    return False


def tcp(addr: str, port: int) -> bool:
    try:
        socket.create_connection((addr, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def udp(addr: str, port: int) -> bool:
    sock = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.5)
    try:
        sock.sendto(b"probe", (addr, port))
        return sock.recv(64) == b"probe"
    except OSError:
        return False


def whoami(addr: str, port: int) -> bool:
    sock = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.5)
    try:
        sock.sendto(b"who?", (addr, port))
        print(sock.recv(64).decode())
        return True
    except OSError:
        return False


def serve(ports: list[int]) -> None:
    socks = []
    for port in ports:
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            s = socket.socket(socket.AF_INET6, kind)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind(("::", port))
            if kind == socket.SOCK_STREAM:
                s.listen(16)
            socks.append(s)
    print("ready", flush=True)
    while True:
        for s in select.select(socks, [], [])[0]:
            if s.type == socket.SOCK_STREAM:
                s.accept()[0].close()
            else:
                data, peer = s.recvfrom(64)
                s.sendto(peer[0].removeprefix("::ffff:").encode() if data == b"who?" else data, peer)


if __name__ == "__main__":
    verb, *args = sys.argv[1:]
    if verb == "serve":
        serve([int(p) for p in args])
    ok = {"ping": lambda: ping(args[0]), "tcp": lambda: tcp(args[0], int(args[1])),
          "udp": lambda: udp(args[0], int(args[1])),
          "whoami": lambda: whoami(args[0], int(args[1]))}[verb]()
    sys.exit(0 if ok else 1)
