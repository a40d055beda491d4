"""The VM tier: a Debian guest with systemd on pure cgroup v2, under QEMU.

One boot per session runs the guest tier (tests/guest/) inside the guest;
tests/vm/test_guest.py turns each of its results into a test here. The image
is built by deploy/vm/build-image.sh, or taken from its cache; QEMU runs in an
arena (a 1 GiB cgroup under ours), so the guest's pressure never reaches this
host. Everything the guest brought back stays in build/vm/ (see
tests/vm/run.py), the console log among it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import pytest

import run as vm_run

if os.geteuid() != 0:
    pytest.skip("needs root: builds the guest image and makes a cgroup for QEMU", allow_module_level=True)

# A budget for the boot and the whole guest tier under TCG, with room to spare.
BOOT_TIMEOUT_S = 1500


@dataclass
class GuestTier:
    run: vm_run.VmRun
    exitstatus: int | None = None
    tests: dict[str, dict] = field(default_factory=dict)

    def why_missing(self) -> str:
        return f"{self.run.summary()}\n--- guest console, last lines ---\n{self.run.console_tail()}"


_tier: list[GuestTier] = []


@pytest.fixture(scope="session")
def guest_tier() -> GuestTier:
    # the container tests' image, built from this checkout (or cached)
    disk, info = vm_run.ensure_container_image(vm_run.REPO)
    run = vm_run.run_vm(vm_run.GUEST_TIER_CMD, vm_run.REPO / "build" / "vm", timeout_s=BOOT_TIMEOUT_S,
                        container_disk=disk, container_info=info)
    tier = GuestTier(run)
    report = run.out_dir / "guest-tests.json"
    if report.exists():
        data = json.loads(report.read_text())
        tier.exitstatus = data["exitstatus"]
        tier.tests = {t["nodeid"]: t for t in data["tests"]}
    _tier.append(tier)
    return tier


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not _tier:
        return
    tier = _tier[0]
    run = tier.run
    tr = terminalreporter
    tr.section("guest VM")
    img = run.image
    if img:
        tr.write_line(f"image {img.get('key')}: kernel {img.get('kernel')}, {img.get('rootfs_used_mib')} MiB of files "
                      f"in a {img.get('image_mib')} MiB ext4 image, built in {img.get('total_s')} s")
    tr.write_line(run.summary())
    ci = run.container_info
    if ci:
        tr.write_line(f"container image {ci['tag']}: {ci['image_bytes'] >> 20} MiB ({ci['archive_bytes'] >> 20} MiB "
                      f"as an OCI archive), built in {ci['build_s']} s, saved in {ci['save_s']} s, put in an image "
                      f"store in {ci.get('store_s')} s")
    for t in tier.tests.values():
        tr.write_line(f"  {t['outcome']:<8} {t['duration_s']:7.1f} s  {t['nodeid']}")
    tr.write_line(f"results, journal and console: {run.out_dir}")
