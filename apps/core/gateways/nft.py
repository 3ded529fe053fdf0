"""The only module that runs `nft`. It speaks nftables JSON (`nft -j`) in both directions:
documents are built from validated objects by apps.network.compiler, never from a user's
string in nft syntax. A document is checked (`nft -c -j -f`: nft's evaluation, and the
kernel's acceptance of each object of the batch, which is then aborted) before it is loaded
with one `nft -j -f`: one netlink batch, which the kernel applies whole or not at all. The
check does not see everything (a jump loop is found only when the kernel commits): the
load's atomicity is what keeps a refused document harmless. A document
is encoded once (`encode`): the check and the load read the same bytes, and `digest` names
them, so a caller may remember which document was checked. It only ever deletes or replaces
the tables it is named (ours); libvirt's tables are never touched.

Pure functions over plain values; no database."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor

import orjson

from apps.core import runner
from apps.core.errors import GatewayError, InvalidInput

NFT = "nft"
IP = "ip"
TIMEOUT = 60
FAMILIES = ("bridge", "inet")


Document = dict | bytes  # a document, or its bytes from encode()


def encode(document: Document) -> bytes:
    """The bytes nft reads. orjson: 10 MB for 1,000 VMs in a hundredth of the stdlib's time."""
    return document if isinstance(document, bytes) else orjson.dumps(document)


def digest(document: Document) -> str:
    return hashlib.sha256(encode(document)).hexdigest()


# nft reading a large JSON document spends a sixth of its time in glibc merging freed small
# blocks (malloc_consolidate); without fast bins it does not: 12% less CPU for 1,000 VMs
NFT_ENV = {"PATH": os.environ.get("PATH") or "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C",
           "GLIBC_TUNABLES": "glibc.malloc.mxfast=0"}  # fmt: skip


def _nft(args: list[str], *, document: Document | None = None, netns: str | None = None, check: bool = True):
    """Run nft; a document is read from a memory file (`-f /dev/fd/N`), not a pipe: nft reads
    10 MB without waiting for this process to be scheduled to refill a 64 KiB pipe."""
    if document is None:
        return runner.run(_argv(args, netns), timeout=TIMEOUT, check=check, env=NFT_ENV)
    fd = os.memfd_create("nft-document")
    try:
        os.write(fd, encode(document))
        os.lseek(fd, 0, os.SEEK_SET)
        argv = _argv([*args, "-f", f"/dev/fd/{fd}"], netns)
        return runner.run(argv, timeout=TIMEOUT, check=check, env=NFT_ENV, pass_fds=(fd,))
    finally:
        os.close(fd)


def _argv(args: list[str], netns: str | None) -> list[str]:
    return [IP, "netns", "exec", netns, NFT, *args] if netns else [NFT, *args]


def _reason(result) -> str:
    lines = [ln.strip() for ln in result.stderr.splitlines() if ln.strip() and not ln.strip().startswith("^")]
    return lines[-1] if lines else f"exit status {result.returncode}"


def check(document: Document, *, netns: str | None = None) -> None:
    """`nft -c -j -f`: nft's and the kernel's verdict on the document (the batch is sent,
    each object accepted or refused, then aborted), without changing anything. Not seen:
    what the kernel validates only at commit (jump loops)."""
    result = _nft(["-c", "-j"], document=document, netns=netns, check=False)
    if result.returncode != 0:
        raise InvalidInput(f"nftables refused the ruleset: {_reason(result)}")


def load(document: Document, *, netns: str | None = None) -> None:
    """Apply the document in one transaction: all of it or nothing. nft evaluates the whole
    document before sending it, and the kernel commits the batch atomically or aborts it, so
    a refusal (nft's or the kernel's) leaves the running ruleset as it was. Callers check
    the document first (`check`, or `check_and_render` when its diff is shown)."""
    result = _nft(["-j"], document=document, netns=netns, check=False)
    if result.returncode != 0:
        raise InvalidInput(f"nftables refused the ruleset (nothing was changed): {_reason(result)}")


def list_ruleset(*, netns: str | None = None) -> list[dict]:
    """`nft -j list ruleset`: every object of the kernel's ruleset, metainfo left out."""
    out = _nft(["-j", "list", "ruleset"], netns=netns).stdout
    return [o for o in json.loads(out or '{"nftables": []}')["nftables"] if "metainfo" not in o]


def list_tables(name: str, *, netns: str | None = None) -> list[dict]:
    """Our tables (`name` in each family we use) as the kernel lists them; [] if absent."""
    objects = []
    for family in FAMILIES:
        result = _nft(["-j", "list", "table", family, name], netns=netns, check=False)
        if result.returncode != 0:
            if "No such file or directory" in result.stderr:
                continue
            raise GatewayError(f"nft could not list table {family} {name}: {_reason(result)}")
        objects += [o for o in json.loads(result.stdout)["nftables"] if "metainfo" not in o]
    return objects


def delete_tables(name: str, *, netns: str | None = None) -> None:
    """Remove our tables (whichever exist) in one transaction."""
    doc = []
    for family in FAMILIES:
        doc += [{"add": {"table": {"family": family, "name": name}}},
                {"delete": {"table": {"family": family, "name": name}}}]  # fmt: skip
    load({"nftables": doc}, netns=netns)


def normalize(objects: list[dict]) -> list[dict]:
    """A listing without what changes by itself (handles, counter values, set element
    order): two listings of the same ruleset normalise equal."""

    def clean(value):
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                if k == "handle":
                    continue
                if k == "counter" and isinstance(v, dict):
                    out[k] = None
                    continue
                out[k] = clean(v)
            if "elem" in out and isinstance(out["elem"], list):
                out["elem"] = sorted(out["elem"], key=lambda e: json.dumps(e, sort_keys=True))
            return out
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return [clean(o) for o in objects]


def fingerprint(objects: list[dict]) -> str:
    body = json.dumps(normalize(objects), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def render(document: Document, name: str) -> list[dict]:
    """What the kernel would list for our tables once `document` is applied, without
    touching the host's ruleset: the document is loaded in a scratch network namespace
    of our own (removed at once) and listed there."""
    ns = f"portal-scratch-{uuid.uuid4().hex[:10]}"
    runner.run([IP, "netns", "add", ns], timeout=TIMEOUT)
    try:
        load(document, netns=ns)
        return list_tables(name, netns=ns)
    finally:
        runner.run([IP, "netns", "del", ns], timeout=TIMEOUT, check=False)


def check_and_render(document: Document, name: str, *, netns: str | None = None) -> list[dict]:
    """`check` against the host's running ruleset and `render` in a scratch namespace, side
    by side (two nft processes, two cores): the listing the document would give, once nft
    and the kernel accepted it here (netns: where "here" is; default the host's). Raises
    InvalidInput (the check's reason) if refused."""
    body = encode(document)
    with ThreadPoolExecutor(max_workers=1) as pool:
        checked = pool.submit(check, body, netns=netns)
        try:
            listing = render(body, name)
        except InvalidInput:
            listing = None
        checked.result()  # the check's refusal first: it speaks of the host
    if listing is None:
        return render(body, name)  # accepted here, refused in a fresh namespace: say why
    return listing


_bridge_name_match: bool | None = None


def bridge_name_match_supported() -> bool:
    """Can this kernel match a bridged frame's bridge (`meta ibrname`)? Asked once per
    process with `nft -c` on a table that is never created."""
    global _bridge_name_match
    if _bridge_name_match is None:
        t = f"portal_probe_{uuid.uuid4().hex[:8]}"
        doc = {"nftables": [
            {"add": {"table": {"family": "bridge", "name": t}}},
            {"add": {"chain": {"family": "bridge", "table": t, "name": "c", "type": "filter", "hook": "forward",
                               "prio": 0, "policy": "accept"}}},
            {"add": {"rule": {"family": "bridge", "table": t, "chain": "c",
                              "expr": [{"match": {"op": "==", "left": {"meta": {"key": "ibrname"}}, "right": "x"}},
                                       {"drop": None}]}}},
        ]}  # fmt: skip
        try:
            check(doc)
            _bridge_name_match = True
        except InvalidInput:
            _bridge_name_match = False
    return _bridge_name_match


def counters(name: str) -> dict[str, tuple[int, int]]:
    """Packet and byte counters of our rules, keyed by the first word of the rule's comment
    (the compiler writes the rule id there, e.g. "r12"); rules with one key add up."""
    found: dict[str, tuple[int, int]] = {}
    for obj in list_tables(name):
        rule = obj.get("rule")
        if not rule or not rule.get("comment"):
            continue
        key = rule["comment"].split(" ", 1)[0]
        for expr in rule.get("expr", []):
            c = expr.get("counter") if isinstance(expr, dict) else None
            if isinstance(c, dict):
                p, b = found.get(key, (0, 0))
                found[key] = (p + int(c.get("packets", 0)), b + int(c.get("bytes", 0)))
    return found


def describe(objects: list[dict]) -> list[str]:
    """One readable line per object of a listing (for the diff shown before an apply)."""
    lines = []
    for obj in normalize(objects):
        (kind, body), = obj.items()
        where = f"{body.get('family', '')} {body.get('table', body.get('name', ''))}"
        if kind == "rule":
            comment = f"  # {body['comment']}" if body.get("comment") else ""
            lines.append(f"{where} {body['chain']}: {_expr_text(body.get('expr', []))}{comment}")
        elif kind in ("chain", "set", "map"):
            extra = " ".join(f"{k}={body[k]}" for k in ("type", "hook", "prio", "policy", "map") if k in body)
            lines.append(f"{where} {kind} {body['name']} {extra}".rstrip())
            if body.get("elem"):
                lines.append(f"{where} {kind} {body['name']} elements {json.dumps(body['elem'])}")
        elif kind == "table":
            lines.append(f"table {body['family']} {body['name']}")
    return lines


def _expr_text(exprs: list) -> str:
    return " ".join(json.dumps(e, separators=(",", ":")) for e in exprs)
