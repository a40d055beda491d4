"""What is a job, on fixture trees shaped like the hosts people run: a
systemd server, a systemd desktop with two users logged in, a container
host (Kubernetes with either cgroup driver, Docker, LXC), and hosts without
systemd (cgroup v2 and v1). Every process has its own size, so an order that
comes out right by accident is unlikely."""
from __future__ import annotations

import pytest

from oomkiller.cgroupfs import MAX_USER_CGROUPS, Cgroupfs
from oomkiller.core import jobrule
from oomkiller.core.jobrule import Verdict
from oomkiller.core.rank import Policy, rank
from oomkiller.procfs import Procfs

from trees import CgroupTree

DAEMON_PID = 20

SERVER = {
    "init.scope": {1: 3},
    "system.slice/sshd.service": {10: 7},
    "system.slice/postgresql.service": {11: 900},
    "system.slice/postgresql.service/worker": {31: 50},
    "system.slice/nginx.service": {12: 40},
    "system.slice/oomkiller.service": {DAEMON_PID: 30},
    "system.slice/system-getty.slice/getty@tty1.service": {14: 2},
    "system.slice/dbus.socket": {},
    "user.slice/user-0.slice/session-4.scope": {15: 600},
    "user.slice/user-0.slice/user@0.service/init.scope": {16: 9},
}

DESKTOP = {
    "init.scope": {1: 4},
    "system.slice/NetworkManager.service": {40: 21},
    "system.slice/oomkiller.service": {DAEMON_PID: 31},
    "system.slice/gdm.service": {41: 33},
    "user.slice/user-1000.slice/session-2.scope": {50: 13},
    "user.slice/user-1000.slice/user@1000.service/init.scope": {51: 11},
    "user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-firefox-5150.scope": {52: 3000, 53: 1500},
    "user.slice/user-1000.slice/user@1000.service/app.slice/app-org.gnome.Terminal.slice/"
    "vte-spawn-0a1b.scope": {54: 17},
    "user.slice/user-1000.slice/user@1000.service/app.slice/app-org.gnome.Terminal.slice/"
    "vte-spawn-2c3d.scope": {55: 700},
    "user.slice/user-1000.slice/user@1000.service/app.slice/app-org.gnome.Terminal.slice/"
    "vte-spawn-2c3d.scope/inner": {56: 300},
    "user.slice/user-1000.slice/user@1000.service/session.slice/org.gnome.Shell@wayland.service": {57: 400},
    "user.slice/user-1000.slice/user@1000.service/session.slice/pipewire.service": {58: 19},
    "user.slice/user-1000.slice/user@1000.service/background.slice/tracker-miner-fs-3.service": {59: 60},
    "user.slice/user-1001.slice/session-7.scope": {70: 23},
    "user.slice/user-1001.slice/user@1001.service/init.scope": {71: 12},
    "user.slice/user-1001.slice/user@1001.service/app.slice/app-code-77.scope": {72: 1100},
    "user.slice/user-1001.slice/user@1001.service/app.slice/dbus.service": {73: 8},
}

CONTAINER_HOST = {
    "init.scope": {1: 5},
    "system.slice/kubelet.service": {80: 120},
    "system.slice/containerd.service": {81: 90},
    "system.slice/docker-1f2e3d.scope": {82: 250},
    "kubepods.slice/kubepods-pod11aa_22bb.slice/cri-containerd-a1.scope": {83: 800},
    "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod33cc_44dd.slice/cri-containerd-b1.scope":
        {84: 350},
    "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod33cc_44dd.slice/cri-containerd-b2.scope":
        {85: 45},
    "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod55ee_66ff.slice/cri-containerd-c1.scope":
        {86: 70},
    # the cgroupfs driver, and Docker's cgroupfs layout
    "kubepods/burstable/pod0b1c2d3e-aaaa-bbbb-cccc-123456789abc/0123abcd": {87: 510},
    "kubepods/pod9f8e7d6c-dddd-eeee-ffff-cba987654321/4567cdef": {88: 95},
    "docker/7a6b5c4d": {89: 130},
    "lxc.payload.web/init.scope": {90: 6},
    "lxc.payload.web/system.slice/nginx.service": {91: 66},
    "lxc.monitor.web": {92: 1},
}

NO_SYSTEMD = {
    "sshd": {100: 14},
    "apps/web": {101: 220},
    "apps/db": {102: 480},
    "apps/db/worker": {103: 60},
    "apps/empty": {},
    "batch/1": {104: 75},
    "batch/2": {105: 85},
}


def build(tmp_path, proc_tree, shape: dict, v2: bool = True) -> Cgroupfs:
    tree = CgroupTree(tmp_path / "cgroup", v2=v2)
    for rel, procs in shape.items():
        tree.cgroup(rel, tuple(procs))
        for pid, mib in procs.items():
            proc_tree.proc(pid, f"p{pid}", anon_kb=mib * 1024, shmem_kb=pid, swap_kb=0,
                           cgroup=f"4:memory:/{rel}\n0::/{rel}\n" if not v2 else f"0::/{rel}\n")
    return Cgroupfs(str(tree.root), Procfs(str(proc_tree.root)))


def walk(fs: Cgroupfs, jobs=("auto",), policy=Policy(self_pid=DAEMON_PID)):
    keep = fs.keep_out((1, DAEMON_PID))
    return rank(fs.jobs(fs.resolve("host"), jobs, keep), policy, 64 << 30)


def table(ranking):
    return [(c.job.name, c.job.rule, c.importance.name.lower(), c.killable) for c in ranking.candidates]


def test_server_services_and_sessions_are_jobs_slices_never(tmp_path, proc_tree):
    assert table(walk(build(tmp_path, proc_tree, SERVER))) == [
        ("system.slice/postgresql.service", "systemd unit", "normal", True),
        ("user.slice/user-0.slice/session-4.scope", "systemd unit", "normal", True),
        ("system.slice/nginx.service", "systemd unit", "normal", True),
        ("user.slice/user-0.slice/user@0.service/init.scope", "systemd unit", "normal", True),
        ("system.slice/sshd.service", "systemd unit", "normal", True),
        ("system.slice/system-getty.slice/getty@tty1.service", "systemd unit", "normal", True),
        ("system.slice/dbus.socket", "systemd unit", "normal", False),
        ("system.slice/oomkiller.service", "systemd unit", "protect", False),
        ("init.scope", "systemd unit", "protect", False),
    ]


def test_desktop_apps_are_jobs_each_never_a_whole_user(tmp_path, proc_tree):
    ranking = walk(build(tmp_path, proc_tree, DESKTOP))
    app = "user.slice/user-1000.slice/user@1000.service/app.slice/"
    names = [n for n, *_ in table(ranking)]
    assert names == [
        app + "app-gnome-firefox-5150.scope",
        "user.slice/user-1001.slice/user@1001.service/app.slice/app-code-77.scope",
        app + "app-org.gnome.Terminal.slice/vte-spawn-2c3d.scope",
        "user.slice/user-1000.slice/user@1000.service/session.slice/org.gnome.Shell@wayland.service",
        "user.slice/user-1000.slice/user@1000.service/background.slice/tracker-miner-fs-3.service",
        "system.slice/gdm.service",
        "user.slice/user-1001.slice/session-7.scope",
        "system.slice/NetworkManager.service",
        "user.slice/user-1000.slice/user@1000.service/session.slice/pipewire.service",
        app + "app-org.gnome.Terminal.slice/vte-spawn-0a1b.scope",
        "user.slice/user-1000.slice/session-2.scope",
        "user.slice/user-1001.slice/user@1001.service/init.scope",
        "user.slice/user-1000.slice/user@1000.service/init.scope",
        "user.slice/user-1001.slice/user@1001.service/app.slice/dbus.service",
        "system.slice/oomkiller.service",
        "init.scope",
    ]
    top = ranking.candidates[0]
    assert [p.pid for p in top.job.procs] == [52, 53] and "job: systemd unit" in top.reasons
    # the terminal tab with a cgroup of its own below it is one job, whole
    tab = next(c for c in ranking.candidates if c.job.name.endswith("vte-spawn-2c3d.scope"))
    assert [p.pid for p in tab.job.procs] == [55, 56] and tab.job.descendants == 1
    assert not any(n.endswith((".slice", "@1000.service", "@1001.service")) for n in names)


def test_session_scopes_as_last_resort_is_one_avoid_glob(tmp_path, proc_tree):
    policy = Policy(avoid=("/user.slice/*/session-*.scope",), self_pid=DAEMON_PID)
    rows = table(walk(build(tmp_path, proc_tree, DESKTOP), policy=policy))
    assert [n for n, _, cls, _ in rows if cls == "avoid"] == [
        "user.slice/user-1001.slice/session-7.scope", "user.slice/user-1000.slice/session-2.scope"]
    assert rows[-4][2] == "avoid" and rows[-2][2] == "protect"


def test_container_host_pods_containers_and_services(tmp_path, proc_tree):
    rows = table(walk(build(tmp_path, proc_tree, CONTAINER_HOST)))
    # pods in the kubelet's eviction order: BestEffort, Burstable, Guaranteed
    assert rows == [
        ("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod55ee_66ff.slice", "Kubernetes pod",
         "prefer", True),
        ("kubepods/burstable/pod0b1c2d3e-aaaa-bbbb-cccc-123456789abc", "Kubernetes pod", "normal", True),
        ("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod33cc_44dd.slice", "Kubernetes pod",
         "normal", True),
        ("system.slice/docker-1f2e3d.scope", "systemd unit", "normal", True),
        ("docker/7a6b5c4d", "cgroup with processes", "normal", True),
        ("system.slice/kubelet.service", "systemd unit", "normal", True),
        ("system.slice/containerd.service", "systemd unit", "normal", True),
        ("lxc.payload.web", "LXC container", "normal", True),
        ("lxc.monitor.web", "cgroup with processes", "normal", True),
        ("kubepods.slice/kubepods-pod11aa_22bb.slice", "Kubernetes pod", "avoid", True),
        ("kubepods/pod9f8e7d6c-dddd-eeee-ffff-cba987654321", "Kubernetes pod", "avoid", True),
        ("init.scope", "systemd unit", "protect", False),
    ]


def test_guaranteed_pods_are_ordered_by_size_not_name(tmp_path, proc_tree):
    # the kubelet gives every Guaranteed pod oom_score_adj -997: the bias
    # clamps their scores at 0, and the charge must still order them
    shape = {"kubepods/pod0aaa-1111/c": {110: 200}, "kubepods/pod0bbb-2222/c": {111: 6000}}
    fs = build(tmp_path, proc_tree, shape)
    for pid in (110, 111):
        (tmp_path / "proc" / str(pid) / "oom_score_adj").write_text("-997\n")
    ranking = walk(fs)
    assert [c.job.name for c in ranking.candidates] == ["kubepods/pod0bbb-2222", "kubepods/pod0aaa-1111"]
    assert {c.score_bytes for c in ranking.candidates} == {0}
    assert "avoid: Kubernetes QoS Guaranteed" in ranking.candidates[0].reasons


@pytest.mark.parametrize("v2", [True, False], ids=["v2", "v1"])
def test_no_systemd_cgroups_with_processes_are_jobs(tmp_path, proc_tree, v2):
    rows = table(walk(build(tmp_path, proc_tree, NO_SYSTEMD, v2=v2)))
    assert rows == [
        ("apps/db", "cgroup with processes", "normal", True),
        ("apps/web", "cgroup with processes", "normal", True),
        ("batch/2", "cgroup with processes", "normal", True),
        ("batch/1", "cgroup with processes", "normal", True),
        ("sshd", "cgroup with processes", "normal", True),
        ("apps/empty", "empty leaf cgroup", "normal", False),
    ]


def test_globs_come_before_the_rule_and_star_keeps_the_domains_children(tmp_path, proc_tree):
    fs = build(tmp_path, proc_tree, SERVER)
    rows = table(walk(fs, jobs=("*",)))
    # system.slice holds oomkiller: split into its children; user.slice is one job
    assert [(n, r) for n, r, *_ in rows][:3] == [
        ("system.slice/postgresql.service", "glob '*'"), ("user.slice", "glob '*'"),
        ("system.slice/nginx.service", "glob '*'")]
    rows = table(walk(fs, jobs=("/user.slice/user-0.slice", "auto")))
    assert ("user.slice/user-0.slice", "glob '/user.slice/user-0.slice'", "normal", True) in rows
    assert not any(n.startswith("user.slice/user-0.slice/") for n, *_ in rows)
    # without auto, only globs make jobs
    assert [n for n, *_ in table(walk(fs, jobs=("*.socket",)))] == ["system.slice/dbus.socket"]


def test_a_user_cannot_flood_the_walk_with_cgroups(tmp_path, proc_tree):
    flood = "user.slice/user-1001.slice/user@1001.service/app.slice/flood.slice"
    fs = build(tmp_path, proc_tree, {**DESKTOP, flood: {}})
    tree_root = tmp_path / "cgroup" / flood
    for i in range(MAX_USER_CGROUPS + 5):
        (tree_root / f"c{i}").mkdir()
        (tree_root / f"c{i}" / "cgroup.procs").write_text("")
    rows = table(walk(fs))
    by_name = {n: r for n, r, *_ in rows}
    # that user's manager is one job, whole; the other user's apps are still jobs each
    assert by_name["user.slice/user-1001.slice/user@1001.service"].startswith("user manager taken whole")
    assert "user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-firefox-5150.scope" in by_name
    assert len(rows) == len(DESKTOP) - 3 + 1 - 1    # 1001's three units become one job
    # a cgroup a user names user@N.service inside their own tree gets no budget of its own
    assert jobrule.by_name(flood + "/user@5.service") == (Verdict.DESCEND, jobrule.USER_MANAGER)


@pytest.mark.parametrize("name,verdict", [
    ("system.slice", Verdict.DESCEND),
    ("a/b.service", Verdict.JOB),
    ("x.mount", Verdict.JOB),
    ("user.slice/user-1000.slice/user@1000.service", Verdict.DESCEND),
    ("user@.service", Verdict.JOB),
    ("kubepods-burstable-pod1_2.slice", Verdict.JOB),
    ("kubepods-burstable.slice", Verdict.DESCEND),
    ("pod1234", Verdict.CONTENT),       # a "pod" outside kubepods is nothing special
    ("kubepods/besteffort", Verdict.CONTENT),
    ("kubepods/besteffort/pod12-34", Verdict.JOB),
    ("web", Verdict.CONTENT),
])
def test_names(name, verdict):
    assert jobrule.by_name(name)[0] is verdict


def test_processes_put_in_a_slice_are_in_a_job_not_hidden(tmp_path, proc_tree):
    # cgroup v2 lets a cgroup hold processes beside children that enable no
    # controller: a slice of the user's own with a hog in it and an empty
    # scope below must not leave the hog in no job at all.
    hide = "user.slice/user-1000.slice/user@1000.service/app.slice/hide.slice"
    rows = table(walk(build(tmp_path, proc_tree, {**DESKTOP, hide: {60: 5000}, hide + "/x.scope": {}})))
    assert rows[0] == (hide, "slice with processes of its own", "normal", True)
    assert not any(n == hide + "/x.scope" for n, *_ in rows)


def test_the_daemonsets_rule_ranks_pods_first_with_either_driver_and_protects_the_node(tmp_path, proc_tree):
    # The DaemonSet gives no --jobs: the default rule knows pods under both
    # drivers; its --protect globs keep the kubelet and the runtime.
    import re
    from pathlib import Path
    text = (Path(__file__).parent.parent / "deploy/container/daemonset.yaml").read_text()
    assert "--jobs" not in text
    protect = tuple(re.findall(r'"--protect", "([^"]+)"', text))
    assert "/system.slice/kubelet.service" in protect and "/system.slice/containerd.service" in protect
    rows = table(walk(build(tmp_path, proc_tree, CONTAINER_HOST), policy=Policy(protect=protect, self_pid=DAEMON_PID)))
    assert [(n, cls) for n, _, cls, _ in rows][:3] == [
        ("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod55ee_66ff.slice", "prefer"),
        ("kubepods/burstable/pod0b1c2d3e-aaaa-bbbb-cccc-123456789abc", "normal"),
        ("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod33cc_44dd.slice", "normal"),
    ]
    by_name = {n: (cls, killable) for n, _, cls, killable in rows}
    assert by_name["system.slice/kubelet.service"] == ("protect", False)
    assert by_name["system.slice/containerd.service"] == ("protect", False)
    # Guaranteed pods last among what may be killed
    assert [n for n, _, cls, k in rows if k][-2:] == [
        "kubepods.slice/kubepods-pod11aa_22bb.slice", "kubepods/pod9f8e7d6c-dddd-eeee-ffff-cba987654321"]


def test_a_cgroup_that_cannot_be_read_is_a_job_not_a_crash(tmp_path, proc_tree, monkeypatch):
    # Its owner can nest cgroups past PATH_MAX with mkdirat: every read of
    # them fails with ENAMETOOLONG. That must not stop the listing (and so
    # every kill): the cgroup is a job, whole.
    import errno
    import os
    fs = build(tmp_path, proc_tree, DESKTOP)
    bad = str(tmp_path / "cgroup" / "user.slice/user-1001.slice/user@1001.service/app.slice")
    real = fs.oom_group

    def oom_group(path):
        if path == bad:
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), path)
        return real(path)
    monkeypatch.setattr(fs, "oom_group", oom_group)
    ranking = walk(fs)
    rows = {c.job.name: c for c in ranking.candidates}
    # its parent is taken whole, with every process below it
    whole = rows["user.slice/user-1001.slice/user@1001.service"]
    assert whole.job.rule == "a cgroup below cannot be read (File name too long): taken whole"
    assert whole.killable and [p.pid for p in whole.job.procs] == [71, 72, 73]
    assert not any(n.startswith("user.slice/user-1001.slice/user@1001.service/") for n in rows)
    assert "user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-firefox-5150.scope" in rows


def test_a_hog_nested_past_the_walks_depth_is_still_in_a_job(tmp_path, proc_tree):
    deep = "user.slice/user-1000.slice/user@1000.service/app.slice/x" + "/d" * 70
    rows = table(walk(build(tmp_path, proc_tree, {**DESKTOP, deep: {61: 9000}})))
    (top, rule, cls, killable) = rows[0]
    assert deep.startswith(top + "/") and rule == "cgroup at the walk's depth or path limit: taken whole"
    assert killable and cls == "normal"


def test_a_user_naming_a_cgroup_like_a_pod_gets_no_pod_class(tmp_path, proc_tree):
    app = "user.slice/user-1001.slice/user@1001.service/app.slice/"
    shape = {**DESKTOP, app + "kubepods-pod1.slice/x.scope": {62: 8000},
             app + "kubepods/pod2a": {63: 7000}}
    rows = {n: (r, cls) for n, r, cls, _ in table(walk(build(tmp_path, proc_tree, shape)))}
    assert rows[app + "kubepods-pod1.slice"] == ("Kubernetes pod", "normal")
    assert rows[app + "kubepods/pod2a"][1] == "normal"


def test_a_hog_that_moved_away_from_its_charge_still_ranks_by_its_memory(tmp_path, proc_tree):
    # cgroup v2 leaves a page's charge where it was first touched: a hog that
    # filled 8 GiB in one scope of its user's and moved into a new one brings
    # its memory without its charge.
    app = "user.slice/user-1001.slice/user@1001.service/app.slice/"
    fs = build(tmp_path, proc_tree, {**DESKTOP, app + "moved.scope": {64: 8000}})
    (tmp_path / "cgroup" / app / "moved.scope" / "memory.current").write_text(f"{2 << 20}\n")
    (tmp_path / "cgroup" / app / "moved.scope" / "memory.stat").write_text(f"anon {2 << 20}\n")
    top = walk(fs).candidates[0]
    assert top.job.name == app + "moved.scope" and top.job.charged_bytes == 2 << 20
    assert top.score_bytes >= 8000 << 20
