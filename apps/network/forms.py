"""Forms of the network pages and of `manage.py vm_firewall`: the one place raw input is
checked. Services receive `cleaned_data`: typed values."""

from __future__ import annotations

from django import forms

from . import validation as v
from .models import HOST_SERVICES, FirewallRule, Verdict, Zone


class ZoneForm(forms.Form):
    name = forms.CharField(max_length=63, validators=[v.check_name])
    kind = forms.ChoiceField(choices=Zone.Kind.choices)
    description = forms.CharField(max_length=200, required=False, validators=[v.check_text])
    network_name = forms.CharField(max_length=63, required=False, validators=[v.check_name],
                                   help_text="libvirt network (default: portal-<name>)")  # fmt: skip
    bridge = forms.CharField(max_length=15, required=False, validators=[v.check_iface],
                             help_text="bridge device (default: derived from the name)")  # fmt: skip
    uplink = forms.CharField(max_length=15, required=False, validators=[v.check_iface])
    ipv4_cidr = forms.CharField(max_length=43, required=False, help_text="IPv4 subnet, e.g. 192.0.2.0/24")
    ipv6_cidr = forms.CharField(max_length=43, required=False, help_text="IPv6 subnet, e.g. 2001:db8::/64")
    policy_in = forms.ChoiceField(choices=Verdict.choices, required=False, help_text="custom zones")
    policy_out = forms.ChoiceField(choices=Verdict.choices, required=False, help_text="custom zones")
    host_access = forms.BooleanField(required=False, help_text="custom zones: VMs may reach the host")
    nat = forms.BooleanField(required=False, help_text="masquerade what leaves by the uplink (needs an uplink)")

    def _subnet(self, field: str, version: int) -> str:
        net = v.parse_cidr(self.cleaned_data.get(field, ""), "subnet")
        if net is None:
            return ""
        if net.version != version or net.num_addresses < 4:
            raise forms.ValidationError(f"{net} is not an IPv{version} subnet with room for the host and VMs.")
        return str(net)

    def clean_ipv4_cidr(self):
        return self._subnet("ipv4_cidr", 4)

    def clean_ipv6_cidr(self):
        return self._subnet("ipv6_cidr", 6)

    def clean(self):
        data = super().clean()
        if data.get("kind") == Zone.Kind.VPN_ONLY and not data.get("uplink"):
            self.add_error("uplink", "A vpn-only zone needs the uplink its traffic leaves by.")
        if data.get("nat") and not data.get("uplink"):
            self.add_error("nat", "NAT needs the uplink the zone's traffic is masqueraded out of.")
        if data.get("kind") == Zone.Kind.CUSTOM:
            for f in ("policy_in", "policy_out"):
                if not data.get(f):
                    self.add_error(f, "A custom zone needs its own default policy.")
        return data


class ZoneEditForm(forms.Form):
    description = forms.CharField(max_length=200, required=False, validators=[v.check_text])
    policy_in = forms.ChoiceField(choices=Verdict.choices)
    policy_out = forms.ChoiceField(choices=Verdict.choices)
    host_access = forms.BooleanField(required=False)
    host_services = forms.MultipleChoiceField(choices=[(s, s) for s in HOST_SERVICES], required=False,
                                              help_text="with host access: only these (none ticked: every service)")
    uplink = forms.CharField(max_length=15, required=False, validators=[v.check_iface])
    nat = forms.BooleanField(required=False, help_text="masquerade what leaves by the uplink (needs an uplink)")

    def clean(self):
        data = super().clean()
        if data.get("nat") and not data.get("uplink"):
            self.add_error("nat", "NAT needs the uplink the zone's traffic is masqueraded out of.")
        return data


class RuleForm(forms.Form):
    direction = forms.ChoiceField(choices=FirewallRule.Direction.choices)
    protocol = forms.CharField(max_length=10, initial="any", validators=[v.check_protocol],
                               help_text=", ".join(v.PROTOCOLS))  # fmt: skip
    ports = forms.CharField(max_length=11, required=False, help_text="22 or 8000-8080 (tcp, udp)")
    remote = forms.CharField(max_length=64, required=False,
                             help_text="source (in) or destination (out), IPv4 or IPv6 CIDR; empty: any")  # fmt: skip
    remote_zone = forms.CharField(max_length=63, required=False, validators=[v.check_name],
                                  help_text="or a zone of the same host")  # fmt: skip
    action = forms.ChoiceField(choices=Verdict.choices)
    comment = forms.CharField(max_length=200, required=False, validators=[v.check_text])
    position = forms.IntegerField(min_value=0, max_value=100000, required=False)

    def __init__(self, *args, host=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.host = host

    def clean_ports(self):
        return v.parse_ports(self.cleaned_data.get("ports", ""))

    def clean_remote(self):
        net = v.parse_cidr(self.cleaned_data.get("remote", ""), "remote address")
        return str(net) if net is not None else ""

    def clean_remote_zone(self):
        name = self.cleaned_data.get("remote_zone") or ""
        if not name:
            return None
        zone = Zone.objects.filter(host=self.host, name=name).first() if self.host is not None else None
        if zone is None:
            raise forms.ValidationError(f"No zone named {name!r} on this host (deleted?).")
        if not zone.cidrs:
            raise forms.ValidationError(f"The zone {name!r} has no subnet: a rule cannot name it.")
        return zone

    def clean(self):
        data = super().clean()
        if data.get("ports") and data.get("protocol") not in v.PORT_PROTOCOLS:
            self.add_error("ports", f"Ports apply to tcp and udp only, not {data.get('protocol')}.")
        if data.get("remote") and data.get("remote_zone"):
            self.add_error("remote_zone", "Give a remote address or a remote zone, not both.")
        return data


class ZoneMoveForm(forms.Form):
    zone = forms.CharField(max_length=63, validators=[v.check_name])


class QuarantineForm(forms.Form):
    reason = forms.CharField(max_length=200, required=False, validators=[v.check_text])
    confirm = forms.ChoiceField(choices=[("yes", "yes")], error_messages={
        "required": "Quarantining a VM cuts it off and suspends it: it needs confirmation.",
        "invalid_choice": "Quarantining a VM cuts it off and suspends it: it needs confirmation."})  # fmt: skip


class ReleaseForm(forms.Form):
    reason = forms.CharField(max_length=200, validators=[v.check_text],
                             help_text="why the VM may go back on the network")  # fmt: skip


def errors_text(form: forms.Form) -> str:
    """A form's errors in one line (for the audit log and the command line)."""
    parts = []
    for field, errors in form.errors.items():
        label = "" if field == "__all__" else f"{field}: "
        parts.append(label + " ".join(str(e) for e in errors))
    return "; ".join(parts)
