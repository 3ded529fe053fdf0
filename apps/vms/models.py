from django.conf import settings
from django.db import models

from apps.core.models import Host, name_validator


class VirtualMachine(models.Model):
    """A libvirt domain as the portal knows it: an identity for permissions (its host and
    zone), quotas and audit, and its last known state as the state collector read it."""

    host = models.ForeignKey(Host, on_delete=models.PROTECT, related_name="vms")
    uuid = models.UUIDField()
    name = models.CharField(max_length=63, validators=[name_validator])
    zone = models.CharField(max_length=63, default="default", validators=[name_validator])
    last_state = models.CharField(max_length=20, blank=True)
    vcpus = models.PositiveIntegerField(default=0)
    memory_kib = models.PositiveBigIntegerField(default=0)
    disk_capacity = models.PositiveBigIntegerField(default=0, help_text="bytes provisioned, all disks")
    disk_allocation = models.PositiveBigIntegerField(default=0, help_text="bytes allocated, all disks")
    present = models.BooleanField(default=True, help_text="False once libvirt no longer lists it")
    last_seen = models.DateTimeField(null=True, blank=True)
    # the security facts of its live definition (gateways/libvirt/xml.py domain_security_parse:
    # firmware, secure boot, TPM, memory encryption, seclabels, limits, graphics), written by
    # the state collector with its interfaces; the VM page's security summary reads them
    security = models.JSONField(default=dict, blank=True)
    security_read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["host__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["host", "uuid"], name="vm_unique_uuid_per_host"),
            models.UniqueConstraint(
                fields=["host", "name"], condition=models.Q(present=True), name="vm_unique_name_per_host"
            ),
        ]

    def __str__(self):
        return self.name

    scope_vm_path = ""  # permissions.restrict: this is the VM

    def scope_path(self):
        return (self.host_id, self.zone, self.pk)


class VmInterface(models.Model):
    """A VM's network interface as the state collector last read it (the domain's live
    definition, in every bulk read and after each lifecycle event). Pages show these rows;
    network features (zones, firewall rules that follow a VM) key on `mac`."""

    vm = models.ForeignKey(VirtualMachine, on_delete=models.CASCADE, related_name="interfaces")
    mac = models.CharField(max_length=17, help_text="the MAC address, lower case")
    position = models.PositiveSmallIntegerField(default=0, help_text="order in the domain's definition")
    source_type = models.CharField(max_length=16, blank=True, help_text="network, bridge, direct, user, ...")
    network = models.CharField(max_length=255, blank=True, help_text="the libvirt network it is attached to")
    bridge = models.CharField(max_length=255, blank=True, help_text="the host bridge its tap is plugged into")
    target_dev = models.CharField(max_length=64, blank=True, help_text="the tap device (vnetN) while the VM runs")
    link_state = models.CharField(max_length=8, default="up", help_text="up or down")
    model = models.CharField(max_length=32, blank=True, help_text="the emulated NIC: virtio, e1000, ...")
    collected_at = models.DateTimeField()

    class Meta:
        ordering = ["vm", "position"]
        constraints = [models.UniqueConstraint(fields=["vm", "mac"], name="vm_interface_unique_mac")]

    def __str__(self):
        return f"{self.vm.name} {self.mac}"

    scope_vm_path = "vm"  # permissions.restrict reaches the VM through this field

    @property
    def link_up(self) -> bool:
        return self.link_state != "down"


class VmConfigRevision(models.Model):
    """One revision of a VM's persistent definition (its inactive domain XML): kept at every
    change the portal makes (with the user who made it) and at every change the state
    collector finds (made outside the portal). A revision is stored only when the
    normalised XML differs from the VM's latest one (`sha256` of the normalised XML)."""

    class Source(models.TextChoices):
        PORTAL = "portal", "portal"
        OUTSIDE = "outside", "outside the portal"

    vm = models.ForeignKey(VirtualMachine, on_delete=models.CASCADE, related_name="revisions")
    xml = models.TextField()
    sha256 = models.CharField(max_length=64)
    source = models.CharField(max_length=8, choices=Source.choices)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    author_name = models.CharField(max_length=150, blank=True, help_text="kept when the user is deleted")
    reason = models.CharField(max_length=80, blank=True, help_text="the action that changed it")
    created = models.DateTimeField(db_index=True)
    audit_event = models.ForeignKey(
        "audit.AuditEvent", null=True, blank=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )

    class Meta:
        ordering = ["-created", "-id"]
        indexes = [models.Index(fields=["vm", "-created", "-id"], name="vm_revision_latest")]

    def __str__(self):
        return f"{self.vm.name} revision {self.pk}"

    scope_vm_path = "vm"

    @property
    def who(self) -> str:
        return self.author_name if self.source == self.Source.PORTAL else "outside the portal"


class ConsoleSession(models.Model):
    """One opening of a VM's graphical console: minted by the portal (permission checked,
    audited), redeemed once by the console proxy within seconds, ended when either side
    closes. The signed token names this row; the row makes it single-use."""

    vm = models.ForeignKey(VirtualMachine, on_delete=models.CASCADE, related_name="console_sessions")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    nonce = models.CharField(max_length=43, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(help_text="the token must be redeemed before this")
    redeemed_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    bytes_to_guest = models.PositiveBigIntegerField(default=0)
    bytes_to_browser = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"console {self.vm.name} {self.user}"

    scope_vm_path = "vm"
