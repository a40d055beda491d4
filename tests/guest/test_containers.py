"""The oomkiller image in real containers: Debian's podman (crun, the systemd
cgroup driver) on pure cgroup v2, run as an operator would.

The image is the one ``deploy/container/build-image.sh`` builds from the
checkout with nothing but Debian's archive: tests/vm/run.py builds it on the
host (the guest has no network), ``podman save``-s it and ``podman load``-s
it into an image store of its own on a disk (serial ``oomk-img``), which is
mounted here read-only as an additional image store of the guest's podman
(loading the archive here would take 2 to 4 minutes under TCG). Without that
disk these tests fail, saying so: they never skip.

The sidecar: ``deploy/container/sidecar.yaml`` played by ``podman kube
play``, its oomkiller container as written there (arguments, capabilities,
read-only root, the node's cgroup tree read-only, the emptyDir for its
socket), adapted only where a test pod must differ: the image is the loaded
one, the redline is sized for a small pod, the decision records go to the
emptyDir, the app is a quiet container and a hog container (the image's
Python), the pod is not restarted, and the pod's cgroup gets a memory limit
(podman's kube play sets none; Kubernetes sets the sum of the limits).
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from guestlib import CGROUP_ROOT, MIB, kernel_oom_kills, read_keyed, sh, wait_for
from oomkiller_bench.arena import HOG_SOURCE, IDLE_SOURCE

REPO = Path(__file__).resolve().parents[2]
SIDECAR_YAML = REPO / "deploy" / "container" / "sidecar.yaml"
DISK_SERIAL = "oomk-img"
# where the image store's disk is mounted, and podman's storage config
STORE = "/var/lib/oomk-images"
STORAGE_CONF = "/etc/containers/storage.conf"

# The pod: its memory limit (on the pod's cgroup), the sidecar's redline in
# it, what the quiet container holds, and the hog's pace (a chunk every
# pause: the pod fills in seconds under TCG).
POD_LIMIT_BYTES = 192 * MIB
REDLINE = "48M"
REDLINE_BYTES = 48 * MIB
QUIET_BYTES = 24 * MIB
HOG_CHUNK_BYTES = 4 * MIB
HOG_PAUSE_S = 0.05
SOCK = "/run/oomkiller/control.sock"
RECORDS = "/run/oomkiller/decisions.jsonl"
# The hog waits for this file in its own container before it grows: the
# pod's limit is set and the sidecar answering first.
GO_FILE = "/tmp/oomk-go"


def podman(*args: str, check: bool = True, timeout: float = 300):
    return sh("podman", *args, check=check, timeout=timeout)


def _image_disk() -> str | None:
    for d in sorted(Path("/sys/block").glob("vd*")):
        try:
            if (d / "serial").read_text().strip() == DISK_SERIAL:
                return f"/dev/{d.name}"
        except OSError:
            continue
    return None


def _job() -> dict:
    path = os.environ.get("OOMK_VM_JOB", "")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


@pytest.fixture(scope="module")
def image() -> str:
    """The oomkiller image, from the store on its own disk (mounted
    read-only, an additional image store of the guest's podman); its tag."""
    info = _job().get("container_image")
    dev = _image_disk()
    if not info or not dev:
        pytest.fail(f"no container image: the job names {info!r} and the disk with serial {DISK_SERIAL} is "
                    f"{dev!r}; tests/vm/run.py attaches it unless --no-container-image", pytrace=False)
    os.makedirs(STORE, exist_ok=True)
    sh("mount", "-o", "ro", dev, STORE)
    saved = Path(STORAGE_CONF).read_text() if os.path.exists(STORAGE_CONF) else None
    try:
        os.makedirs(os.path.dirname(STORAGE_CONF), exist_ok=True)
        with open(STORAGE_CONF, "w") as f:
            f.write(f'[storage]\ndriver = "overlay"\nrunroot = "/run/containers/storage"\n'
                    f'graphroot = "/var/lib/containers/storage"\n'
                    f'[storage.options]\nadditionalimagestores = ["{STORE}"]\n')
        tag = info["tag"]
        size = int(podman("image", "inspect", tag, "--format", "{{.Size}}").stdout)
        print(f"\ncontainers: {tag}, {size >> 20} MiB ({info['archive_bytes'] >> 20} MiB as an OCI archive), built "
              f"on the host in {info['build_s']} s, saved in {info['save_s']} s, in a store in {info['store_s']} s")
        host = json.loads(podman("info", "--format", "json").stdout)["host"]
        assert (host["cgroupVersion"], host["cgroupManager"]) == ("v2", "systemd"), host
        yield tag
    finally:
        if saved is None:
            os.unlink(STORAGE_CONF)
        else:
            Path(STORAGE_CONF).write_text(saved)
        sh("umount", STORE, check=False)


def sidecar_manifest(tag: str) -> dict:
    """deploy/container/sidecar.yaml, adapted to a test pod (module docstring)."""
    with open(SIDECAR_YAML) as f:
        pod = yaml.safe_load(f)
    spec = pod["spec"]
    (side,) = [c for c in spec["containers"] if c["name"] == "oomkiller"]
    side = copy.deepcopy(side)
    side["image"] = tag
    # Its CPU: the manifest's 100m is a CFS quota of 10 ms in every 100 ms;
    # under TCG, which runs the guest several times slower than the
    # hardware, that left it 2 minutes to start and too slow to beat the
    # kernel to the hog. One CPU here; the memory is as written.
    side["resources"] = {k: dict(v, cpu="1") for k, v in side["resources"].items()}
    args = list(side["args"])
    args[args.index("--redline") + 1] = REDLINE
    side["args"] = args + ["--json-log", RECORDS]
    # (each source starts with a line of code: kube play passes the spec
    # through two YAML libraries, and the second cannot read what the first
    # writes for a string that starts with a newline)
    quiet = {"name": "quiet", "image": tag, "command": ["python3", "-c", IDLE_SOURCE.strip(), str(QUIET_BYTES)]}
    hog_source = (f"import os, time\nwhile not os.path.exists({GO_FILE!r}):\n    time.sleep(0.05)\n"
                  + HOG_SOURCE.strip())
    hog = {"name": "hog", "image": tag,
           "command": ["python3", "-c", hog_source, str(HOG_CHUNK_BYTES), str(HOG_PAUSE_S)]}
    spec["containers"] = [quiet, hog, side]
    spec["restartPolicy"] = "Never"
    return pod


def _cgroup_of(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return CGROUP_ROOT + line.strip()[3:]
    raise AssertionError(f"no v2 cgroup for pid {pid}")


def _populated(cgroup: str) -> bool:
    """Whether the cgroup holds a process; a cgroup removed, even between
    the open and the read of its file (ENODEV), holds none."""
    try:
        return read_keyed(os.path.join(cgroup, "cgroup.events")).get("populated") == 1
    except OSError:
        return False


def _pod_state(pod_cgroup: str, hog_cgroup: str, seen: dict, side: "Container", hog: "Container") -> str:
    """What a failed wait for the kill says: the pod's and the hog's charge
    and events, the hog's state, and the sidecar's last log lines."""
    out = [f"watcher saw: { {k: v for k, v in seen.items() if k != 'peak'} }, peak {seen.get('peak', 0) >> 20} MiB"]
    for cg in (pod_cgroup, hog_cgroup):
        for name in ("memory.current", "memory.events", "memory.pressure", "memory.stat"):
            try:
                with open(os.path.join(cg, name)) as f:
                    text = f.read()
            except OSError as e:
                text = repr(e)
            if name == "memory.stat":
                text = " ".join(ln for ln in text.splitlines()
                                if ln.split(" ")[0] in ("anon", "file", "workingset_refault_file", "pgmajfault"))
            out.append(f"{os.path.basename(cg)}/{name}: {' '.join(text.split())}")
    try:
        out.append(f"hog: {hog.inspect()['State']}")
    except Exception as e:      # the diagnosis must not hide the failure
        out.append(f"hog: {e!r}")
    for what, argv in (("sidecar's last log lines", ("logs", "--tail", "40", side.name)),
                       ("sidecar's last records", ("exec", side.name, "tail", "-n", "5", RECORDS))):
        try:
            p = podman(*argv, check=False, timeout=30)
            out.append(f"{what}:\n" + (p.stdout + p.stderr)[-6000:])
        except Exception as e:
            out.append(f"{what}: {e!r}")
    return "\n".join(out)


def _read_int(path: str) -> int:
    with open(path) as f:
        return int(f.read())


class Container:
    def __init__(self, name: str) -> None:
        self.name = name

    def inspect(self) -> dict:
        (data,) = json.loads(podman("inspect", "--type", "container", self.name).stdout)
        return data

    @property
    def pid(self) -> int:
        return int(self.inspect()["State"]["Pid"])

    def exec(self, *argv: str, check: bool = True):
        return podman("exec", self.name, *argv, check=check, timeout=120)


@pytest.fixture
def sidecar_pod(image, tmp_path_factory):
    pod = sidecar_manifest(image)
    name = pod["metadata"]["name"]
    path = tmp_path_factory.mktemp("pod") / "pod.yaml"
    path.write_text(yaml.safe_dump(pod))
    t0 = time.monotonic()
    podman("kube", "play", "--network", "none", "--start=false", str(path))
    try:
        data = json.loads(podman("pod", "inspect", name).stdout)
        pod_cgroup = os.path.join(CGROUP_ROOT, data.get("CgroupPath", "").lstrip("/"))
        # the pod's cgroup: a systemd slice of podman's, given the limit
        # Kubernetes would give a pod (the sum of its containers' limits)
        assert pod_cgroup.endswith(".slice"), data
        sh("systemctl", "set-property", "--runtime", os.path.basename(pod_cgroup), f"MemoryMax={POD_LIMIT_BYTES}",
           "MemorySwapMax=0")
        podman("pod", "start", name)
        start_s = time.monotonic() - t0
        assert _read_int(os.path.join(pod_cgroup, "memory.max")) == POD_LIMIT_BYTES
        containers = {c: Container(f"{name}-{c}") for c in ("quiet", "hog", "oomkiller")}
        side = containers["oomkiller"]

        def answering():
            return side.exec("oomkiller", "info", "--control", SOCK, check=False).returncode == 0
        wait_for(answering, 120, "the sidecar to answer on its control socket", 0.5)
        print(f"containers: the sidecar pod played, started and answering in {time.monotonic() - t0:.1f} s "
              f"(played and started in {start_s:.1f} s)")
        yield pod_cgroup, containers
    finally:
        logs = podman("logs", f"{name}-oomkiller", check=False)
        results = os.environ.get("OOMK_VM_RESULTS")
        if results:
            with open(os.path.join(results, "sidecar-pod.log"), "w") as f:
                f.write(logs.stdout + logs.stderr)
        podman("pod", "rm", "--force", name, check=False)


def test_sidecar_pod_kills_the_hogs_container_and_the_quiet_one_lives(sidecar_pod):
    pod_cgroup, c = sidecar_pod
    side, quiet, hog = c["oomkiller"], c["quiet"], c["hog"]
    # The sidecar: root with only the manifest's capabilities, in its pod's
    # cgroup, not privileged; no eBPF (no CAP_BPF), and info says so.
    info = json.loads(side.exec("oomkiller", "info", "--control", SOCK, "--json").stdout)
    assert info["domain_path"] == pod_cgroup, info
    # the redline is of the pod's limit (the domain's total)
    assert info["redline_bytes"] == REDLINE_BYTES, info["redline"]
    src = info["sources"]
    assert src["ebpf"]["state"] == "off" and src["prearm"]["state"] == "off", src
    assert src["psi"]["state"] == "live" and src["memcg"]["state"] == "live" and src["timer"]["state"] == "live", src
    side_state = side.inspect()
    assert not side_state["HostConfig"]["Privileged"]
    caps = sorted(x.upper().removeprefix("CAP_") for x in side_state["EffectiveCaps"] or [])
    assert caps == ["IPC_LOCK", "KILL", "SYS_RESOURCE"], caps
    quiet_pid, hog_pid = quiet.pid, hog.pid
    # the hog's container's cgroup: its scope (crun puts the processes in a
    # "container" subgroup of it), right under the pod's
    hog_cgroup = _cgroup_of(hog_pid)
    if os.path.basename(hog_cgroup) == "container":
        hog_cgroup = os.path.dirname(hog_cgroup)
    assert os.path.dirname(hog_cgroup) == pod_cgroup and _populated(hog_cgroup), hog_cgroup
    ooms_before = kernel_oom_kills()
    pod_events_before = read_keyed(os.path.join(pod_cgroup, "memory.events"))

    # Watch the pod from outside: when its charge crosses the limit minus the
    # redline (the onset: the sidecar, which counts what reclaim can drop as
    # free, sees it there or later), and when the hog's container is empty.
    seen: dict[str, float] = {}
    stop = threading.Event()

    def watch():
        line = POD_LIMIT_BYTES - REDLINE_BYTES
        while not stop.is_set():
            now = time.monotonic()
            try:
                used = _read_int(os.path.join(pod_cgroup, "memory.current"))
            except (OSError, ValueError):
                used = 0
            seen["peak"] = max(seen.get("peak", 0), used)
            if "onset" not in seen and used >= line:
                seen["onset"] = now
            if "empty" not in seen and not _populated(hog_cgroup):
                seen["empty"] = now
                return
            time.sleep(0.005)
    def watching():
        try:
            watch()
        except BaseException as e:      # said by the wait below, not lost in the thread
            seen["error"] = e
    watcher = threading.Thread(target=watching, daemon=True)
    watcher.start()
    try:
        t_go = time.monotonic()
        hog.exec("touch", GO_FILE)
        try:
            wait_for(lambda: "empty" in seen or "error" in seen, 120, "the hog's container to be empty", 0.1)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{_pod_state(pod_cgroup, hog_cgroup, seen, side, hog)}") from None
        assert "error" not in seen, f"the watcher failed: {seen['error']!r}"
    finally:
        stop.set()
        watcher.join(5)
    # the hog's container exited with the kill: SIGKILL, not the kernel's OOM
    state = wait_for(lambda: (lambda s: s if s["Status"] == "exited" else None)(hog.inspect()["State"]), 30,
                     "podman to see the hog's container exit", 0.2)
    assert state["ExitCode"] == 128 + 9 and not state["OOMKilled"], state
    assert quiet.inspect()["State"]["Status"] == "running" and quiet.pid == quiet_pid, "the quiet container died"
    assert side.inspect()["State"]["Status"] == "running", "the sidecar died"
    assert kernel_oom_kills() == ooms_before, "the kernel's OOM killer acted"
    events = read_keyed(os.path.join(pod_cgroup, "memory.events"))
    assert events.get("oom_kill", 0) == pod_events_before.get("oom_kill", 0), events
    # the sidecar's record: the hog's container, by signals (the tree is
    # read-only: no cgroup.kill), emptied
    recs = wait_for(lambda: [r for r in map(json.loads, side.exec("cat", RECORDS).stdout.splitlines())
                             if r.get("event") == "oom_decision" and r.get("result") == "killed"], 30,
                    "the sidecar's kill record", 0.5)
    (rec,) = recs
    assert rec["victim"]["job"].rstrip("/").endswith(os.path.basename(hog_cgroup)), rec["victim"]
    assert rec["attempts"][0]["method"] == "signal" and rec["attempts"][0]["emptied"], rec["attempts"]
    onset = seen.get("onset")
    print(f"containers: sidecar pod ({POD_LIMIT_BYTES >> 20} MiB limit, redline {REDLINE}): hog told to grow "
          f"at 0.000 s, pod past limit minus redline at "
          f"{'%.3f s' % (onset - t_go) if onset else 'never seen'}, hog's container empty at "
          f"{seen['empty'] - t_go:.3f} s; onset to empty "
          f"{'%.3f s' % (seen['empty'] - onset) if onset else 'n/a'}; pod peak {seen['peak'] >> 20} MiB; "
          f"the record: {rec['victim']['job'][:20]}…, method {rec['attempts'][0]['method']}")
    assert onset is not None, "the pod never crossed its limit minus the redline before the kill"


# -- the node DaemonSet ----------------------------------------------------------
#
# deploy/container/daemonset.yaml's container, run by `podman run` with what
# its spec asks of a node: the host's PID namespace, privileged, its mounts
# (the host's cgroup tree read-write, tracefs, the node's /lib/modules and
# /usr/src read-only, /run/oomkiller, the runtimes' bundle folders read-only),
# its memory and CPU limits and its arguments (the control socket and the
# records in /run/oomkiller, read from the guest). Beside it, pods laid out as
# the kubelet lays them, with either cgroup driver, one of each QoS class,
# each a container process holding memory with the oom_score_adj the kubelet
# gives it; the BestEffort pod's container is then a hog.

DAEMONSET_YAML = REPO / "deploy" / "container" / "daemonset.yaml"
NODE_NAME = "oomkt-node"
# (not the guest tier's /run/oomkiller/decisions.jsonl: the node's
# /run/oomkiller is the same folder, and what is left there is removed)
NODE_RECORDS = "/run/oomkiller/node-decisions.jsonl"
# the BestEffort hog's pace: a chunk every this many seconds
NODE_HOG_PAUSE_S = 0.02
# The kubelet's oom_score_adj: BestEffort 1000, Guaranteed -997, Burstable
# 1000 - 1000 * request / node memory, within [2, 999].
QOS = {
    # class: (what the container holds, its request, its limit; the pod's limit)
    "BestEffort": (16 * MIB, 0, 0),
    "Burstable": (48 * MIB, 24 * MIB, 0),
    "Guaranteed": (80 * MIB, 96 * MIB, 96 * MIB),
}


def _quantity(q: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for u, m in units.items():
        if q.endswith(u):
            return int(q[:-len(u)]) * m
    return int(q)


def daemonset_run_argv(tag: str, created: list[str] | None = None) -> list[str]:
    """`podman run` of the DaemonSet's container, from its spec; the host
    folders it makes (DirectoryOrCreate) are added to ``created``."""
    with open(DAEMONSET_YAML) as f:
        ds = yaml.safe_load(f)
    spec = ds["spec"]["template"]["spec"]
    (ctr,) = spec["containers"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    argv = ["run", "--detach", "--name", NODE_NAME, "--network", "none", "--restart", "no"]
    if spec.get("hostPID"):
        argv += ["--pid", "host"]
    if ctr.get("securityContext", {}).get("privileged"):
        argv.append("--privileged")
    limits = ctr["resources"]["limits"]
    cpu = limits["cpu"]
    argv += ["--memory", str(_quantity(limits["memory"])),
             "--cpus", str(int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu))]
    for m in ctr["volumeMounts"]:
        host = volumes[m["name"]]["hostPath"]
        if host.get("type") == "DirectoryOrCreate" and not os.path.exists(host["path"]):
            os.makedirs(host["path"])
            if created is not None:
                created.append(host["path"])
        argv += ["--volume", f"{host['path']}:{m['mountPath']}" + (":ro" if m.get("readOnly") else "")]
    return argv + [tag] + list(ctr["args"]) + ["--json-log", NODE_RECORDS]


def kubelet_oom_score_adj(qos: str, request: int, node_bytes: int) -> int:
    if qos == "BestEffort":
        return 1000
    if qos == "Guaranteed":
        return -997
    return min(999, max(2, 1000 - 1000 * request // node_bytes))


class KubePod:
    """A pod as the kubelet and containerd lay it out: its cgroup (systemd:
    kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid>.slice, the
    container a cri-containerd-<id>.scope in it; cgroupfs:
    kubepods/<qos>/pod<uid>/<id>; Guaranteed pods straight under kubepods),
    one container process holding memory."""

    def __init__(self, driver: str, qos: str, node_bytes: int) -> None:
        import uuid
        self.driver, self.qos = driver, qos
        self.uid = str(uuid.uuid4())
        self.cid = uuid.uuid4().hex + uuid.uuid4().hex
        hold, self.request, self.limit = QOS[qos]
        q = qos.lower()
        if driver == "systemd":
            slice_ = "kubepods" + ("" if qos == "Guaranteed" else f"-{q}") + f"-pod{self.uid.replace('-', '_')}.slice"
            parents = ["kubepods.slice"] + ([] if qos == "Guaranteed" else [f"kubepods-{q}.slice"])
            self.path = os.path.join(CGROUP_ROOT, *parents, slice_)
            self.proc = subprocess.Popen(
                ["systemd-run", "--quiet", "--scope", f"--unit=cri-containerd-{self.cid}", f"--slice={slice_}",
                 "--", sys.executable, "-c", IDLE_SOURCE, str(hold)], stdout=subprocess.PIPE, text=True)
            self.slice = slice_
        else:
            parts = ["kubepods"] + ([] if qos == "Guaranteed" else [q]) + [f"pod{self.uid}"]
            self.path = os.path.join(CGROUP_ROOT, *parts)
            for i in range(len(parts)):
                d = os.path.join(CGROUP_ROOT, *parts[:i + 1])
                os.makedirs(d, exist_ok=True)
                with open(os.path.join(d, "cgroup.subtree_control"), "w") as f:
                    f.write("+memory")
            leaf = os.path.join(self.path, self.cid)
            os.mkdir(leaf)

            def enter():
                with open(os.path.join(leaf, "cgroup.procs"), "w") as f:
                    f.write("0")
            self.proc = subprocess.Popen([sys.executable, "-c", IDLE_SOURCE, str(hold)], preexec_fn=enter,
                                         stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready", f"the {qos} pod's container did not start"
        if self.limit:
            if driver == "systemd":
                sh("systemctl", "set-property", "--runtime", self.slice, f"MemoryMax={self.limit}")
            else:
                with open(os.path.join(self.path, "memory.max"), "w") as f:
                    f.write(str(self.limit))
        with open(f"/proc/{self.proc.pid}/oom_score_adj", "w") as f:
            f.write(str(kubelet_oom_score_adj(qos, self.request, node_bytes)))

    def grow(self) -> None:
        """The container becomes a hog: a second process in it that grows until killed."""
        leaf = (os.path.join(self.path, f"cri-containerd-{self.cid}.scope") if self.driver == "systemd"
                else os.path.join(self.path, self.cid))

        def enter():
            with open(os.path.join(leaf, "cgroup.procs"), "w") as f:
                f.write("0")
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("1000")
        self.hog = subprocess.Popen([sys.executable, "-c", HOG_SOURCE, str(HOG_CHUNK_BYTES), str(NODE_HOG_PAUSE_S)],
                                    preexec_fn=enter, stdout=subprocess.PIPE, text=True)
        assert self.hog.stdout.readline().strip() == "ready"

    def close(self) -> None:
        for p in (getattr(self, "hog", None), self.proc):
            if p is not None and p.poll() is None:
                p.kill()
            if p is not None:
                p.wait(30)
        if self.driver == "systemd":
            sh("systemctl", "stop", self.slice, check=False)
        else:
            for d in (os.path.join(self.path, self.cid), self.path):
                wait_for(lambda: _rmdir(d), 10, f"{d} to be removed", 0.1)
            # the class and kubepods folders, once no pod is left in them
            for d in (os.path.dirname(self.path), os.path.join(CGROUP_ROOT, "kubepods")):
                if d != CGROUP_ROOT:
                    _rmdir(d)


def _rmdir(d: str) -> bool:
    try:
        os.rmdir(d)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True


def _mem_total() -> int:
    with open("/proc/meminfo") as f:
        return int(f.readline().split()[1]) * 1024


@pytest.fixture(scope="module")
def node_daemon(image):
    t0 = time.monotonic()
    created: list[str] = []
    argv = daemonset_run_argv(image, created)
    podman(*argv)
    control = argv[argv.index("--control") + 1]
    try:
        def answering():
            state = Container(NODE_NAME).inspect()["State"]
            assert state["Status"] == "running", f"the node daemon exited: {podman('logs', NODE_NAME).stderr[-3000:]}"
            return podman("exec", NODE_NAME, "oomkiller", "info", "--control", control, check=False).returncode == 0
        wait_for(answering, 300, "the node daemon to answer on its control socket", 1.0)
        print(f"\ncontainers: the DaemonSet's container up and answering in {time.monotonic() - t0:.1f} s")
        yield Container(NODE_NAME), control
    finally:
        logs = podman("logs", NODE_NAME, check=False)
        results = os.environ.get("OOMK_VM_RESULTS")
        if results:
            with open(os.path.join(results, "node-daemon.log"), "w") as f:
                f.write(logs.stdout + logs.stderr)
        podman("rm", "--force", NODE_NAME, check=False)
        for path in (NODE_RECORDS, control):
            if os.path.exists(path):
                os.unlink(path)
        for path in reversed(created):
            shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("driver", ["systemd", "cgroupfs"])
def test_daemonset_kills_the_besteffort_pod_first_and_ranks_as_the_kubelet(node_daemon, driver):
    node, control = node_daemon
    info = json.loads(node.exec("oomkiller", "info", "--control", control, "--json").stdout)
    assert info["domain_path"] == CGROUP_ROOT, info["domain_path"]
    assert node.inspect()["HostConfig"]["Privileged"]
    node_bytes = _mem_total()
    pods: dict[str, KubePod] = {}
    try:
        for qos in ("Guaranteed", "Burstable", "BestEffort"):
            pods[qos] = KubePod(driver, qos, node_bytes)
        # the kubelet's order, though the BestEffort pod holds the least
        ranking = json.loads(node.exec("oomkiller", "rank", "--control", control, "--json").stdout)
        order = []
        for c in ranking:
            for qos, p in pods.items():
                if c["job"].rstrip("/").endswith(os.path.relpath(p.path, CGROUP_ROOT)):
                    order.append((qos, c["class"], c.get("labels", {})))
        assert [o[0] for o in order] == ["BestEffort", "Burstable", "Guaranteed"], ranking
        for qos, p in pods.items():
            (labels,) = [o[2] for o in order if o[0] == qos]
            assert p.uid in json.dumps(labels), (qos, labels)
        print(f"containers: DaemonSet, {driver} driver: rank has "
              + ", ".join(f"{o[0]} ({o[1]})" for o in order))
        ooms_before = kernel_oom_kills()
        kills_before = len(_node_kills(node))
        t0 = time.monotonic()
        pods["BestEffort"].grow()
        wait_for(lambda: not _populated(pods["BestEffort"].path), 180, "the BestEffort pod to be empty", 0.05)
        empty_s = time.monotonic() - t0
        recs = wait_for(lambda: _node_kills(node)[kills_before:], 30, "the node daemon's kill record", 0.5)
        victims = [r["victim"]["job"] for r in recs]
        assert victims and victims[0].rstrip("/").endswith(os.path.relpath(pods["BestEffort"].path, CGROUP_ROOT)), \
            victims
        for qos in ("Burstable", "Guaranteed"):
            assert pods[qos].proc.poll() is None, f"the {qos} pod's container was killed"
        assert kernel_oom_kills() == ooms_before, "the kernel's OOM killer acted"
        print(f"containers: DaemonSet, {driver} driver: the BestEffort hog's pod empty {empty_s:.2f} s after it "
              f"began to grow, by {recs[0]['attempts'][0]['method']}; kills {victims}")
    finally:
        for p in pods.values():
            p.close()


def _node_kills(node: Container) -> list[dict]:
    out = node.exec("cat", NODE_RECORDS, check=False).stdout
    return [r for r in map(json.loads, out.splitlines())
            if r.get("event") == "oom_decision" and r.get("result") == "killed"]
