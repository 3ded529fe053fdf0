# Sourced by run.sh. From here on, whatever the portal's processes create (the SQLite
# database, logs, Celery beat's schedule, the demo passwords) is private to its user; and a
# state directory left open by an earlier version (0755, database 0644) is closed.
# VM images are not kept here: QEMU (libvirt-qemu) reads them from PORTAL_IMAGE_DIR.
umask 077

make_state_private() {  # DIR
  mkdir -p "$1/log"
  chmod -R go-rwx "$1"
}
