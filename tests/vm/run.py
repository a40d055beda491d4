"""Boot the guest image under QEMU, run one job in it, bring its results back.

    python -m tests.vm.run                               # the guest test tier
    python -m tests.vm.run --cmd 'python -m oomkiller_bench --out $OOMK_VM_RESULTS/bench' --out bench-vm

The image is built or found by ``deploy/vm/build-image.sh``. Each run boots it
once, copy-on-write (a qcow2 overlay that is thrown away), with these virtio
disks:

* ``vda``: the image, ``root=/dev/vda``;
* ``vdb`` (serial ``oomk-in``): a tar of the checkout and ``job.json``, read by
  the image's ``oomkiller-vm-boot``, which runs ``deploy/vm/guest-run.sh``;
* ``vdc`` (serial ``oomk-out``): a raw disk the guest writes ``/results`` to as a
  tar before it powers off;
* ``vdd`` (serial ``oomk-img``, unless ``--no-container-image``): the
  oomkiller container image in a podman image store (an ext4 file system),
  read-only, which the container tests (tests/guest/test_containers.py) mount
  as an additional image store. The guest has no network: the image is built
  here, by ``deploy/container/build-image.sh`` from the checkout and Debian's
  archive, ``podman save``-d as an OCI archive and ``podman load``-ed into a
  store of its own, and cached in ``/var/cache/oomkiller-vm-container/`` under
  a hash of what goes into it.

The guest's ``/results`` ends up in ``--out``; ``--out``/vm/ holds the runner's
own files (``status.json``, ``command.log``, ``journal.txt``, ``dmesg.txt``) and
the serial console (``console.log``). No loop device or mount is used on the
host: the disks are plain files. QEMU runs under software emulation (TCG:
KVM is present on these machines but a guest hangs at boot) inside an
``oomkiller_bench.arena.Arena``, a cgroup under our own with a 1 GiB limit, so
nothing the guest does can pressure this host.

Exit status of the CLI: the job's own exit status in the guest, or 125 when
the guest did not get as far as finishing it (the console tail says why).
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "deploy" / "vm" / "build-image.sh"
CONTAINER_CACHE = Path(os.environ.get("OOMKILLER_VM_CONTAINER_CACHE", "/var/cache/oomkiller-vm-container"))
# The serial the guest finds the image store's disk by.
CONTAINER_DISK_SERIAL = "oomk-img"

GUEST_TIER_CMD = ("python -m pytest -p no:cacheprovider -q -ra -o junit_family=xunit2 "
                  "--junitxml=/results/junit.xml tests/guest")

# The guest's RAM. The guest tier fills it on purpose, so QEMU's resident
# size grows to all of it, plus TCG's translation cache and about 70 MiB of
# QEMU itself: 704 MiB of RAM and 192 MiB of cache came to 987 MiB
# anonymous, too close to the arena's 1 GiB.
GUEST_MEM_MIB = 640
# TCG's translation cache; QEMU's default for a system guest is 1 GiB, which
# the guest tier would fill too.
TB_SIZE_MIB = 128
GUEST_CPUS = 2
# The cgroup QEMU runs in. The guest tier took QEMU to 835 MiB anonymous
# (640 MiB of guest RAM, all touched), so this leaves room to spare, and the
# host never gives it more than 1 GiB.
QEMU_ARENA_BYTES = 1 << 30
# The output disk is sparse: only what the guest writes takes space.
OUTPUT_DISK_BYTES = 1 << 30

KERNEL_ARGS = (
    "root=/dev/vda rw console=ttyS0 panic=-1 "
    # pure cgroup v2 (bookworm's default, said explicitly) and PSI on
    "systemd.unified_cgroup_hierarchy=1 psi=1 "
    # under TCG every cycle counts; the guest runs nothing untrusted
    "mitigations=off "
    # oomkiller-vm.service runs only when this word is there
    "oomkiller_vm=job"
)

MARK_START = "OOMKILLER-VM: job starting"
MARK_FINISHED = "OOMKILLER-VM: job finished"


@dataclass
class VmRun:
    """What one boot produced."""

    out_dir: Path
    console: Path
    rc: int | None = None             # the job's exit status; None if it never finished
    status: dict = field(default_factory=dict)
    qemu_rc: int | None = None
    timed_out: bool = False
    boot_s: float | None = None       # QEMU start to the job starting in the guest
    job_s: float | None = None        # the job, as the host saw it
    total_s: float = 0.0              # QEMU start to QEMU exit
    qemu_peak_bytes: int = 0          # the arena's peak charge, page cache included
    qemu_peak_anon_bytes: int = 0     # QEMU's largest RssAnon seen (sampled twice a second)
    image: dict = field(default_factory=dict)
    container_info: dict | None = None   # the container image's build (None: no image attached)
    problem: str = ""

    @property
    def finished(self) -> bool:
        return self.rc is not None

    def console_tail(self, lines: int = 60) -> str:
        """The last lines of the serial console, without systemd's colours."""
        try:
            text = self.console.read_text(errors="replace")
        except FileNotFoundError:
            return "(no console output)"
        text = re.sub(r"\x1b\[[0-9;]*m", "", text)
        return "\n".join([ln for ln in text.splitlines() if ln.strip()][-lines:])

    def summary(self) -> str:
        parts = [f"job rc {self.rc}" if self.finished else f"job did not finish: {self.problem}",
                 f"boot {self.boot_s:.1f} s" if self.boot_s is not None else "boot: no job start seen",
                 f"job {self.job_s:.1f} s" if self.job_s is not None else "",
                 f"total {self.total_s:.1f} s",
                 f"QEMU peak {self.qemu_peak_bytes >> 20} MiB ({self.qemu_peak_anon_bytes >> 20} MiB anonymous)"]
        return ", ".join(p for p in parts if p)


def ensure_image(force: bool = False) -> Path:
    """Build the image, or find it in the cache; returns its folder."""
    cmd = ["bash", str(BUILD_SCRIPT)] + (["--force"] if force else [])
    p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{BUILD_SCRIPT} failed with status {p.returncode}")
    return Path(p.stdout.strip().splitlines()[-1])


def container_inputs(root: Path) -> list[str]:
    """What the container image is made of: the build's own files and the
    context its Containerfile copies (pyproject.toml, README.md, LICENSE,
    oomkiller/); a change to any of them builds the image again."""
    names = checkout_files(root)
    return [n for n in names
            if n.startswith(("deploy/container/", "oomkiller/")) and "__pycache__" not in n
            or n in (".dockerignore", "pyproject.toml", "README.md", "LICENSE")]


def container_key(root: Path) -> str:
    h = hashlib.sha256()
    for name in container_inputs(root):
        h.update(name.encode() + b"\0")
        h.update((root / name).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def ensure_container_image(root: Path = REPO, force: bool = False) -> tuple[Path, dict]:
    """The oomkiller image built from ``root``, in a podman image store on an
    ext4 file system image, from the cache or built now; returns the file
    system image's path and what the build took (``build.json`` beside it). Needs root, mmdebstrap and podman (it
    installs them when missing, as the VM image's build does)."""
    key = container_key(root)
    entry = CONTAINER_CACHE / key
    disk, meta = entry / "images.ext4", entry / "build.json"
    CONTAINER_CACHE.mkdir(parents=True, exist_ok=True)
    with open(CONTAINER_CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)        # one build at a time; a second caller then finds it
        if not force and disk.exists() and meta.exists():
            return disk, json.loads(meta.read_text())
        return _build_container_image(root, key, entry, disk)


def _build_container_image(root: Path, key: str, entry: Path, disk: Path) -> tuple[Path, dict]:
    need = [pkg for cmd, pkg in (("mmdebstrap", "mmdebstrap"), ("podman", "podman")) if not shutil.which(cmd)]
    if need:
        print(f"vm: installing {' '.join(need)} (to build the container image)", file=sys.stderr)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *need], check=True,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"), stdout=subprocess.DEVNULL)
    tag = f"localhost/oomkiller:vm-{key}"
    tmp = Path(tempfile.mkdtemp(prefix=f".build-{key}.", dir=CONTAINER_CACHE))
    try:
        t0 = time.monotonic()
        # build-image.sh's own output goes to our stderr: stdout is the
        # caller's (--build-only prints paths there)
        p = subprocess.run(["sh", str(root / "deploy" / "container" / "build-image.sh"), tag],
                           stdout=sys.stderr, cwd=root)
        if p.returncode != 0:
            raise RuntimeError(f"deploy/container/build-image.sh failed with status {p.returncode}")
        t1 = time.monotonic()
        size = int(subprocess.run(["podman", "image", "inspect", tag, "--format", "{{.Size}}"],
                                  capture_output=True, text=True, check=True).stdout.strip())
        work = tmp / "work"
        subprocess.run(["podman", "save", "--quiet", "--format", "oci-archive", "-o", str(work) + ".oci.tar", tag],
                       check=True)
        t2 = time.monotonic()
        subprocess.run(["podman", "rmi", "--force", tag], capture_output=True)
        # The guest's podman would take minutes to load the archive (its
        # gzipped layers, under TCG): podman loads it here into a store of
        # its own, which goes in as an ext4 file system without a journal,
        # for the guest to mount read-only as an additional image store.
        store = work / "storage"
        runroot = tempfile.mkdtemp(prefix="oomk-run-")     # podman wants it under 50 characters
        try:
            subprocess.run(["podman", "--root", str(store), "--runroot", runroot, "--storage-driver", "overlay",
                            "load", "--quiet", "--input", str(work) + ".oci.tar"], check=True,
                           stdout=subprocess.DEVNULL)
        finally:
            shutil.rmtree(runroot, ignore_errors=True)
        for extra in ("libpod", "tmp", "mounts", "overlay-containers", "defaultNetworkBackend"):
            path = store / extra
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        used = sum(f.stat().st_size for f in store.rglob("*") if f.is_file() and not f.is_symlink())
        size_mib = used * 5 // 4 // (1 << 20) + 64
        subprocess.run(["mke2fs", "-q", "-t", "ext4", "-m", "0", "-O", "^has_journal", "-L", "oomk-images",
                        "-d", str(store), str(tmp / disk.name), f"{size_mib}M"], check=True)
        archive_bytes = Path(str(work) + ".oci.tar").stat().st_size
        shutil.rmtree(work)
        os.unlink(str(work) + ".oci.tar")
        t3 = time.monotonic()
        info = {"key": key, "tag": tag, "image_bytes": size, "archive_bytes": archive_bytes,
                "store_bytes": used, "build_s": round(t1 - t0, 1), "save_s": round(t2 - t1, 1),
                "store_s": round(t3 - t2, 1)}
        (tmp / "build.json").write_text(json.dumps(info, indent=2))
        # keep only this entry: the store is 450 MB
        for old in CONTAINER_CACHE.iterdir():
            if old.is_dir() and not old.name.startswith("."):
                shutil.rmtree(old, ignore_errors=True)
        tmp.rename(entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return disk, info


def checkout_files(root: Path) -> list[str]:
    """The checkout's files as git sees them (tracked and new, not ignored);
    without git, every file but caches, venvs and build output."""
    try:
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, check=True).stdout
        names = sorted({n for n in out.decode().split("\0") if n})
        return [n for n in names if (root / n).is_file() or (root / n).is_symlink()]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "__pycache__", ".pytest_cache", "build", "bench-out"}
        found = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in skip and not d.endswith(".egg-info")]
            found += [os.path.relpath(os.path.join(dirpath, f), root) for f in filenames]
        return sorted(found)


def write_input_disk(path: Path, root: Path, job: dict) -> int:
    """The input disk: a tar of ``checkout/...`` and ``job.json``; returns the
    number of checkout files."""
    names = checkout_files(root)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name in names:
            info = tar.gettarinfo(str(root / name), arcname=f"checkout/{name}")
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if info.isreg():
                with open(root / name, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
        data = json.dumps(job).encode()
        info = tarfile.TarInfo("job.json")
        info.size = len(data)
        info.mtime = int(time.time())
        tar.addfile(info, io.BytesIO(data))
    return len(names)


def read_output_disk(path: Path, out_dir: Path) -> int:
    """Unpack the guest's ``results/`` tar from the raw output disk into
    ``out_dir``; returns the number of files (0 if the guest wrote none)."""
    count = 0
    try:
        tar = tarfile.open(path, "r:")
    except tarfile.ReadError:
        return 0
    with tar:
        for m in tar.getmembers():
            name = os.path.normpath(m.name)
            if not name.startswith("results/") or name.startswith("/") or ".." in name.split("/"):
                continue
            dest = out_dir / name[len("results/"):]
            if m.isdir():
                dest.mkdir(parents=True, exist_ok=True)
            elif m.isreg():
                dest.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(m) as src, open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                count += 1
    return count


def qemu_argv(image_dir: Path, overlay: Path, input_disk: Path, output_disk: Path, console: Path,
              mem_mib: int, cpus: int, container_disk: Path | None = None) -> list[str]:
    extra = []
    if container_disk is not None:
        extra = ["-drive", f"file={container_disk},format=raw,if=none,id=img,readonly=on",
                 "-device", f"virtio-blk-pci,drive=img,serial={CONTAINER_DISK_SERIAL}"]
    return [
        "qemu-system-x86_64", "-name", "oomk-vm",
        "-accel", f"tcg,thread=multi,tb-size={TB_SIZE_MIB}",
        "-cpu", "max", "-smp", str(cpus), "-m", f"{mem_mib}M",
        "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
        "-serial", f"file:{console}", "-no-reboot",
        "-kernel", str(image_dir / "vmlinuz"), "-initrd", str(image_dir / "initrd.img"),
        "-append", KERNEL_ARGS,
        # cache=none: the host's page cache would hold the image a second
        # time, charged to QEMU's cgroup.
        "-drive", f"file={overlay},format=qcow2,if=none,id=root,cache=none,discard=unmap",
        "-device", "virtio-blk-pci,drive=root",
        "-drive", f"file={input_disk},format=raw,if=none,id=in,readonly=on",
        "-device", "virtio-blk-pci,drive=in,serial=oomk-in",
        "-drive", f"file={output_disk},format=raw,if=none,id=out",
        "-device", "virtio-blk-pci,drive=out,serial=oomk-out",
    ] + extra


def run_vm(cmd: str = GUEST_TIER_CMD, out_dir: Path | str = REPO / "build" / "vm", *, timeout_s: float = 1500,
           image_dir: Path | None = None, mem_mib: int = GUEST_MEM_MIB, cpus: int = GUEST_CPUS,
           checkout: Path = REPO, keep: bool = False, echo_console: bool = False,
           container_disk: Path | None = None, container_info: dict | None = None) -> VmRun:
    """Boot once, run ``cmd`` in the guest (bash, in the checkout), return what came back.

    ``timeout_s`` bounds the whole boot; the guest gets a little less for the
    command itself so that its results still come out.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    (out_dir / "vm").mkdir(parents=True)
    image_dir = image_dir or ensure_image()
    work = Path(tempfile.mkdtemp(prefix="oomk-vm-"))
    run = VmRun(out_dir=out_dir, console=out_dir / "vm" / "console.log", container_info=container_info)
    try:
        run.image = json.loads((image_dir / "build.json").read_text())
        overlay, input_disk, output_disk = work / "root.qcow2", work / "in.tar", work / "out.raw"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                        str(image_dir / "rootfs.ext4"), str(overlay)], check=True)
        # The guest's own timeout leaves a minute for booting and one for
        # writing results and powering off.
        job = {"cmd": cmd, "timeout_s": int(max(60, timeout_s - 120))}
        if container_disk is not None:
            job["container_image"] = dict(container_info or {}, disk_serial=CONTAINER_DISK_SERIAL)
        write_input_disk(input_disk, checkout, job)
        with open(output_disk, "wb") as f:
            f.truncate(OUTPUT_DISK_BYTES)
        argv = qemu_argv(image_dir, overlay, input_disk, output_disk, run.console, mem_mib, cpus, container_disk)
        (out_dir / "vm" / "qemu-argv.json").write_text(json.dumps(argv, indent=1))
        _boot(run, argv, work, timeout_s, echo_console)
        read_output_disk(output_disk, out_dir)
        status_file = out_dir / "vm" / "status.json"
        if status_file.exists():
            run.status = json.loads(status_file.read_text())
            run.rc = run.status.get("rc")
        if run.rc is None and not run.problem:
            run.problem = "the guest wrote no job status" + (f" ({run.status['error']})" if run.status.get("error") else "")
    finally:
        if keep:
            print(f"vm: kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    (out_dir / "vm" / "host.json").write_text(json.dumps({
        "rc": run.rc, "qemu_rc": run.qemu_rc, "timed_out": run.timed_out, "boot_s": run.boot_s,
        "job_s": run.job_s, "total_s": run.total_s, "qemu_peak_bytes": run.qemu_peak_bytes,
        "qemu_peak_anon_bytes": run.qemu_peak_anon_bytes,
        "guest_mem_mib": mem_mib, "cpus": cpus, "image": run.image, "container_image": container_info,
        "problem": run.problem}, indent=2))
    return run


def _boot(run: VmRun, argv: list[str], work: Path, timeout_s: float, echo_console: bool) -> None:
    """Run QEMU in an arena until it exits or the timeout; fill in the timings."""
    from oomkiller_bench.arena import Arena

    with Arena(f"oomk-vm-{uuid.uuid4().hex[:8]}", QEMU_ARENA_BYTES) as arena:
        job = arena.job("qemu")
        with open(work / "qemu.log", "wb") as qlog:
            started = time.monotonic()
            p = arena.spawn(job, argv, stdin=subprocess.DEVNULL, stdout=qlog, stderr=subprocess.STDOUT)
            seen = 0
            job_started = job_finished = None
            while True:
                try:
                    run.qemu_rc = p.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    pass
                now = time.monotonic()
                run.qemu_peak_anon_bytes = max(run.qemu_peak_anon_bytes, _rss_anon_bytes(p.pid))
                text = _read_from(run.console, seen)
                if text:
                    seen += len(text.encode())
                    if echo_console:
                        sys.stderr.write(text)
                    if job_started is None and MARK_START in text:
                        job_started = now
                    if job_finished is None and MARK_FINISHED in text:
                        job_finished = now
                if run.qemu_rc is not None:
                    break
                if now - started > timeout_s:
                    run.timed_out = True
                    run.problem = f"the guest did not power off within {timeout_s:.0f} s"
                    p.kill()
                    run.qemu_rc = p.wait()
                    break
            run.total_s = time.monotonic() - started
        run.qemu_peak_bytes = _peak_bytes(job.path)
        qemu_log = (work / "qemu.log").read_text(errors="replace").strip()
        if qemu_log:
            (run.out_dir / "vm" / "qemu.log").write_text(qemu_log + "\n")
        if run.qemu_rc not in (0, None) and not run.problem:
            run.problem = f"QEMU exited with status {run.qemu_rc}: {qemu_log[-500:]}"
    if job_started is not None:
        run.boot_s = job_started - started
        if job_finished is not None:
            run.job_s = job_finished - job_started


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def _rss_anon_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _peak_bytes(cgroup: str) -> int:
    for name in ("memory.max_usage_in_bytes", "memory.peak"):
        try:
            with open(os.path.join(cgroup, name)) as f:
                return int(f.read())
        except (FileNotFoundError, ValueError):
            continue
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.vm.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cmd", default=GUEST_TIER_CMD,
                    help="one shell line to run in the guest, in the checkout (default: the guest test tier); "
                         "it finds its output folder in $OOMK_VM_RESULTS (/results)")
    ap.add_argument("--out", default=str(REPO / "build" / "vm"), help="where the guest's /results goes (emptied first)")
    ap.add_argument("--timeout", type=float, default=1500, help="seconds for the whole boot (default 1500)")
    ap.add_argument("--mem", type=int, default=GUEST_MEM_MIB, help=f"guest RAM in MiB (default {GUEST_MEM_MIB})")
    ap.add_argument("--cpus", type=int, default=GUEST_CPUS)
    ap.add_argument("--checkout", default=str(REPO), help="the tree to pass in (default: this checkout)")
    ap.add_argument("--build-only", action="store_true", help="build or find the image, print its folder, and exit")
    ap.add_argument("--rebuild", action="store_true", help="build the image even if it is cached")
    ap.add_argument("--no-container-image", action="store_true",
                    help="attach no container image (the container tests then fail, saying so)")
    ap.add_argument("--rebuild-container", action="store_true", help="build the container image even if it is cached")
    ap.add_argument("--keep", action="store_true", help="keep the overlay and disks (their folder is printed)")
    ap.add_argument("--console", action="store_true", help="copy the guest's console to stderr as it comes")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("vm: needs root (builds the image, makes a cgroup for QEMU)", file=sys.stderr)
        return 2
    image_dir = ensure_image(force=a.rebuild)
    disk = info = None
    if not a.no_container_image:
        disk, info = ensure_container_image(Path(a.checkout).resolve(), force=a.rebuild_container)
        print(f"vm: container image {info['tag']}: {info['image_bytes'] >> 20} MiB ({info['archive_bytes'] >> 20} "
              f"MiB as an OCI archive), built in {info['build_s']} s, saved in {info['save_s']} s, in a store "
              f"({disk}) in {info['store_s']} s", file=sys.stderr)
    if a.build_only:
        print(image_dir)
        return 0
    run = run_vm(a.cmd, Path(a.out), timeout_s=a.timeout, image_dir=image_dir, mem_mib=a.mem, cpus=a.cpus,
                 checkout=Path(a.checkout), keep=a.keep, echo_console=a.console,
                 container_disk=disk, container_info=info)
    print(f"vm: {run.summary()}; results in {run.out_dir}", file=sys.stderr)
    if not run.finished:
        print(run.console_tail(), file=sys.stderr)
        return 125
    return int(run.rc)


if __name__ == "__main__":
    sys.exit(main())
