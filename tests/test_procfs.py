import errno
import os
import time
from pathlib import Path

import pytest

import oomkiller.files as files_mod
from oomkiller.procfs import CMDLINE_MAX_BYTES, Procfs

MiB = 1 << 20


def test_anon_bytes_sums_what_the_processes_map_now(proc_tree):
    proc_tree.proc(10, "hog", anon_kb=150 << 10, shmem_kb=4 << 10, swap_kb=0, file_kb=2 << 10)
    proc_tree.proc(11, "cat", anon_kb=1 << 10, shmem_kb=0, swap_kb=0, file_kb=300 << 10)
    proc_tree.proc(12, "kworker", anon_kb=0, shmem_kb=0, swap_kb=0, kernel=True)
    p = Procfs(str(proc_tree.root))
    # shmem and file pages are not anonymous
    assert p.anon_bytes([10, 11, 12]) == 151 << 20
    assert p.anon_bytes([]) == 0
    # a process gone since its cgroup was read maps nothing; more gone than
    # churn explains is a procfs that does not show them
    assert p.anon_bytes([10, 99, 98, 97, 96]) == 150 << 20
    assert p.anon_bytes([10, 99, 98, 97, 96, 95]) is None
    # unknown, not a part of them: more processes than it may read, one of
    # another pid namespace (cgroup.procs shows it as 0), a statm that
    # makes no sense
    assert p.anon_bytes([10, 11, 12], max_procs=2) is None
    assert p.anon_bytes([10, 0]) is None
    for text in ("12 x 3\n", "", "12\n"):
        (proc_tree.root / "11" / "statm").write_text(text)
        assert p.anon_bytes([10, 11]) is None, text
    (proc_tree.root / "11" / "statm").write_text("0 0 0 0 0 0 0\n")
    # its first thread exited and others run on (statm reads 0): unknown;
    # a zombie (one thread, not reaped) maps nothing
    stat = (proc_tree.root / "11" / "stat").read_text().split()
    stat[19] = "3"
    (proc_tree.root / "11" / "stat").write_text(" ".join(stat) + "\n")
    assert p.anon_bytes([10, 11]) is None
    stat[19] = "1"
    (proc_tree.root / "11" / "stat").write_text(" ".join(stat) + "\n")
    assert p.anon_bytes([10, 11]) == 150 << 20
    # it stops as soon as the sum is past what the caller asks
    (proc_tree.root / "11" / "statm").write_text("junk\n")
    assert p.anon_bytes([10, 11]) is None and p.anon_bytes([10, 11], stop_above=MiB) == 150 << 20
    assert p.anon_bytes([10, 99], max_gone=0) is None


def test_anon_bytes_of_real_processes_is_their_rss_anon():
    p = Procfs()
    me = p.proc(os.getpid())
    got = p.anon_bytes([os.getpid()])
    # the same counters as RssAnon, read a moment apart
    assert got is not None and abs(got - me.private_bytes) < 4 << 20


def test_meminfo_bytes(proc_tree):
    proc_tree.meminfo(total_kb=8265625, available_kb=6057779, free_kb=5123)
    mi = Procfs(str(proc_tree.root)).meminfo()
    assert mi["MemTotal"] == 8265625 * 1024
    assert mi["MemAvailable"] == 6057779 * 1024
    assert mi["MemFree"] == 5123 * 1024
    assert mi["HugePages_Total"] == 7


def test_proc_fields(proc_tree):
    proc_tree.proc(4157, "flutter:user (x) y", anon_kb=1001, shmem_kb=203, swap_kb=37, file_kb=999,
                   adj=250, state="R", start=55555)
    p = Procfs(str(proc_tree.root)).proc(4157)
    assert p.pid == 4157 and p.name == "flutter:user (x) y"
    assert p.committed_bytes == (1001 + 203 + 37) * 1024
    assert (p.oom_score_adj, p.state, p.start_ticks, p.kernel_thread) == (250, "R", 55555, False)


def test_kernel_thread_and_missing(proc_tree):
    proc_tree.proc(2, "kthreadd", anon_kb=0, shmem_kb=0, swap_kb=0, flags=0x208040, kernel=True)
    fs = Procfs(str(proc_tree.root))
    p = fs.proc(2)
    assert p.kernel_thread and p.committed_bytes == 0
    assert fs.proc(99999) is None


def test_cgroups_hybrid(proc_tree):
    proc_tree.proc(31, "x", anon_kb=1, shmem_kb=2, swap_kb=3,
                   cgroup="9:name=systemd:/\n4:memory:/a/b\n2:cpu,cpuacct:/c\n0::/d/e\n")
    g = Procfs(str(proc_tree.root)).cgroups(31)
    assert g == {"name=systemd": "/", "memory": "/a/b", "cpu": "/c", "cpuacct": "/c", "": "/d/e"}


def test_a_process_that_exits_mid_read_is_gone(proc_tree, monkeypatch):
    """Each file of a process failing the way an exiting one does, at its
    open or at its read: the process is passed over, not an error."""
    proc_tree.proc(77, "x", anon_kb=1, shmem_kb=2, swap_kb=3, cgroup="0::/a\n")
    fs = Procfs(str(proc_tree.root))
    real_open = open
    for name in ("stat", "status", "oom_score_adj", "cgroup"):
        for e in (errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EINVAL):
            def failing(path, *a, _name=name, _e=e, **kw):
                if path.endswith(f"/77/{_name}"):
                    raise OSError(_e, os.strerror(_e), path)
                return real_open(path, *a, **kw)
            monkeypatch.setattr(files_mod, "open", failing, raising=False)
            assert (fs.proc(77) is None) == (name != "cgroup")
            assert (fs.cgroups(77) == {}) == (name == "cgroup")
    monkeypatch.undo()
    assert fs.proc(77).committed_bytes == 6 * 1024


def test_a_name_that_is_not_utf8(proc_tree):
    proc_tree.proc(78, "x", anon_kb=1, shmem_kb=0, swap_kb=0)
    stat = proc_tree.root / "78" / "stat"
    stat.write_bytes(stat.read_bytes().replace(b"(x)", b"(\xff\xfeq)"))
    assert Procfs(str(proc_tree.root)).proc(78).name == "\ufffd\ufffdq"


def test_cmdline_is_read_below_the_root_bounded_and_replaced(proc_tree):
    fs = Procfs(str(proc_tree.root))
    (proc_tree.root / "cmdline").write_bytes(b"quiet root=/dev/\xff\xfe oomkiller.sleep_ms=250\n")
    assert fs.cmdline() == "quiet root=/dev/\ufffd\ufffd oomkiller.sleep_ms=250\n"
    (proc_tree.root / "cmdline").write_bytes(b"x" * (CMDLINE_MAX_BYTES + 10))
    assert fs.cmdline() == "x" * CMDLINE_MAX_BYTES
    (proc_tree.root / "cmdline").unlink()
    with pytest.raises(FileNotFoundError):
        fs.cmdline()


ODD = ("\r", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")


@pytest.mark.parametrize("odd", ODD, ids=repr)
def test_cgroup_names_may_hold_any_line_end_but_newline(proc_tree, odd):
    """The kernel refuses ``\\n`` in a cgroup's name, and nothing else that
    str.splitlines() splits on: such a name is a path like any other."""
    proc_tree.proc(32, "x", anon_kb=1, shmem_kb=2, swap_kb=3,
                   cgroup=f"4:memory:/u/a{odd}b\n0::/u/a{odd}b/c{odd}\n")
    g = Procfs(str(proc_tree.root)).cgroups(32)
    assert g == {"memory": f"/u/a{odd}b", "": f"/u/a{odd}b/c{odd}"}


def test_an_unparsable_cgroup_line_is_unknown_not_an_error(proc_tree):
    proc_tree.proc(33, "x", anon_kb=1, shmem_kb=2, swap_kb=3,
                   cgroup="garbage\n4:memory:/a\n\n7:pids\n0::/d\n")
    assert Procfs(str(proc_tree.root)).cgroups(33) == {"memory": "/a", "": "/d"}


@pytest.mark.parametrize("odd", ("\x1c", "\x85", "\u2028"), ids=repr)
def test_a_name_cannot_forge_a_status_field(proc_tree, odd):
    """``Name:`` of /proc/PID/status is the process's own choice; the kernel
    escapes ``\\n`` and ``\\r`` in it but not the other line ends."""
    proc_tree.proc(34, f"x{odd}VmSwap: 9 kB", anon_kb=1, shmem_kb=2, swap_kb=0, kernel=True)
    assert Procfs(str(proc_tree.root)).proc(34).committed_bytes == 0


def _killer_proc(proc_tree, pid, comm, argv, exe, uid=0):
    proc_tree.proc(pid, comm, anon_kb=1, shmem_kb=0, swap_kb=0)
    d = proc_tree.root / str(pid)
    (d / "comm").write_text(comm + "\n")
    (d / "cmdline").write_text("\0".join(argv) + "\0")
    with open(d / "status", "a") as f:
        f.write(f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
    if exe is not None:
        os.symlink(exe, d / "exe")


def test_other_oom_killers_by_executable_and_by_script(proc_tree):
    for pid, comm, argv, exe in (
            (300, "earlyoom", ["earlyoom", "-r", "60"], "/usr/bin/earlyoom"),
            (301, "python3", ["/usr/bin/python3", "-u", "/usr/sbin/nohang", "--monitor"], "/usr/bin/python3.11"),
            (302, "python3", ["python3", "-m", "oomkiller", "run"], "/usr/bin/python3.11"),
            (303, "bash", ["bash", "-c", "nohang"], "/usr/bin/bash"),
            (304, "systemd-oomd", ["/lib/systemd/systemd-oomd"], "/usr/lib/systemd/systemd-oomd"),
            (306, "low-memory-moni", ["/usr/libexec/low-memory-monitor"], "/usr/libexec/low-memory-monitor"),
            (307, "earlyoom", ["earlyoom"], "/usr/bin/earlyoom (deleted)")):      # upgraded since it started
        _killer_proc(proc_tree, pid, comm, argv, exe)
    # Debian runs systemd-oomd as its own system user
    _killer_proc(proc_tree, 308, "systemd-oomd", ["/lib/systemd/systemd-oomd"], "/usr/lib/systemd/systemd-oomd", 997)
    (proc_tree.root / "305").mkdir()     # gone while being read: no comm
    assert sorted(Procfs(str(proc_tree.root)).other_oom_killers()) == [
        (300, "earlyoom"), (301, "nohang"), (304, "systemd-oomd"), (306, "low-memory-monitor"), (307, "earlyoom"),
        (308, "systemd-oomd")]


def test_a_process_named_after_an_oom_killer_is_not_one(proc_tree):
    for pid, comm, argv, exe, uid in (
            (400, "earlyoom", ["earlyoom"], "/usr/bin/sleep", 0),            # root, named so by a link or prctl
            (401, "earlyoom", ["earlyoom"], "/home/u/earlyoom", 65534),     # the real name, not root
            (407, "systemd-oomd", ["systemd-oomd"], "/usr/lib/systemd/systemd-oomd", 1000),  # a user ran it
            (402, "python3", ["python3", "/tmp/nohang"], "/usr/bin/python3", 65534),
            (403, "nohang", ["nohang"], "/usr/bin/python3", 0),             # an interpreter with no nohang to run
            (404, "earlyoom", ["earlyoom"], None, 0),                       # exe unreadable: not trusted
            (405, "python3", ["python3", "/usr/sbin/nohang"], "/usr/bin/perl", 0)):
        _killer_proc(proc_tree, pid, comm, argv, exe, uid)
    _killer_proc(proc_tree, 406, "earlyoom", ["earlyoom"], "/usr/bin/earlyoom", 0)
    (proc_tree.root / "406" / "status").write_text("Name:\tearlyoom\n")    # no Uid line: unknown, not root
    assert Procfs(str(proc_tree.root)).other_oom_killers() == []


def test_a_real_process_named_earlyoom_is_not_taken_for_one(tmp_path):
    # comm is the name of the file run: a link named earlyoom to sleep
    import subprocess
    link = tmp_path / "earlyoom"
    link.symlink_to("/bin/sleep")
    p = subprocess.Popen([str(link), "60"])
    try:
        for _ in range(1000):
            if Path(f"/proc/{p.pid}/comm").read_text().strip() == "earlyoom":
                break
            time.sleep(0.002)
        assert Path(f"/proc/{p.pid}/comm").read_text().strip() == "earlyoom"
        assert p.pid not in [pid for pid, _ in Procfs().other_oom_killers()]
    finally:
        p.kill()
        p.wait()
