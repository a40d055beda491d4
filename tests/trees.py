"""Fixture trees: a fake procfs and cgroupfs where every value differs, so a
parser that swaps two fields fails."""
from __future__ import annotations

import os
import time
from pathlib import Path


class ProcTree:
    """Builds a fake ``/proc``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def meminfo(self, total_kb: int, available_kb: int, free_kb: int = 0,
                swap_total_kb: int = 0, swap_free_kb: int = 0) -> None:
        (self.root / "meminfo").write_text(
            f"MemTotal:       {total_kb} kB\nMemFree:        {free_kb} kB\n"
            f"MemAvailable:   {available_kb} kB\nBuffers:          1231 kB\n"
            f"SwapTotal:      {swap_total_kb} kB\nSwapFree:       {swap_free_kb} kB\nHugePages_Total:       7\n")

    def proc(self, pid: int, comm: str, *, anon_kb: int, shmem_kb: int, swap_kb: int, file_kb: int = 0,
             adj: int = 0, state: str = "S", flags: int = 0x400100, start: int = 0,
             cgroup: str = "0::/\n", kernel: bool = False) -> None:
        d = self.root / str(pid)
        d.mkdir()
        start = start or 1000 + pid
        # fields 3..22 of proc(5): state ppid pgrp session tty tpgid flags ... starttime
        rest = [state, "1", str(pid), str(pid), "0", "-1", str(flags)] + [str(90 + i) for i in range(12)] + [str(start)]
        (d / "stat").write_text(f"{pid} ({comm}) {' '.join(rest)} 4096 77 18446744073709551615\n")
        status = f"Name:\t{comm}\nState:\t{state} (sleeping)\nPid:\t{pid}\n"
        if not kernel:
            status += (f"VmRSS:\t{anon_kb + shmem_kb + file_kb} kB\nRssAnon:\t{anon_kb} kB\n"
                       f"RssFile:\t{file_kb} kB\nRssShmem:\t{shmem_kb} kB\nVmSwap:\t{swap_kb} kB\n")
        (d / "status").write_text(status)
        # statm: size resident shared text lib data dt, in pages (shared is
        # file and shmem pages; a kernel thread's are all 0)
        page = os.sysconf("SC_PAGE_SIZE") >> 10
        res, shared = (0, 0) if kernel else ((anon_kb + shmem_kb + file_kb) // page, (shmem_kb + file_kb) // page)
        (d / "statm").write_text(f"{res + 100} {res} {shared} 10 0 {res} 0\n")
        (d / "oom_score_adj").write_text(f"{adj}\n")
        (d / "cgroup").write_text(cgroup)


class CgroupTree:
    """Builds a fake cgroup v2 (``v2=True``) or v1 memory tree."""

    def __init__(self, root: Path, v2: bool) -> None:
        self.root = root
        self.v2 = v2
        if v2:
            root.mkdir(parents=True, exist_ok=True)
            (root / "cgroup.controllers").write_text("cpu io memory pids\n")
            (root / "cgroup.procs").write_text("")
            self.mem = root
        else:
            self.mem = root / "memory"
            self.mem.mkdir(parents=True, exist_ok=True)
            (self.mem / "memory.limit_in_bytes").write_text(f"{(1 << 63) - 4096}\n")
            (self.mem / "cgroup.procs").write_text("")

    def cgroup(self, rel: str, pids: tuple[int, ...] = (), **files: str) -> Path:
        d = self.mem / rel
        d.mkdir(parents=True, exist_ok=True)
        for parent in d.relative_to(self.mem).parents:
            procs = self.mem / parent / "cgroup.procs"
            if not procs.exists():
                procs.write_text("")
        (d / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))
        for name, text in files.items():
            (d / name.replace("__", ".")).write_text(text)
        return d




class CgroupAttrs:
    """Xattrs and owners of a fixture tree's cgroups, put in through the
    seam Cgroupfs reads them by (``xattrs``, ``owner_uid``): setting user
    xattrs and owners for real needs root and a filesystem that has them."""

    def __init__(self) -> None:
        self.xattrs: dict[str, dict[str, str]] = {}
        self.owners: dict[str, int] = {}
        self.owner_reads = 0

    def set(self, path, uid: int = 0, **xattrs: str) -> None:
        """``oomd_omit="1"`` sets ``user.oomd_omit``."""
        self.owners[str(path)] = uid
        self.xattrs[str(path)] = {f"user.{k}": v for k, v in xattrs.items()}

    def attach(self, fs) -> None:
        def xattrs(path):
            return tuple(sorted(self.xattrs.get(str(path), {}).items()))

        def owner_uid(path):
            self.owner_reads += 1
            return self.owners.get(str(path), 0)
        fs.xattrs = xattrs
        fs.owner_uid = owner_uid


class Unreadable:
    """Stands in for an open file whose cgroup or process went away before
    the read: reading it fails with ``err``, as the kernel's file does."""

    def __init__(self, path: str, err: int) -> None:
        self.path, self.err = path, err

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read(self, *_):
        raise OSError(self.err, os.strerror(self.err), self.path)


def short_arena(proc_tree: ProcTree, v2_tree: CgroupTree,
                jobs: tuple[tuple[str, str, int, int], ...] = (("hog", "hog", 4101, 150), ("web", "web", 4102, 90))
                ) -> None:
    """A 256 MiB cgroup domain at ``arena`` with 250 MiB in use (6 MiB free:
    under the 5% redline), on a host with 20 of 24 GiB available. Each job
    is (cgroup name, process name, pid, MiB of anonymous memory)."""
    mib = 1 << 20
    proc_tree.meminfo(total_kb=24 << 20, available_kb=20 << 20)
    v2_tree.cgroup("arena", memory__max=f"{256 * mib}\n", memory__current=f"{250 * mib}\n", memory__stat="anon 1\n")
    for cgroup, comm, pid, size in jobs:
        proc_tree.proc(pid, comm, anon_kb=size << 10, shmem_kb=0, swap_kb=0, cgroup=f"0::/arena/{comm}\n")
        v2_tree.cgroup(f"arena/{cgroup}", (pid,), memory__stat=f"anon {size * mib}\nshmem 0\n",
                       memory__current=f"{size * mib}\n")


def short_config(proc_tree: ProcTree, v2_tree: CgroupTree, **conf):
    """The config of a daemon on ``short_arena``: the timer alone, nothing
    done to the test process itself."""
    from oomkiller import config as cfg
    return cfg.Config(domain="arena", proc_root=str(proc_tree.root), cgroup_root=str(v2_tree.root),
                      protect_self=False, sources=("timer",), **conf)


def wait_until(cond, timeout_s: float = 5.0) -> bool:
    """Poll ``cond`` every 10 ms; whether it held within ``timeout_s``."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


def killing_walk(v2_tree: CgroupTree, arena_current_bytes: int, pid: int = 4101):
    """A stand-in for ``Killer.walk``: the top killable job is killed by
    ``cgroup.kill`` (``pid`` signalled, empty 3 ms later) and the arena's
    use falls to ``arena_current_bytes``."""
    from oomkiller.model import KillResult

    def walk(ranking, still_short=None, past_gone=True):
        cand = ranking.killable()[0]
        v2_tree.cgroup("arena", memory__current=f"{arena_current_bytes}\n")
        return [(cand, KillResult(cand.job, ok=True, dry_run=False, method="cgroup.kill", signalled_pids=(pid,),
                                  signal_to_empty_usec=3_000))]
    return walk
