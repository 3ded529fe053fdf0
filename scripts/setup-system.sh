#!/usr/bin/env bash
# Installs the Debian packages the portal needs and starts the services it talks to
# (virtlogd, libvirtd, Redis) when none answers. Idempotent; safe to run again.
set -euo pipefail

APT_PACKAGES=(
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-daemon-system libvirt-clients libvirt-dev
  pkg-config qemu-utils qemu-system-x86 qemu-block-extra dnsmasq-base iptables nftables
  iproute2 cryptsetup-bin dmsetup restic softhsm2 tpm2-tools swtpm swtpm-tools redis-server chromium chromium-driver
  prometheus lynis
  ovmf  # UEFI and secure-boot firmware (OVMF_CODE_4M.secboot.fd, OVMF_VARS_4M.ms.fd) for VM profiles
)

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup-system: installing ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # libvirtd must be (re)started after iptables is installed
  as_root pkill -x libvirtd 2>/dev/null || true
fi

# Packages the security posture checks read: `sshd -T` (SSH key-only), `auditctl -s/-l` and
# `augenrules` (auditd and its rules). This script never runs an SSH server or auditd: they are
# installed with a policy-rc.d that forbids starting services (a host that wants them starts
# them itself), and apart from the packages above, so installing them never restarts libvirtd.
POSTURE_PACKAGES=(openssh-server auditd)
missing=()
for pkg in "${POSTURE_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup-system: installing ${missing[*]} (their services are not started)"
  as_root apt-get update -qq
  policy=/usr/sbin/policy-rc.d
  saved=""
  if [ -e "$policy" ]; then saved=$(as_root mktemp) && as_root cp -p "$policy" "$saved"; fi
  printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
  as_root chmod 0755 "$policy"
  status=0
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || status=$?
  if [ -n "$saved" ]; then as_root mv "$saved" "$policy"; else as_root rm -f "$policy"; fi
  [ "$status" = 0 ] || { echo "setup-system: installing ${missing[*]} failed" >&2; exit "$status"; }
fi
# `sshd -T` wants sshd's privilege separation directory, which ssh.service makes when it starts
# (it never does here): an empty root-owned directory, as Debian's unit creates it
as_root install -d -m 0755 /run/sshd

# libvirt's qemu driver needs these users and directories
getent group kvm >/dev/null || as_root groupadd -r kvm
getent group libvirt-qemu >/dev/null || as_root groupadd -r libvirt-qemu
id libvirt-qemu >/dev/null 2>&1 || as_root useradd -r -g libvirt-qemu -G kvm libvirt-qemu
as_root mkdir -p /var/log/libvirt /var/run/libvirt
# no udev here: give /dev/kvm to the kvm group as udev would, so QEMU (libvirt-qemu) can use it
if [ -e /dev/kvm ]; then as_root chgrp kvm /dev/kvm && as_root chmod 660 /dev/kvm; fi

# The libvirt qemu hook opens a VM's encrypted disks at every start (the portal's, virsh,
# autostart at boot) and closes them at every stop. It finds the portal managing a domain in
# the registry named by /etc/hypervisor-portal/hook.env. An existing hook of someone else is
# left alone (say so). libvirtd reads its hooks when it starts or on SIGHUP.
HOOK_SRC="$(cd "$(dirname "$0")" && pwd)/libvirt-hook-qemu"
HOOK=/etc/libvirt/hooks/qemu
hook_changed=0
as_root install -d -m 0755 /etc/libvirt/hooks
(umask 022 && as_root mkdir -p /var/lib/hypervisor-portal)  # other portal state lives beside it
as_root install -d -m 0700 /etc/hypervisor-portal /var/lib/hypervisor-portal/hook-domains
if [ -e "$HOOK" ] && ! grep -q "hypervisor-portal libvirt qemu hook" "$HOOK"; then
  echo "setup-system: $HOOK belongs to someone else; encrypted disks open only on the portal's own starts" >&2
elif ! cmp -s "$HOOK_SRC" "$HOOK"; then
  as_root install -m 0755 "$HOOK_SRC" "$HOOK"
  hook_changed=1
fi
if [ ! -f /etc/hypervisor-portal/hook.env ]; then
  echo "PORTAL_HOOK_REGISTRY=/var/lib/hypervisor-portal/hook-domains" | as_root tee /etc/hypervisor-portal/hook.env >/dev/null
  as_root chmod 0600 /etc/hypervisor-portal/hook.env
fi
if [ "$hook_changed" = 1 ] && virsh -c qemu:///system version >/dev/null 2>&1 && [ -f /run/libvirtd.pid ]; then
  as_root kill -HUP "$(cat /run/libvirtd.pid)"  # a running libvirtd re-reads its hooks
fi

if ! pgrep -x virtlogd >/dev/null; then
  as_root virtlogd -d
fi
if ! virsh -c qemu:///system version >/dev/null 2>&1; then
  pgrep -x libvirtd >/dev/null || as_root libvirtd -d
  for _ in $(seq 1 60); do
    virsh -c qemu:///system version >/dev/null 2>&1 && break
    sleep 0.5
  done
  virsh -c qemu:///system version >/dev/null || { echo "setup-system: libvirtd did not answer" >&2; exit 1; }
fi

# VM images live where QEMU (user libvirt-qemu) can reach them whatever the clone's path
# (a clone under /root or a 0700 home cannot): PORTAL_IMAGE_DIR, 0711 (others may enter, not
# list), owned by the user who runs the portal. The portal checks it at start (core.E002).
IMAGE_DIR=${PORTAL_IMAGE_DIR:-/var/lib/hypervisor-portal/images}
if [ ! -d "$IMAGE_DIR" ]; then
  (umask 022 && as_root mkdir -p "$IMAGE_DIR")
  as_root chown "$(id -u):$(id -g)" "$IMAGE_DIR"
  as_root chmod 0711 "$IMAGE_DIR"
fi

REDIS_HOST=${REDIS_HOST:-127.0.0.1}
if ! redis-cli -h "$REDIS_HOST" ping >/dev/null 2>&1; then
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/portal.log
  for _ in $(seq 1 20); do redis-cli ping >/dev/null 2>&1 && break; sleep 0.25; done
fi
# the key store's master key (ENCRYPTION_KEK_FILE_DIR) lives apart from the keys, outside the
# state directory: a root-only directory owned by the user the portal runs as
as_root install -d -m 0700 -o "$(id -u)" -g "$(id -g)" /etc/hypervisor-portal
echo "setup-system: libvirtd and Redis are ready"
