"""systemd-oomd's marks on a killed job's cgroup: where they go, how they
count, and that nothing the cgroup's owner put there can break the thread or
be followed."""
from __future__ import annotations

import io
import os
import time

import pytest

from trees import short_arena, short_config, wait_until

from oomkiller import config as cfg
from oomkiller.cgroupfs import Layout
from oomkiller.marks import KILL, OOMS, CgroupMarks
from oomkiller.model import Job, KillResult

MiB = 1 << 20
HYBRID = Layout("/sys/fs/cgroup", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/memory", True)
PURE = Layout("/sys/fs/cgroup", "/sys/fs/cgroup", "/sys/fs/cgroup", False)


def _job(path, v2_path="", inode=11, v2_id=0):
    return Job(name=os.path.basename(path), path=path, inode=inode, v2_path=v2_path, v2_id=v2_id)


@pytest.fixture
def marks_on(request):
    made = []

    def make(layout, domain):
        m = CgroupMarks(layout, domain)
        made.append(m)
        return m
    yield make
    for m in made:
        m.close()


def test_a_service_or_scope_job_is_marked_on_its_own_v2_cgroup(marks_on):
    m = marks_on(HYBRID, "/sys/fs/cgroup/memory")
    j = _job("/sys/fs/cgroup/memory/system.slice/hog.service", "/sys/fs/cgroup/unified/system.slice/hog.service",
             v2_id=77)
    assert m.target(j) == ("/sys/fs/cgroup/unified/system.slice/hog.service", 77)
    m = marks_on(PURE, "/sys/fs/cgroup")
    j = _job("/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service/app.slice/app-x.scope",
             "/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service/app.slice/app-x.scope", v2_id=78)
    assert m.target(j) == (j.path, 78)


def test_a_job_below_a_unit_marks_the_unit_and_one_outside_any_unit_itself(marks_on):
    m = marks_on(PURE, "/sys/fs/cgroup/system.slice")
    inner = _job("/sys/fs/cgroup/system.slice/web.service/worker/a", "/sys/fs/cgroup/system.slice/web.service/worker/a",
                 v2_id=9)
    assert m.target(inner) == ("/sys/fs/cgroup/system.slice/web.service", 0)     # no inode known: not checked
    bare = _job("/sys/fs/cgroup/system.slice/batch/a", "/sys/fs/cgroup/system.slice/batch/a", v2_id=10)
    assert m.target(bare) == (bare.path, 10)
    # a v1 job with no v2 cgroup of its own: its memory cgroup, its inode
    m = marks_on(HYBRID, "/sys/fs/cgroup/memory/arena")
    v1 = _job("/sys/fs/cgroup/memory/arena/hog", inode=12)
    assert m.target(v1) == ("/sys/fs/cgroup/memory/arena/hog", 12)
    # a v2 cgroup that is not the memory cgroup's mirror (the job's
    # processes share it, and nothing else): that one, never above it
    other = _job("/sys/fs/cgroup/memory/arena/x.service/hog", "/sys/fs/cgroup/unified/elsewhere/hog", v2_id=13)
    assert m.target(other) == ("/sys/fs/cgroup/unified/elsewhere/hog", 13)
    # a mirror at another depth (the arena sits elsewhere in v2): the unit
    # found at the levels inside the domain
    mirror = _job("/sys/fs/cgroup/memory/arena/x.service/hog", "/sys/fs/cgroup/unified/t/x.service/hog", v2_id=14)
    assert m.target(mirror) == ("/sys/fs/cgroup/unified/t/x.service", 0)
    for bad in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup/unified/", "/sys/fs/cgroup/unified/../hog", "/tmp/hog"):
        assert m.target(_job("/sys/fs/cgroup/memory/arena/hog", bad, v2_id=1)) is None, bad


def test_only_cgroups_strictly_inside_the_domain_are_marked(marks_on):
    # the domain is a unit: a job inside it is marked on itself, never on
    # the domain (or anything above it)
    m = marks_on(PURE, "/sys/fs/cgroup/system.slice/big.service")
    j = _job("/sys/fs/cgroup/system.slice/big.service/part", "/sys/fs/cgroup/system.slice/big.service/part", v2_id=5)
    assert m.target(j) == (j.path, 5)
    for path in ("/sys/fs/cgroup/system.slice/big.service", "/sys/fs/cgroup/system.slice/big.service2/x",
                 "/sys/fs/cgroup/system.slice/other.service", "/sys/fs/cgroup/system.slice/big.service/../x.service",
                 "/elsewhere/system.slice/big.service/part", "/sys/fs/cgroup/system.slice/big.service//part"):
        assert m.target(_job(path, path)) is None, path


def _tree(tmp_path):
    root = tmp_path / "cg"
    (root / "dom" / "app.service" / "payload").mkdir(parents=True)
    (root / "dom" / "plain").mkdir()
    try:
        os.setxattr(root, "user.probe", b"1")
    except OSError as e:
        pytest.skip(f"{tmp_path}: no user xattrs here ({e.strerror})")
    return Layout(str(root), str(root), str(root), False), root


def _v2job(path):
    return _job(str(path), str(path), v2_id=os.stat(path).st_ino)


def test_marks_count_as_systemd_oomd_counts(tmp_path, marks_on):
    layout, root = _tree(tmp_path)
    m = marks_on(layout, str(root / "dom"))
    payload, plain = _v2job(root / "dom/app.service/payload"), _v2job(root / "dom/plain")
    for _ in range(2):
        m.before(payload)
        m.after(payload, 3)
    m.before(plain)
    m.after(plain, 0)       # nothing signalled: no kill count written
    assert wait_until(lambda: m.stats()["marked"] == 5), m.stats()
    unit = root / "dom/app.service"
    assert (os.getxattr(unit, OOMS), os.getxattr(unit, KILL)) == (b"2", b"6")
    assert os.getxattr(root / "dom/plain", OOMS) == b"1"
    with pytest.raises(OSError):
        os.getxattr(root / "dom/plain", KILL)
    for p in (root / "dom", root / "dom/app.service/payload"):
        assert OOMS not in os.listxattr(p)


def test_what_the_owner_put_there_is_left_alone_and_counted(tmp_path, marks_on):
    layout, root = _tree(tmp_path)
    m = marks_on(layout, str(root / "dom"))
    plain = root / "dom/plain"
    os.setxattr(plain, OOMS, b"12; rm -rf /")
    os.setxattr(plain, KILL, b"18446744073709551615")
    m.before(_v2job(plain))
    m.after(_v2job(plain), 1)
    assert wait_until(lambda: m.stats()["refused"] == 2), m.stats()
    assert os.getxattr(plain, OOMS) == b"12; rm -rf /" and os.getxattr(plain, KILL) == b"18446744073709551615"
    assert "not a count" in m.stats()["last_error"] or "2^64" in m.stats()["last_error"]


def test_a_symlink_a_replaced_and_a_removed_cgroup_are_not_marked(tmp_path, marks_on):
    layout, root = _tree(tmp_path)
    m = marks_on(layout, str(root / "dom"))
    victim = tmp_path / "victim"
    victim.mkdir()
    (root / "dom/link.service").symlink_to(victim)
    m.before(_job(str(root / "dom/link.service"), str(root / "dom/link.service"), v2_id=1))
    assert wait_until(lambda: m.stats()["errors"] == 1), m.stats()
    assert os.listxattr(victim) == [] and "link.service" in m.stats()["last_error"]
    plain = root / "dom/plain"
    job = _v2job(plain)
    os.rmdir(plain)
    m.before(job)
    assert wait_until(lambda: m.stats()["gone"] == 1), m.stats()
    plain.mkdir()           # another cgroup at the same path (ext4 may reuse the inode: say it did not)
    m.before(_job(str(plain), str(plain), v2_id=os.stat(plain).st_ino + 1))
    assert wait_until(lambda: m.stats()["gone"] == 2), m.stats()
    assert OOMS not in os.listxattr(plain)


def test_a_stuck_marker_never_holds_up_the_kill_loop(tmp_path, marks_on, monkeypatch):
    import threading
    layout, root = _tree(tmp_path)
    release = threading.Event()
    real = os.setxattr

    def stuck(*a, **kw):
        release.wait(10)
        return real(*a, **kw)
    monkeypatch.setattr(os, "setxattr", stuck)
    m = marks_on(layout, str(root / "dom"))
    job = _v2job(root / "dom/plain")
    t0 = time.monotonic()
    for _ in range(500):
        m.before(job)
    assert time.monotonic() - t0 < 0.5
    assert m.stats()["dropped"] >= 500 - 65
    release.set()


def test_cgroup_marks_is_on_by_default_and_a_bad_value_is_one_line():
    assert cfg.Config().cgroup_marks and not cfg.load(environ={"OOMKILLER_CGROUP_MARKS": "no"}).cgroup_marks
    with pytest.raises(cfg.ConfigError, match=r"^environment: bad value for 'OOMKILLER_CGROUP_MARKS': "):
        cfg.load(environ={"OOMKILLER_CGROUP_MARKS": "\n"})


class Marks:
    def __init__(self):
        self.calls = []

    def before(self, job):
        self.calls.append(("before", job.name))

    def after(self, job, n):
        self.calls.append(("after", job.name, n))

    def stats(self):
        return {"marked": 0}


@pytest.mark.parametrize("dry_run", [False, True])
def test_the_daemon_marks_after_each_signalled_attempt_and_never_in_a_dry_run(proc_tree, v2_tree, monkeypatch,
                                                                               dry_run):
    from oomkiller.daemon import Daemon
    from oomkiller.model import PressureEvent
    short_arena(proc_tree, v2_tree)
    c = short_config(proc_tree, v2_tree, dry_run=dry_run)
    marks = Marks()
    d = Daemon(c, json_out=io.StringIO(), clock=lambda: 5_000_000_000, marks=marks)
    assert (d.killer.before_signal is None) == dry_run

    def walk(ranking, still_short=None, past_gone=True):
        first, second = ranking.killable()[:2]
        return [(first, KillResult(first.job, ok=False, dry_run=dry_run, method="none", error="emptied")),
                (second, KillResult(second.job, ok=True, dry_run=dry_run, method="cgroup.kill",
                                    signalled_pids=(4102,), signal_to_empty_usec=1000))]
    monkeypatch.setattr(d.killer, "walk", walk)
    d.wake([PressureEvent("timer", "tick", timestamp_usec=5_000_000)])
    assert marks.calls == ([] if dry_run else [("after", "hog", 0), ("after", "web", 1)])
    assert d.info()[1]["output"]["marks"] == {"marked": 0}
