"""Bad firewall and zone input is refused with a message for people, before anything exists."""

import pytest

from apps.network.forms import RuleForm, ZoneEditForm, ZoneForm
from apps.network.models import Zone

GOOD_RULE = {"direction": "in", "protocol": "tcp", "ports": "22", "remote": "", "action": "accept", "comment": "ssh"}


def rule_errors(**changes):
    form = RuleForm({**GOOD_RULE, **changes}, host=None)
    assert not form.is_valid()
    return " ".join(str(e) for errs in form.errors.values() for e in errs)


def test_a_good_rule_is_typed():
    form = RuleForm({**GOOD_RULE, "ports": "8000-8080", "remote": "2001:db8::/64"}, host=None)
    assert form.is_valid(), form.errors
    assert form.cleaned_data["ports"] == (8000, 8080)
    assert form.cleaned_data["remote"] == "2001:db8::/64"
    assert form.cleaned_data["remote_zone"] is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ports": "0"}, "Port 0 is out of range"),
        ({"ports": "70000"}, "Port 70000 is out of range"),
        ({"ports": "90-80"}, "inverted"),
        ({"ports": "22;reboot"}, "semicolons"),
        ({"ports": "ssh"}, "Invalid port"),
        ({"protocol": "sctp"}, "Unknown protocol 'sctp'"),
        ({"protocol": "icmp", "ports": "22"}, "Ports apply to tcp and udp only"),
        ({"remote": "10.0.0.300/24"}, "not an IPv4 or IPv6 address"),
        ({"remote": "10.0.0.1/24"}, "host bits set"),
        ({"remote": "fe80::zz/64"}, "not an IPv4 or IPv6 address"),
        ({"comment": 'say "hi"'}, "quotes"),
        ({"comment": "a;b"}, "semicolons"),
        ({"comment": "line\nbreak"}, "single line"),
        ({"comment": "café"}, "plain ASCII"),
        ({"remote_zone": "gone"}, "No zone named 'gone'"),
        ({"direction": "sideways"}, "Select a valid choice"),
    ],
)
def test_bad_rules_are_refused_with_the_reason(changes, message):
    assert message in rule_errors(**changes)


@pytest.mark.parametrize(
    ("name", "message"),
    [("it's", "quotes"), ("a;b", "semicolons"), ("a\nb", "single line"), ("zöne", "plain ASCII"), ("-x", "Invalid")],
)
def test_bad_zone_names_are_refused(name, message):
    form = ZoneForm({"name": name, "kind": "untrusted"})
    assert not form.is_valid()
    assert message in str(form.errors["name"])


def test_vpn_only_needs_an_uplink_and_custom_its_policy():
    assert "uplink" in ZoneForm({"name": "v", "kind": "vpn-only"}).errors
    errors = ZoneForm({"name": "c", "kind": "custom"}).errors
    assert "policy_in" in errors and "policy_out" in errors


def test_nat_needs_an_uplink():
    base = {"policy_in": "drop", "policy_out": "accept", "nat": "on"}
    assert "nat" in ZoneEditForm(base).errors
    assert ZoneEditForm({**base, "uplink": "vpn0"}).is_valid()
    assert "nat" in ZoneForm({"name": "n", "kind": "secure", "nat": "on"}).errors  # when the zone is made too
    made = ZoneForm({"name": "n", "kind": "secure", "nat": "on", "uplink": "vpn0"})
    assert made.is_valid() and made.cleaned_data["nat"] is True


def test_kinds_imply_their_policy():
    z = Zone(kind=Zone.Kind.UNTRUSTED)
    z.apply_kind_defaults()
    assert (z.policy_in, z.policy_out, z.host_access) == ("drop", "drop", False)
    z = Zone(kind=Zone.Kind.SECURE)
    z.apply_kind_defaults()
    assert (z.policy_in, z.policy_out, z.host_access) == ("drop", "accept", True)
