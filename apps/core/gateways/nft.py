"""The only module that runs `nft`. It speaks nftables JSON (`nft -j`) in both directions:
documents are built from validated objects by apps.network.compiler, never from a user's
string in nft syntax. Every load is one `nft -j -f -`: one netlink batch, which the kernel
applies whole or not at all (a refused document changes nothing), so no separate `nft -c`
pass precedes it (`check` remains for probes that must never create anything). It only
ever deletes or replaces the tables it is named (ours); libvirt's
tables are never touched.

Pure functions over plain values; no database."""

from __future__ import annotations

import hashlib
import json
import uuid

import orjson

from apps.core import runner
from apps.core.errors import GatewayError, InvalidInput

NFT = "nft"
IP = "ip"
TIMEOUT = 60
FAMILIES = ("bridge", "inet")


def _nft(args: list[str], *, document: dict | None = None, netns: str | None = None, check: bool = True):
    argv = [NFT, *args]
    if netns:
        argv = [IP, "netns", "exec", netns, *argv]
    # orjson: 10 MB for 1,000 VMs in a hundredth of the stdlib's time (same compact bytes)
    stdin = orjson.dumps(document) if document is not None else None
    return runner.run(argv, stdin=stdin, timeout=TIMEOUT, check=check)


def _reason(result) -> str:
    lines = [ln.strip() for ln in result.stderr.splitlines() if ln.strip() and not ln.strip().startswith("^")]
    return lines[-1] if lines else f"exit status {result.returncode}"


def check(document: dict, *, netns: str | None = None) -> None:
    """`nft -c -j -f -`: the kernel's verdict on the document without changing anything."""
    result = _nft(["-c", "-j", "-f", "-"], document=document, netns=netns, check=False)
    if result.returncode != 0:
        raise InvalidInput(f"nftables refused the ruleset: {_reason(result)}")


def load(document: dict, *, netns: str | None = None) -> None:
    """Apply the document in one transaction: all of it or nothing. nft evaluates the whole
    document before sending it, and the kernel commits the batch atomically or aborts it, so
    a refusal (nft's or the kernel's) leaves the running ruleset as it was."""
    result = _nft(["-j", "-f", "-"], document=document, netns=netns, check=False)
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


def render(document: dict, name: str) -> list[dict]:
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
