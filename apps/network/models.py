"""Security zones, firewall rules, applied rulesets and quarantines.

A zone is a libvirt network (and its bridge) with a policy; a VM is in the zone its
interfaces are attached to. Rules are zone-wide (vm empty) or per VM; they are compiled to
nftables JSON by apps.network.compiler and loaded by apps.core.gateways.nft."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models

from apps.core.models import Host

from . import validation as v


class Verdict(models.TextChoices):
    ACCEPT = "accept"
    DROP = "drop"


# host services a zone's VMs may be allowed to reach on the host: name -> (protocol, port)s
HOST_SERVICES: dict[str, tuple[tuple[str, int], ...]] = {
    "ssh": (("tcp", 22),),
    "dns": (("udp", 53), ("tcp", 53)),
    "dhcp": (("udp", 67),),
    "ntp": (("udp", 123),),
    "http": (("tcp", 80),),
    "https": (("tcp", 443),),
    "ping": (("icmp", 0), ("icmpv6", 0)),  # echo requests
}


def check_host_services(value) -> None:
    unknown = [s for s in value or () if s not in HOST_SERVICES]
    if not isinstance(value, list) or unknown:
        raise ValidationError(f"Unknown host services: {', '.join(map(str, unknown)) or value!r}; "
                              f"known: {', '.join(HOST_SERVICES)}.")  # fmt: skip


class Zone(models.Model):
    class Kind(models.TextChoices):
        SECURE = "secure", "secure: may reach the host"
        UNTRUSTED = "untrusted", "untrusted: reaches only what its rules allow, never the host"
        VPN_ONLY = "vpn-only", "vpn-only: leaves only through its uplink"
        CUSTOM = "custom", "custom: its own default policy"

    # kind -> (policy_in, policy_out, host_access): the defaults a kind implies
    KIND_DEFAULTS = {
        Kind.SECURE: (Verdict.DROP, Verdict.ACCEPT, True),
        Kind.UNTRUSTED: (Verdict.DROP, Verdict.DROP, False),
        Kind.VPN_ONLY: (Verdict.DROP, Verdict.ACCEPT, False),
    }

    host = models.ForeignKey(Host, on_delete=models.PROTECT, related_name="zones")
    name = models.CharField(max_length=63, validators=[v.check_name])
    kind = models.CharField(max_length=12, choices=Kind.choices, default=Kind.UNTRUSTED)
    description = models.CharField(max_length=200, blank=True, validators=[v.check_text])
    network_name = models.CharField(max_length=63, validators=[v.check_name], help_text="libvirt network")
    bridge = models.CharField(max_length=15, validators=[v.check_iface])
    uplink = models.CharField(max_length=15, blank=True, validators=[v.check_iface],
                              help_text="vpn-only: the only interface its traffic may leave by")  # fmt: skip
    nat = models.BooleanField(default=False, help_text="masquerade what leaves by the uplink as the uplink's "
                                                       "address (needs an uplink); off: no NAT at all")  # fmt: skip
    ipv4_cidr = models.CharField(max_length=43, blank=True, help_text="the network's IPv4 subnet (host: first address)")
    ipv6_cidr = models.CharField(max_length=43, blank=True, help_text="the network's IPv6 subnet")
    policy_in = models.CharField(max_length=6, choices=Verdict.choices, default=Verdict.DROP)
    policy_out = models.CharField(max_length=6, choices=Verdict.choices, default=Verdict.DROP)
    host_access = models.BooleanField(default=False, help_text="VMs of the zone may reach the host")
    host_services = models.JSONField(default=list, blank=True, validators=[check_host_services],
                                     help_text="with host access: only these host services (HOST_SERVICES); "
                                               "empty: every one")  # fmt: skip
    network_state = models.CharField(max_length=20, default="pending", help_text="pending, active or failed")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["host__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["host", "name"], name="zone_unique_name_per_host"),
            models.UniqueConstraint(fields=["host", "bridge"], name="zone_unique_bridge_per_host"),
            models.UniqueConstraint(fields=["host", "network_name"], name="zone_unique_network_per_host"),
        ]

    def __str__(self):
        return self.name

    def scope_path(self):
        return (self.host_id, self.name, None)

    def clean(self):
        if self.kind == self.Kind.VPN_ONLY and not self.uplink:
            raise ValidationError({"uplink": "A vpn-only zone needs the uplink its traffic leaves by."})
        for f in ("ipv4_cidr", "ipv6_cidr"):
            net = v.parse_cidr(getattr(self, f), "subnet")
            if net is not None and net.version != (4 if f == "ipv4_cidr" else 6):
                raise ValidationError({f: f"{net} is not an IPv{4 if f == 'ipv4_cidr' else 6} subnet."})
        if self.nat and not self.uplink:
            raise ValidationError({"nat": "NAT needs the uplink the zone's traffic is masqueraded out of."})
        if self.uplink and self.uplink == self.bridge:
            raise ValidationError({"uplink": "The uplink must be another interface than the zone's bridge."})

    @property
    def cidrs(self) -> tuple[str, ...]:
        return tuple(c for c in (self.ipv4_cidr, self.ipv6_cidr) if c)

    def apply_kind_defaults(self) -> None:
        if self.kind in self.KIND_DEFAULTS:
            self.policy_in, self.policy_out, self.host_access = self.KIND_DEFAULTS[self.kind]


class FirewallRule(models.Model):
    class Direction(models.TextChoices):
        IN = "in", "in (to the VM)"
        OUT = "out", "out (from the VM)"

    zone = models.ForeignKey(Zone, on_delete=models.CASCADE, related_name="rules",
                             help_text="the zone a zone-wide rule belongs to (a VM's rule: its zone then)")  # fmt: skip
    vm = models.ForeignKey("vms.VirtualMachine", null=True, blank=True, on_delete=models.CASCADE,
                           related_name="firewall_rules")  # fmt: skip
    position = models.PositiveIntegerField(default=0)
    direction = models.CharField(max_length=3, choices=Direction.choices)
    protocol = models.CharField(max_length=6, choices=[(p, p) for p in v.PROTOCOLS], default="any",
                                validators=[v.check_protocol])  # fmt: skip
    port_from = models.PositiveIntegerField(null=True, blank=True)
    port_to = models.PositiveIntegerField(null=True, blank=True)
    remote_cidr = models.CharField(max_length=64, blank=True, help_text="source (in) or destination (out)")
    remote_zone = models.ForeignKey(Zone, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    action = models.CharField(max_length=6, choices=Verdict.choices, default=Verdict.ACCEPT)
    comment = models.CharField(max_length=200, blank=True, validators=[v.check_text])
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["zone_id", "vm_id", "position", "id"]

    scope_vm_path = "vm"

    def __str__(self):
        owner = self.vm.name if self.vm_id else f"zone {self.zone.name}"
        return f"{owner} #{self.position} {self.direction} {self.protocol} {self.action}"

    def scope_path(self):
        if self.vm_id:
            return self.vm.scope_path()
        return self.zone.scope_path()

    @property
    def ports(self) -> str:
        if self.port_from is None:
            return ""
        return str(self.port_from) if self.port_from == self.port_to else f"{self.port_from}-{self.port_to}"

    def clean(self):
        v.check_protocol(self.protocol)
        if self.port_from is not None:
            if self.protocol not in v.PORT_PROTOCOLS:
                raise ValidationError({"ports": f"Ports apply to tcp and udp only, not {self.protocol}."})
            v.parse_ports(f"{self.port_from}-{self.port_to if self.port_to is not None else self.port_from}")
        if self.remote_cidr:
            v.parse_cidr(self.remote_cidr)
        if self.remote_cidr and self.remote_zone_id:
            raise ValidationError("Give a remote address or a remote zone, not both.")


class FirewallApply(models.Model):
    """One apply of the compiled ruleset on a host. It stays `pending` until confirmed;
    unconfirmed past `deadline`, it is rolled back to the ruleset of the apply before it."""

    class State(models.TextChoices):
        PENDING = "pending"
        CONFIRMED = "confirmed"
        ROLLED_BACK = "rolled_back", "rolled back"
        SUPERSEDED = "superseded"

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="firewall_applies")
    document = models.JSONField(help_text="the nftables JSON applied")
    spec = models.JSONField(default=dict, help_text="the policy applied: zones and rules (firewall.policy_spec)")
    fingerprint = models.CharField(max_length=64, help_text="sha256 of our tables as the kernel listed them")
    state = models.CharField(max_length=12, choices=State.choices, default=State.PENDING, db_index=True)
    previous = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    deadline = models.DateTimeField(null=True, blank=True)
    actor_name = models.CharField(max_length=150)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    drift_seen_at = models.DateTimeField(null=True, blank=True, help_text="our tables were last found changed")

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return f"firewall apply #{self.pk} on {self.host_id} ({self.state})"

    def scope_path(self):
        return (self.host_id, None, None)


class Quarantine(models.Model):
    """A VM isolated as suspected of compromise. Active while released_at is empty."""

    vm = models.ForeignKey("vms.VirtualMachine", on_delete=models.CASCADE, related_name="quarantines")
    incident_id = models.CharField(max_length=40, unique=True)
    reason = models.CharField(max_length=200, blank=True)
    previous_state = models.CharField(max_length=20, blank=True)
    previous_links = models.JSONField(default=dict, help_text="MAC -> link state before the quarantine")
    macs = models.JSONField(default=list)
    snapshot = models.CharField(max_length=63, blank=True)
    steps = models.JSONField(default=list, help_text="[{step, ok, detail}] in order")
    actor_name = models.CharField(max_length=150)
    started_at = models.DateTimeField(auto_now_add=True)
    released_at = models.DateTimeField(null=True, blank=True)
    release_reason = models.CharField(max_length=200, blank=True)
    released_by = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["vm"], condition=models.Q(released_at__isnull=True),
                                    name="one_active_quarantine_per_vm"),  # fmt: skip
        ]

    scope_vm_path = "vm"

    def __str__(self):
        return f"{self.incident_id} ({self.vm})"

    def scope_path(self):
        return self.vm.scope_path()
