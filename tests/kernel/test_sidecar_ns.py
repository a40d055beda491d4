"""The sidecar as a container runtime runs it: in a cgroup, PID and mount
namespace of the pod's own, with the fewest capabilities it needs.

The pod is an arena. A process put in the arena's cgroups unshares its
cgroup, PID and mount namespaces, so the arena is the top of every cgroup
tree it sees, as a runtime roots a pod's namespace at the pod's cgroup; it
mounts the cgroup trees afresh as a runtime does (the namespace's view at
``/sys/fs/cgroup``) and becomes the pod's PID 1 in a container cgroup of its
own (``pause``). Beside it: a quiet container and a hog container, run as
another user, and the sidecar, ``oomkiller run --domain parent`` in a
``sidecar`` cgroup, as root with only the capabilities the deploy docs name
(no CAP_BPF, CAP_PERFMON or CAP_SYS_ADMIN: no eBPF, and ``info`` says so).
A process of the test's outside the arena must not be touched.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid

from pathlib import Path

import pytest

from kproc import DaemonProc, wait_for

from oomkiller_bench.arena import HOG_SOURCE, IDLE_SOURCE, Arena, ArenaJob

if not shutil.which("unshare") or not shutil.which("setpriv"):
    pytest.skip("needs util-linux's unshare and setpriv", allow_module_level=True)

# The sidecar's capabilities and sources, as deploy/container/sidecar.yaml has them.
SIDECAR_CAPS = ("kill", "sys_resource", "ipc_lock")
SIDECAR_SOURCES = "psi,memcg,timer"
MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "container" / "sidecar.yaml"
APP_UID = 65534

# PID 1 of the pod. argv: "v1" (hybrid) or "v2"; the containers' view of
# the cgroups: "rw" or "ro" (the pod's namespace view, mounted so), or
# "host-ro" (the host's trees, read-only, and the sidecar in a cgroup
# namespace that starts at its own cgroup, as in Kubernetes); the runtime's
# folder; the control socket, the records file, the daemon's stderr file,
# then the daemon's arguments.
# Lines on stdin: "hog" starts the hog; end of input ends the pod. It says
# on stdout what it did, one word a line.
POD_INIT = r"""
import os, subprocess, sys
hybrid, view, runtime = sys.argv[1] == "v1", sys.argv[2], sys.argv[3]
sock, records, err_path, args = sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7:]

def mount(*a):
    subprocess.run(["mount", *a], check=True)

def cgroup_trees(at, opt):
    # as a runtime mounts them in a container: the namespace's view
    if not hybrid:
        mount("-t", "cgroup2", "-o", opt, "cgroup2", at)
        return [at]
    mount("-t", "tmpfs", "-o", "mode=755", "cgroup", at)
    os.mkdir(at + "/memory"); os.mkdir(at + "/unified")
    mount("-t", "cgroup", "-o", "memory," + opt, "cgroup", at + "/memory")
    mount("-t", "cgroup2", "-o", opt, "cgroup2", at + "/unified")
    if opt == "ro":
        mount("-o", "remount,ro", at)
    return [at + "/memory", at + "/unified"]

# the runtime's own handle on the pod's cgroups, which it puts containers in
trees = cgroup_trees(runtime, "rw")
# the containers' view
if view == "host-ro":
    for t in (["/sys/fs/cgroup/memory", "/sys/fs/cgroup/unified"] if hybrid else ["/sys/fs/cgroup"]):
        mount("-o", "remount,bind,ro", t)
else:
    cgroup_trees("/sys/fs/cgroup", view)

def enter(name):
    for t in trees:
        with open(os.path.join(t, name, "cgroup.procs"), "w") as f:
            f.write("0")

def say(word):
    sys.stdout.write(word + "\n"); sys.stdout.flush()

def app(name, source, *a):
    def pre():
        enter(name)
    return subprocess.Popen(["setpriv", "--reuid", str(UID), "--regid", str(UID), "--clear-groups",
                             sys.executable, "-c", source, *a],
                            preexec_fn=pre, stdout=subprocess.PIPE, text=True)

UID = int(os.environ["POD_APP_UID"])
enter("pause")
with open("/proc/self/cgroup") as f:
    say("cgroup " + " ".join(l.strip() for l in f if ":memory:" in l or l.startswith("0::")))
quiet = app("quiet", IDLE, str(32 << 20))
assert quiet.stdout.readline().strip() == "ready"
say("quiet")
err = open(err_path, "w")
caps = os.environ["POD_SIDECAR_CAPS"]
daemon = subprocess.Popen(
    (["unshare", "--cgroup"] if view == "host-ro" else []) + ["setpriv", "--bounding-set", "-all," + ",".join("+" + c for c in caps.split(",")),
     "--inh-caps", "-all", "--no-new-privs",
     sys.executable, "-m", "oomkiller", "run", "--domain", "parent", "--control", sock,
     "--json-log", records, *args],
    preexec_fn=lambda: enter("sidecar"), stdout=subprocess.DEVNULL, stderr=err)
say("sidecar")
hog = None
for line in sys.stdin:
    if line.strip() == "hog" and hog is None:
        hog = app("hog", HOG, str(8 << 20), "0.05")
        assert hog.stdout.readline().strip() == "ready"
        say("hog")
        say("hog-exit %d" % hog.wait())
daemon.terminate()
say("sidecar-exit %d" % daemon.wait())
"""


def _pod_init() -> str:
    return f"IDLE = {IDLE_SOURCE!r}\nHOG = {HOG_SOURCE!r}\n" + POD_INIT


@pytest.fixture
def pod(tmp_path):
    """The arena as a pod's cgroup, with its container cgroups; a neighbour
    arena beside it, outside the pod, with a process that must live."""
    tag = uuid.uuid4().hex[:8]
    with Arena(f"oomk-pod-{tag}", 256 << 20) as a, Arena(f"oomk-out-{tag}", 64 << 20) as out:
        jobs = {n: a.job(n) for n in ("pause", "quiet", "hog", "sidecar")}
        neighbour = out.spawn_idle(out.job("neighbour"), 8 << 20)
        yield a, jobs, neighbour, tmp_path


def _run_pod(a: Arena, tmp_path, mount: str, *daemon_args: str) -> subprocess.Popen:
    """The pod's PID 1 in namespaces of its own, its cgroups the arena's."""
    top = ArenaJob("", a.path, a.v2_path)
    if not a.layout.memory_v1:
        # No process may sit in a v2 cgroup that gives its children a
        # controller: the pod's PID 1 moves to 'pause' first, then the
        # controller comes back (below).
        with open(os.path.join(a.path, "cgroup.subtree_control"), "w") as f:
            f.write("-memory")
    (tmp_path / "runtime").mkdir()
    env = dict(os.environ, POD_APP_UID=str(APP_UID), POD_SIDECAR_CAPS=",".join(SIDECAR_CAPS))
    p = a.spawn(top, ["unshare", "--cgroup", "--pid", "--mount", "--fork", "--mount-proc", "--kill-child",
                      sys.executable, "-c", _pod_init(), "v1" if a.layout.memory_v1 else "v2", mount,
                      str(tmp_path / "runtime"),
                      str(tmp_path / "oomkiller.sock"), str(tmp_path / "decisions.jsonl"),
                      str(tmp_path / "daemon.err"), *daemon_args],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    line = p.stdout.readline().split()
    assert line[:1] == ["cgroup"], f"the pod did not start: {line}"
    if not a.layout.memory_v1:
        with open(os.path.join(a.path, "cgroup.subtree_control"), "w") as f:
            f.write("+memory")
    # the pod sees itself at the top of its trees, in its own container cgroup
    assert len(line) == (3 if a.layout.memory_v1 else 2) and all(x.endswith(":/pause") for x in line[1:]), line
    assert p.stdout.readline().strip() == "quiet"
    assert p.stdout.readline().strip() == "sidecar"
    return p


class _Sidecar(DaemonProc):
    """The control side of the daemon the pod started (not our child)."""

    def __init__(self, tmp_path) -> None:       # the pod started it: nothing to start here
        self.sock = str(tmp_path / "oomkiller.sock")
        self.json_path = tmp_path / "decisions.jsonl"
        self.err_path = tmp_path / "daemon.err"
        self.err = open(os.devnull)
        self.err.close()        # stderr() reads err_path, which the pod writes


@pytest.mark.parametrize("mount", ["rw", "ro", "host-ro"])
def test_sidecar_in_its_pods_namespaces_kills_the_hogs_container_only(pod, mount):
    # "ro": the cgroup trees read-only, as a runtime mounts them in a
    # container that is not privileged; no cgroup.kill then, signals only.
    # "host-ro": as in Kubernetes, where each container's cgroup namespace
    # starts at its own cgroup: the sidecar sees its pod only in the host's
    # tree, mounted read-only, and finds its own cgroup there by its pid.
    a, jobs, neighbour, tmp_path = pod
    p = _run_pod(a, tmp_path, mount, "--redline", "64M", "--sleep-ms", "100", "--sources", SIDECAR_SOURCES)
    try:
        quiet = _procs(jobs["quiet"])
        assert len(quiet) == 1
        d = _Sidecar(tmp_path)
        try:
            wait_for(lambda: os.path.exists(d.sock) or p.poll() is not None or "error" in d.stderr(), 30,
                     "the sidecar's control socket")
        except AssertionError as e:
            raise AssertionError(f"{e}: {d.stderr()}") from None
        # root in the pod, with only the capabilities asked for
        (daemon_pid,) = _procs(jobs["sidecar"])
        assert _caps(daemon_pid) == _caps(os.getpid(), SIDECAR_CAPS)
        info_text = _ctl(d, "info")
        info = json.loads(_ctl(d, "info", "--json"))
        # its domain is the pod: the top of its namespace, whose limit is the total
        top = "/" if mount != "host-ro" else "/" + os.path.relpath(a.path, a.layout.memory_root)
        assert f"  domain: {top} (/sys/fs/cgroup/" in info_text, info_text
        src = info["sources"]
        # no eBPF (not asked for: no CAP_BPF), and info says what it runs on
        assert src["ebpf"] == src["prearm"] == {"state": "off", "why": "not in sources"}
        assert "    ebpf: off (why=not in sources)" in info_text, info_text
        assert src["psi"]["state"] == "live" and src["timer"]["state"] == "live"
        if mount == "rw" or not a.layout.memory_v1:     # v2's memory.events is read only
            assert src["memcg"]["state"] == "live"
        else:   # v1 thresholds are set by a write to cgroup.event_control
            assert src["memcg"]["state"] == "unavailable"
        # the hog grows in its own container until the sidecar kills it
        p.stdin.write("hog\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "hog"
        line = p.stdout.readline().strip()
        assert line == "hog-exit -9", f"{line}: {d.stderr()}"
        wait_for(lambda: [r for r in d.records() if r.get("result") == "killed"], 10, "the kill's record")
        (rec,) = [r for r in d.records() if r.get("result") == "killed"]
        assert rec["victim"]["job"] == "hog" and rec["attempts"][0]["emptied"], rec
        assert rec["attempts"][0]["method"] == ("cgroup.kill" if mount == "rw" else "signal"), rec
        ranked = {c["job"]: c["killable"] for c in rec["ranking"]}
        # the pod's PID 1 and the sidecar itself are never candidates for a kill
        assert ranked == {"hog": True, "quiet": True, "pause": False, "sidecar": False}, ranked
        assert _procs(jobs["hog"]) == set(), "the hog's container is not empty"
        assert _procs(jobs["quiet"]) == quiet, "the quiet container lost its process"
        assert neighbour.poll() is None, "a process outside the pod was killed"
        assert a.kernel_oom_kills() == 0, "the kernel's OOM killer acted first"
    finally:
        p.stdin.close()
        tail = p.stdout.read()
        p.wait(timeout=30)
    assert "sidecar-exit 0" in tail, tail


def _ctl(d: DaemonProc, *args: str) -> str:
    r = d.ctl(*args)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _procs(job: ArenaJob) -> set[int]:
    with open(os.path.join(job.path, "cgroup.procs")) as f:
        return {int(x) for x in f.read().split()}


CAP_BITS = {"kill": 5, "ipc_lock": 14, "sys_resource": 24}


def _caps(pid: int, names: tuple[str, ...] = ()) -> tuple[int, int]:
    """(effective, bounding) capability masks of a process, or those of
    ``names`` among them."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":\t", 1) for line in f if line.startswith("Cap"))
    eff, bnd = int(fields["CapEff"], 16), int(fields["CapBnd"], 16)
    if names:
        want = sum(1 << CAP_BITS[n] for n in names)
        eff, bnd = eff & want, bnd & want
    return eff, bnd


def test_the_manifest_asks_for_what_the_test_gives():
    text = MANIFEST.read_text()
    added = re.search(r'add: \[([^]]*)\]', text).group(1)
    assert sorted(c.strip(' "').lower() for c in added.split(",")) == sorted(SIDECAR_CAPS)
    assert f'"--sources", "{SIDECAR_SOURCES}"' in text and '"--domain", "parent"' in text
    assert "privileged" not in text.replace("not privileged", "").replace("Not privileged", "")
