"""Creating a VM from the `minimal` profile (the service call and its job, run here: every
check, the VM row, the disk, define, start, the audit) against bare libvirt doing the same
work with the same XML (create the volume, defineXML, create), in the same run.

Target: "Create" to running at most 1.5x the bare path. Rounds alternate which goes first;
medians are compared. Everything made (domains, volumes, the scratch pool) is removed."""

from __future__ import annotations

import statistics
import time

import libvirt
from django.conf import settings

from tests.bench._scratch import remove_scratch, scratch_pool

ROUNDS = 5


def _bare(conn, pool_name: str, name: str, xml_template: str, disk_size: int) -> float:
    """Bare libvirt: volume, defineXML, create with the portal's own XML; seconds until running."""
    t0 = time.perf_counter()
    pool = conn.storagePoolLookupByName(pool_name)
    vol_xml = (f"<volume><name>{name}-disk0.qcow2</name><capacity unit='bytes'>{disk_size}</capacity>"
               "<target><format type='qcow2'/></target></volume>")  # fmt: skip
    path = pool.createXML(vol_xml, 0).path()
    dom = conn.defineXML(xml_template.replace("@NAME@", name).replace("@PATH@", path))
    dom.create()
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    return time.perf_counter() - t0


def run(args) -> dict:
    from django.contrib.auth import get_user_model

    from apps.accounts.models import Role, RoleAssignment
    from apps.core import jobs
    from apps.core.gateways import libvirt as gw
    from apps.core.models import Host, Job
    from apps.profiles import provision
    from apps.profiles.models import VmProfile
    from apps.profiles.schema import merged
    from apps.vms.models import VirtualMachine

    jobs._send = lambda job_id: None  # the job runs here, timed; no worker gets it
    uri = settings.LIBVIRT_URI
    tag, pool_name, pool_dir = scratch_pool()
    gw.pool_ensure_dir(uri, pool_name, str(pool_dir))
    conn = libvirt.open(uri)
    names: list[str] = []
    host = Host.objects.get_or_create(name=settings.DEFAULT_HOST_NAME, defaults={"uri": uri})[0]
    user = get_user_model().objects.create_user(username=f"bench-{tag}", password="x" * 20)
    RoleAssignment.objects.create(user=user, role=Role.OPERATOR, scope="global")
    profile = VmProfile.objects.get(name="minimal")
    disk_size = profile.spec["disks"][0]["size_mb"] << 20
    spec = merged(profile.spec, None)
    template = gw.domain_guest_xml(provision.guest_spec("@NAME@", "", spec, disks=[("@PATH@", "qcow2")], networks=[]))
    portal_times, bare_times = [], []
    try:
        for i in range(ROUNDS):
            order = ("portal", "bare") if i % 2 == 0 else ("bare", "portal")
            for which in order:
                name = f"bench-{tag}-{which[0]}{i}"
                names.append(name)
                if which == "bare":
                    bare_times.append(_bare(conn, pool_name, name, template, disk_size))
                    continue
                t0 = time.perf_counter()
                job = provision.vm_create(actor=user, host=host, name=name, profile=profile, pool=pool_name)
                jobs.job_run(job.pk, worker="bench")
                portal_times.append(time.perf_counter() - t0)
                job = Job.objects.get(pk=job.pk)
                assert job.state == "succeeded", job.error
                assert gw.domain_state(uri, name) == "running"
        portal, bare = statistics.median(portal_times), statistics.median(bare_times)
        return {
            "name": "VM create (minimal profile) to running",
            "ratio": portal / bare,
            "target": "<= 1.5",
            "portal: service + job (median s)": f"{portal:.3f} (all: {', '.join(f'{t:.3f}' for t in portal_times)})",
            "bare libvirt: volume + defineXML + create (median s)": (
                f"{bare:.3f} (all: {', '.join(f'{t:.3f}' for t in bare_times)})"
            ),
            "VM rows made": VirtualMachine.objects.filter(name__startswith=f"bench-{tag}").count(),
        }
    finally:
        remove_scratch(conn, pool_name, pool_dir, domains=names)  # domains, pool, and its directory
