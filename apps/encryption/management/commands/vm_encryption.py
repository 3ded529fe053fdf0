"""`manage.py vm_encryption`: the seed's vm_encryption.sh, on the portal's services.

    create-encrypted VM GiB [--pool P] [--kind luks2|qemu-luks]
    encrypt-existing VM PATH
    change-passphrase VM [--disk vdb]
    list-encrypted
    key-reminders
    header-backup VM [--disk vdb]
    escrow-export VM --output FILE [--disk vdb] [--passphrase-file F]
    recovery-test VM --escrow FILE [--disk vdb] [--passphrase-file F]
    restore-key VM --escrow FILE [--disk vdb] [--passphrase-file F]
    restore-store ESCROW_FILE... [--passphrase-file F]
    destroy-stale-headers VM [--disk vdb]
    status | init | unseal | seal | rotate-kek
    start VM | stop VM [--force]
    unlock-policy VM automatic|manual [--passphrase-file F]
    start-manual VM [--passphrase-file F]

Jobs are queued for the workers and followed until they end (--no-wait returns at once).
Destructive actions (encrypt-existing, change-passphrase, restore-key,
destroy-stale-headers, seal, rotate-kek) ask for a confirmation on the terminal, or need
--yes; without a terminal and --yes they are refused. The common options (--as, --host,
--no-wait, --yes, --timeout) go before or after the action.
Passphrases come from a prompt (getpass) or --passphrase-file, never from argv. The actor
is the system unless --as USER, whose roles are then checked like in the portal.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.core.management.base import BaseCommand, CommandError

from apps.audit.services import refused
from apps.core.errors import InvalidInput, PortalError
from apps.core.management.follow import follow_job
from apps.core.models import Host, Job
from apps.encryption import services
from apps.encryption.models import EncryptedDisk
from apps.vms.services import vm_for_actor


class Command(BaseCommand):
    help = "Encrypted VM disks: create, encrypt in place, change keys, list, back up, escrow, recover."

    @staticmethod
    def _common_options(parser, *, top: bool) -> None:
        """The options every action takes: on the command (with their defaults) and again on
        each action (no default, so one given before the action is kept)."""

        def default(value):
            return value if top else argparse.SUPPRESS

        parser.add_argument(
            "--as", dest="as_user", default=default(""), help="act as this portal user (default: system)"
        )
        parser.add_argument("--host", default=default(""), help=f"host name (default: {settings.DEFAULT_HOST_NAME})")
        parser.add_argument("--no-wait", action="store_true", default=default(False), help="queue the job and return")
        parser.add_argument(
            "--yes", action="store_true", default=default(False), help="confirm a destructive action without asking"
        )
        parser.add_argument("--timeout", type=int, default=default(6 * 3600), help="seconds to wait for a job")

    def add_arguments(self, parser):
        self._common_options(parser, top=True)
        sub = parser.add_subparsers(dest="action", required=True)
        p = sub.add_parser("create-encrypted")
        p.add_argument("vm")
        p.add_argument("gib")
        p.add_argument("--pool", default="")
        p.add_argument("--kind", default="luks2", choices=["luks2", "qemu-luks"])
        p = sub.add_parser("encrypt-existing")
        p.add_argument("vm")
        p.add_argument("path")
        for name in ("change-passphrase", "header-backup"):
            p = sub.add_parser(name)
            p.add_argument("vm")
            p.add_argument("--disk", default="", help="guest device (e.g. vdb) when the VM has several")
            if name == "change-passphrase":
                p.add_argument("--passphrase-file", default="", help="manual-unlock VM: the current passphrase")
                p.add_argument("--new-passphrase-file", default="", help="manual-unlock VM: the new passphrase")
        sub.add_parser("list-encrypted")
        sub.add_parser("key-reminders", help="disks whose key is old, or that lack an escrow or a header backup")
        p = sub.add_parser("escrow-export")
        p.add_argument("vm")
        p.add_argument("--disk", default="")
        p.add_argument("--output", required=True, help="file to write the escrow document to (must not exist)")
        p.add_argument("--passphrase-file", default="")
        for name in ("recovery-test", "restore-key"):
            p = sub.add_parser(name)
            p.add_argument("vm")
            p.add_argument("--disk", default="")
            p.add_argument("--escrow", required=True, help="the escrow document")
            p.add_argument("--passphrase-file", default="")
        p = sub.add_parser("restore-store", help="restore the key store's disk keys from their escrow files")
        p.add_argument("escrow", nargs="+", help="escrow files (one per disk)")
        p.add_argument("--passphrase-file", default="")
        p = sub.add_parser("destroy-stale-headers", help="destroy header backups taken before the last key change")
        p.add_argument("vm")
        p.add_argument("--disk", default="")
        sub.add_parser("status")
        for name in ("init", "unseal", "rotate-kek"):
            p = sub.add_parser(name)
            p.add_argument("--passphrase-file", default="")
        sub.add_parser("seal")
        p = sub.add_parser("start")
        p.add_argument("vm")
        p = sub.add_parser("stop")
        p.add_argument("vm")
        p.add_argument("--force", action="store_true")
        p = sub.add_parser("unlock-policy", help="automatic (key store) or manual (a typed passphrase) unlock")
        p.add_argument("vm")
        p.add_argument("mode", choices=["automatic", "manual"])
        p.add_argument("--passphrase-file", default="")
        p = sub.add_parser("start-manual", help="open a manual-unlock VM's disks with its passphrase and start it")
        p.add_argument("vm")
        p.add_argument("--passphrase-file", default="")
        for action_parser in sub.choices.values():
            self._common_options(action_parser, top=False)

    # ------------------------------------------------------------ helpers

    def _actor(self, username):
        if not username:
            return None
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None:
            raise CommandError(f"No active user {username!r}.")
        return user

    def _host(self, name) -> Host:
        name = name or settings.DEFAULT_HOST_NAME
        host = Host.objects.filter(name=name).first()
        if host is None:
            raise CommandError(f"No host named {name!r} in the portal.")
        return host

    def _disk(self, vm, target) -> EncryptedDisk:
        disks = EncryptedDisk.objects.select_related("vm", "host").filter(vm=vm)
        if target:
            disks = disks.filter(target=target)
        disks = list(disks)
        if not disks:
            raise CommandError(f"{vm.name} has no encrypted disk{f' {target}' if target else ''}.")
        if len(disks) > 1:
            raise CommandError(f"{vm.name} has several encrypted disks: choose one with --disk.")
        return disks[0]

    def _passphrase(self, options, prompt, confirm=False) -> str:
        path = options.get("passphrase_file")
        if path:
            return self._read(path, "passphrase file", binary=False).rstrip("\n")
        if not sys.stdin.isatty():
            raise CommandError("No terminal to ask for the passphrase: use --passphrase-file.")
        first = getpass.getpass(prompt)
        if confirm and getpass.getpass("Again: ") != first:
            raise CommandError("The passphrases differ.")
        return first

    @staticmethod
    def _read(path: str, what: str, *, binary: bool = True):
        """The file's contents, or a CommandError a person can act on (never a traceback)."""
        try:
            with open(path, "rb") as fh:
                data = fh.read()
            return data if binary else data.decode("utf-8")
        except OSError as exc:
            raise CommandError(f"Cannot read the {what} {path}: {exc.strerror or exc}.") from None
        except UnicodeDecodeError:
            raise CommandError(f"The {what} {path} is not UTF-8 text.") from None

    def _confirm(self, options, what: str) -> bool:
        """--yes, or a "yes" typed on the terminal; without a terminal, refused (False)."""
        if options.get("yes"):
            return True
        if not sys.stdin.isatty():
            raise CommandError(f"{what} needs confirmation: add --yes (no terminal to ask on).")
        return input(f"{what}. Type yes to go on: ").strip().lower() == "yes"

    def _follow(self, job: Job, options) -> None:
        problem = follow_job(self, job, no_wait=options["no_wait"], timeout=options["timeout"])
        if problem:
            raise CommandError(problem)

    # ------------------------------------------------------------ commands

    def handle(self, *args, **options):
        try:
            self._dispatch(options)
        except PermissionDenied as exc:
            raise CommandError(str(exc)) from None
        except PortalError as exc:
            raise CommandError(exc.message) from None

    @staticmethod
    def _gib(actor, vm, value: str) -> int:
        """The size argument as a whole number of GiB; anything else is refused, audited."""
        try:
            return int(value.strip())
        except ValueError:
            error = f"The size must be a whole number of GiB, not {value[:20]!r}."
            refused(
                actor=actor,
                action="encryption.disk.create",
                target=vm,
                params={"size_gib": value[:20]},
                error=error,
                perm="encryption.change",
            )
            raise InvalidInput(error) from None

    def _dispatch(self, o):
        actor = self._actor(o["as_user"])
        action = o["action"]
        host = self._host(o["host"]) if o["host"] else None  # an unknown --host is an error for every action
        if action == "list-encrypted":
            return self._list(actor, host)
        if action == "key-reminders":
            return self._reminders(actor, host)
        if action in ("status", "init", "unseal", "seal", "rotate-kek"):
            return self._store(actor, action, o)
        if action == "restore-store":
            return self._restore_store(actor, o)
        host = host or self._host("")
        vm = vm_for_actor(actor, host.name, o["vm"])  # "not found" outside the scope, as on the pages
        if action == "create-encrypted":
            gib = self._gib(actor, vm, o["gib"])
            job = services.disk_create_encrypted(actor=actor, vm=vm, size_gib=gib, pool=o["pool"], kind=o["kind"])
        elif action == "encrypt-existing":
            confirmed = self._confirm(o, f"Encrypting {o['path']} of {vm.name} in place")
            job = services.disk_encrypt_existing(actor=actor, vm=vm, path=o["path"], confirmed=confirmed)
        elif action == "change-passphrase" and services.unlock_policy_get(actor=actor, vm=vm)["manual"]:
            return self._manual_passphrase_change(actor, vm, o)
        elif action == "unlock-policy":
            return self._unlock_policy(actor, vm, o)
        elif action == "start-manual":
            state = services.vm_start_manual(actor=actor, vm=vm, passphrase=self._passphrase(o, "VM passphrase: "))
            return self.stdout.write(self.style.SUCCESS(f"{vm.name} is {state}"))
        elif action == "change-passphrase":
            disk = self._disk(vm, o["disk"])
            confirmed = self._confirm(o, f"Changing the key of {disk}")
            job = services.disk_change_key(actor=actor, disk=disk, confirmed=confirmed)
        elif action == "header-backup":
            job = services.disk_header_backup(actor=actor, disk=self._disk(vm, o["disk"]))
        elif action == "start":
            job = services.vm_start_unlocked(actor=actor, vm=vm)
        elif action == "stop":
            job = services.vm_stop_locked(actor=actor, vm=vm, force=o["force"], confirmed=True)
        elif action == "escrow-export":
            return self._escrow_export(actor, vm, o)
        elif action == "recovery-test":
            return self._recovery_test(actor, vm, o)
        elif action == "restore-key":
            return self._restore_key(actor, vm, o)
        elif action == "destroy-stale-headers":
            disk = self._disk(vm, o["disk"])
            confirmed = self._confirm(o, f"Destroying the stale header backups of {disk}")
            destroyed = services.header_backups_destroy_stale(actor=actor, disk=disk, confirmed=confirmed)
            for path in destroyed:
                self.stdout.write(f"destroyed {path}")
            return None
        else:  # pragma: no cover - argparse limits the choices
            raise CommandError(f"unknown action {action}")
        return self._follow(job, o)

    def _list(self, actor, host):
        rows = services.disks_list(actor=actor, host=host)
        self.stdout.write(
            f"{'VM':<20} {'DISK':<6} {'TYPE':<9} {'STATE':<10} {'CIPHER':<16} {'BITS':>4} {'PBKDF':<9} {'SLOTS':<8} "
            f"{'AGE':>5}  PATH"
        )
        for r in rows:
            i = r.info
            slots = ",".join(str(s) for s in i.slot_numbers) if i else "-"
            notes = (" rotate!" if r.rotation_due and r.disk.is_ready else "") + (
                f"  error: {r.error}" if r.error else ""
            )
            self.stdout.write(
                f"{r.disk.vm.name:<20} {r.disk.target:<6} {r.disk.kind:<9} {r.disk.state:<10} "
                f"{(i.cipher if i else '-')[:16]:<16} {(i.key_size if i else 0):>4} {(i.pbkdf if i else '-'):<9} "
                f"{slots:<8} {r.key_age_days:>4}d  {r.disk.path}{notes}"
            )

    def _reminders(self, actor, host):
        for r in services.keys_due(actor=actor, host=host):
            self.stdout.write(f"{r.disk.vm.name} {r.disk.target}: {'; '.join(r.reminders)}")

    def _store(self, actor, action, o):
        if action == "init":
            passphrase = ""
            if settings.ENCRYPTION_KEK_PROVIDER == "passphrase":
                passphrase = self._passphrase(o, "New key store passphrase: ", confirm=True)
            services.store_initialize(actor=actor, passphrase=passphrase)
        elif action == "unseal":
            services.store_unseal(actor=actor, passphrase=self._passphrase(o, "Key store passphrase: "))
        elif action == "seal":
            services.store_seal(actor=actor, confirmed=self._confirm(o, "Sealing the key store"))
        elif action == "rotate-kek":
            confirmed = self._confirm(o, "Rotating the key-encryption key")
            passphrase = ""
            if settings.ENCRYPTION_KEK_PROVIDER == "passphrase":
                passphrase = self._passphrase(o, "New key store passphrase: ", confirm=True)
            host = self._host(o["host"])
            job = services.kek_rotate(actor=actor, host=host, new_passphrase=passphrase, confirmed=confirmed)
            return self._follow(job, o)
        s = services.store_status(actor=actor)
        self.stdout.write(
            f"provider {s.provider}, {'initialised' if s.initialized else 'not initialised'}, "
            f"{'SEALED' if s.sealed else 'unsealed'}, KEK version {s.kek_version}, {s.keys} keys"
        )

    def _escrow_export(self, actor, vm, o):
        disk = self._disk(vm, o["disk"])
        output = o["output"]
        if os.path.exists(output):
            raise CommandError(f"{output} exists; choose a new file.")
        passphrase = self._passphrase(o, "Recovery passphrase (kept by you, never stored): ", confirm=True)
        document = services.disk_escrow_export(actor=actor, disk=disk, recovery_passphrase=passphrase)
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "wb") as fh:
            fh.write(document)
        self.stdout.write(self.style.SUCCESS(f"escrow of {disk} written to {output}"))

    def _recovery_test(self, actor, vm, o):
        disk = self._disk(vm, o["disk"])
        escrow = self._read(o["escrow"], "escrow file")
        passphrase = self._passphrase(o, "Recovery passphrase: ")
        result = services.disk_recovery_test(actor=actor, disk=disk, escrow=escrow, recovery_passphrase=passphrase)
        self.stdout.write(self.style.SUCCESS(f"recovery test of {disk} passed: {result}"))
        if not result["escrow_current"]:
            self.stdout.write(self.style.WARNING("this escrow predates the last key change: export a new one"))

    def _restore_store(self, actor, o):
        escrows = [(path, self._read(path, "escrow file")) for path in o["escrow"]]
        passphrase = self._passphrase(o, "Recovery passphrase: ")
        confirmed = self._confirm(o, f"Restoring disk keys from {len(escrows)} escrow file(s)")
        results = services.store_restore_from_escrow(
            actor=actor, escrows=escrows, recovery_passphrase=passphrase, confirmed=confirmed
        )
        for name, ok, message in results:
            self.stdout.write(f"{'restored' if ok else 'NOT restored'} {name}: {message}")
        failed = [name for name, ok, _ in results if not ok]
        if failed:
            raise CommandError(f"{len(failed)} of {len(results)} escrow file(s) were not restored.")

    def _restore_key(self, actor, vm, o):
        disk = self._disk(vm, o["disk"])
        escrow = self._read(o["escrow"], "escrow file")
        passphrase = self._passphrase(o, "Recovery passphrase: ")
        confirmed = self._confirm(o, f"Restoring the key of {disk} from escrow")
        services.disk_key_restore(
            actor=actor, disk=disk, escrow=escrow, recovery_passphrase=passphrase, confirmed=confirmed
        )
        self.stdout.write(self.style.SUCCESS(f"key of {disk} restored from escrow; recovery test passed"))

    def _unlock_policy(self, actor, vm, o):
        confirmed = self._confirm(o, f"Changing how the disks of {vm.name} are unlocked")
        if o["mode"] == "manual":
            passphrase = self._passphrase(o, f"New passphrase of {vm.name} (never stored): ", confirm=True)
        else:
            passphrase = self._passphrase(o, f"Current passphrase of {vm.name}: ")
        services.vm_unlock_policy_set(actor=actor, vm=vm, mode=o["mode"], passphrase=passphrase, confirmed=confirmed)
        self.stdout.write(self.style.SUCCESS(f"{vm.name} now has {o['mode']} unlock"))

    def _manual_passphrase_change(self, actor, vm, o):
        """A manual-unlock VM: the typed passphrase itself changes (asked, never in argv)."""
        old = self._passphrase(o, f"Current passphrase of {vm.name}: ")
        new = self._passphrase({"passphrase_file": o.get("new_passphrase_file")}, "New passphrase: ", confirm=True)
        services.vm_passphrase_change(actor=actor, vm=vm, passphrase=old, new_passphrase=new)
        self.stdout.write(self.style.SUCCESS(f"the passphrase of {vm.name} was changed"))
