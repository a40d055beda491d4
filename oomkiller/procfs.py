"""Process and host memory data from procfs.

psutil covers most process data, but not the split of resident memory into
anonymous, shmem and file pages that ``/proc/PID/status`` gives in one read;
that split is what "committed" means here, so the status file is read by key.
"""
from __future__ import annotations

import os
import time
from collections.abc import Collection, Iterable

from .files import HeldFile, Vanished, lines, parse_kb_fields, parse_keyed, pick_keyed, read_kb_fields, read_text
from .model import Proc

PF_KTHREAD = 0x00200000     # include/linux/sched.h

# "Mapped committed bytes" of the seed, on Linux: memory the process owns that
# reclaim cannot drop when there is no swap to spill it to.
COMMITTED_KEYS = ("RssAnon", "RssShmem", "VmSwap")

# Far more than a kernel allows a command line to be: a bound on the read of
# a file that is not what it should be.
CMDLINE_MAX_BYTES = 1 << 16


# Other user-space OOM killers, by the name of their executable (a Python
# one by its script, the first words of its command line): see
# ``Procfs.other_oom_killers``.
OTHER_OOM_KILLERS = ("earlyoom", "nohang", "systemd-oomd", "oomd", "low-memory-monitor")
# The kernel keeps 15 bytes of a process's name (TASK_COMM_LEN less its NUL).
COMM_LEN = 15
# Processes looked at, at most, when looking for them.
MAX_SCAN_PROCS = 100_000


_TICKS_PER_SEC = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# Processes whose anonymous memory ``Procfs.anon_bytes`` reads, at most: a
# read of /proc/PID/statm costs some 5 us here, so this bounds the count
# to some 20 ms of the loop.
MAX_ANON_PROCS = 4096


def _read_small(path: str, size: int = 256) -> bytes:
    """The first ``size`` bytes of a small kernel file, in one read."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def _max_gone(n: int) -> int:
    """Of ``n`` processes, how many may be gone when read (exited since
    their cgroup.procs was read: they map nothing) before the count is
    unknown: more is not churn but a procfs that does not show them."""
    return max(4, n // 8)


def boot_ticks() -> int:
    """Now, in whole clock ticks since boot: a process whose ``starttime``
    is below it started before now (``starttime`` is its start rounded
    down to a tick, from the same clock)."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) * _TICKS_PER_SEC // 1_000_000_000


def start_ticks(proc_root: str, pid: int) -> int | None:
    """When the process holding ``pid`` now started, in clock ticks since
    boot (``starttime`` of ``/proc/PID/stat``); None if it is gone. Read
    without the ``Vanished`` wrapping: the killer calls it per process."""
    try:
        fd = os.open(f"{proc_root}/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            stat = os.read(fd, 4096)
        finally:
            os.close(fd)
        return int(stat[stat.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


# System accounts (login.defs' SYS_UID_MAX): root and the users packages
# create for their services, such as systemd-oom.
SYSTEM_UID_MAX = 999


class Procfs:
    """Reads one procfs tree; ``root`` is ``/proc`` except in tests."""

    def __init__(self, root: str = "/proc") -> None:
        self.root = root
        # read on every wake: kept open (files.HeldFile)
        self._meminfo = HeldFile(os.path.join(root, "meminfo"))
        self._vmstat = HeldFile(os.path.join(root, "vmstat"))

    def meminfo(self, keys: Iterable[str] | None = None) -> dict[str, int]:
        """``/proc/meminfo`` in bytes, keyed by field name (a count such as
        ``HugePages_Total`` as it is); only ``keys`` if given."""
        return parse_kb_fields(self._meminfo.read(), keys)

    def vmstat(self, keys: Iterable[str] | None = None) -> dict[str, int]:
        """``/proc/vmstat``, keyed by counter name (pages and events); only
        ``keys`` if given (found without parsing the rest)."""
        text = self._vmstat.read()
        return parse_keyed(text) if keys is None else pick_keyed(text, keys)

    def swaps(self) -> list[tuple[str, int, int]]:
        """``/proc/swaps``: (file name as the kernel escapes it, size, used)
        in bytes for each swap area; lines of another shape are left out."""
        out = []
        for line in lines(read_text(os.path.join(self.root, "swaps"))):
            parts = line.split()
            if len(parts) >= 4 and parts[2].isdigit() and parts[3].isdigit():
                out.append((parts[0], int(parts[2]) << 10, int(parts[3]) << 10))
        return out

    def cmdline(self) -> str:
        """The kernel command line. Boot loaders pass bytes: those that are
        not UTF-8 are replaced, so that they cannot stop the daemon."""
        return read_text(os.path.join(self.root, "cmdline"), max_bytes=CMDLINE_MAX_BYTES)

    def oom_score_adj(self, pid: int) -> int | None:
        """A process's ``oom_score_adj``; None if it is gone or unreadable."""
        try:
            return int(read_text(os.path.join(self.root, str(pid), "oom_score_adj")).strip() or 0)
        except (OSError, ValueError):
            return None

    def anon_bytes(self, pids: Collection[int], max_procs: int = MAX_ANON_PROCS, *,
                   stop_above: int | None = None, max_gone: int | None = None) -> int | None:
        """The anonymous memory the processes ``pids`` map now, summed, from
        ``/proc/PID/statm`` (resident less shared pages; shmem is among the
        shared): counters the kernel keeps per process, fresh where a
        cgroup's memory.stat may lag. Since 6.2 they are per-CPU, and some
        kernels read them without the CPUs' unsummed parts: a process may
        read low by up to max(32, 2 x CPUs) pages a CPU (256 KiB on 2 CPUs,
        32 MiB on 64). The sum so far as soon as it is over ``stop_above``.

        A process gone counts nothing (it exited since its cgroup.procs was
        read). None, never a part of the sum, if there are over
        ``max_procs``; if one is of another pid namespace (``cgroup.procs``
        shows it as 0), cannot be read or makes no sense; if one maps
        nothing while other threads of it run on (its first thread exited:
        its statm reads 0); or if more are gone than ``max_gone`` (by
        default more than churn explains, ``_max_gone``: a procfs that
        does not show them)."""
        if len(pids) > max_procs:
            return None
        allowed = _max_gone(len(pids)) if max_gone is None else max_gone
        total = gone = 0
        for pid in pids:
            if pid <= 0:
                return None
            base = os.path.join(self.root, str(pid))
            try:
                fields = _read_small(os.path.join(base, "statm")).split()
            except (FileNotFoundError, ProcessLookupError):
                gone += 1
                if gone > allowed:
                    return None
                continue
            except OSError:
                return None
            if len(fields) < 3 or not fields[0].isdigit() or not fields[1].isdigit() or not fields[2].isdigit():
                return None
            if fields[0] == b"0" and self._threads(base) != 1:
                return None
            total += max(0, int(fields[1]) - int(fields[2])) * _PAGE_SIZE
            if stop_above is not None and total > stop_above:
                return total
        return total

    def _threads(self, base: str) -> int | None:
        """``num_threads`` of a process's stat; None if unknown."""
        try:
            stat = _read_small(os.path.join(base, "stat"), 1024)
            return int(stat[stat.rindex(b")") + 2:].split()[17])
        except (OSError, ValueError, IndexError):
            return None

    def proc(self, pid: int) -> Proc | None:
        """One process, or None if it is gone (or turned out to be another)."""
        base = os.path.join(self.root, str(pid))
        try:
            stat = read_text(os.path.join(base, "stat"))
            status = read_kb_fields(os.path.join(base, "status"), COMMITTED_KEYS)
            adj = int(read_text(os.path.join(base, "oom_score_adj")).strip() or 0)
        except Vanished:
            return None
        # comm may hold spaces and parentheses: it ends at the last ')'.
        lpar, rpar = stat.index("("), stat.rindex(")")
        name = stat[lpar + 1:rpar]
        fields = stat[rpar + 2:].split()
        # fields[0] is field 3 (state) of proc(5); flags is field 9, starttime 22.
        state, flags, start = fields[0], int(fields[6]), int(fields[19])
        committed = sum(status.get(k, 0) for k in COMMITTED_KEYS)
        return Proc(pid=pid, name=name, committed_bytes=committed, oom_score_adj=adj,
                    state=state, start_ticks=start, kernel_thread=bool(flags & PF_KTHREAD),
                    private_bytes=status.get("RssAnon", 0) + status.get("VmSwap", 0))

    def other_oom_killers(self) -> list[tuple[int, str]]:
        """Running processes of other OOM killers, as (pid, name): two
        killers act on the same shortage, each on its own view of it.

        Any user can name a process ``earlyoom`` (its ``comm`` is the name
        of the file it ran, and ``prctl`` sets it), so the name only picks
        whom to look at. One counts if it runs as root or a system account
        (real uid up to ``SYSTEM_UID_MAX``: systemd-oomd runs as the user
        systemd-oom; a user's process, 65534's included, is anyone's to fake)
        and its executable, as the kernel resolved it (``/proc/PID/exe``),
        is named after the killer; for a killer that is a script (nohang
        runs under python3), the executable is a Python interpreter and
        the script, the first word of the command line after its options,
        is. A process whose executable cannot be read (gone, or beyond our
        privileges) does not count."""
        found = []
        try:
            with os.scandir(self.root) as it:
                pids = [e.name for e in it if e.name.isdigit()][:MAX_SCAN_PROCS]
        except OSError:
            return found
        for pid in pids:
            try:
                comm = read_text(os.path.join(self.root, pid, "comm")).strip()
                named = next((n for n in OTHER_OOM_KILLERS if n[:COMM_LEN] == comm), None)
                if named is None and not comm.startswith("python"):
                    continue
                uid = self._real_uid(pid)
                if uid is None or uid > SYSTEM_UID_MAX:
                    continue
                exe = self._exe_name(pid)
                if named is not None and exe == named:
                    found.append((int(pid), named))
                elif exe.startswith("python"):
                    argv = read_text(os.path.join(self.root, pid, "cmdline"), max_bytes=4096).split("\0")[:3]
                    name = next((os.path.basename(a) for a in argv[1:] if not a.startswith("-")), "")
                    if name in OTHER_OOM_KILLERS:
                        found.append((int(pid), name))
            except (Vanished, OSError, ValueError):
                continue
        return found

    def _real_uid(self, pid: str) -> int | None:
        """The real uid of a process (``Uid:`` of its status), None if
        unknown. The name line before it cannot hold a ``\n``: the kernel
        escapes it."""
        for line in lines(read_text(os.path.join(self.root, pid, "status"))):
            if line.startswith("Uid:"):
                return int(line.split()[1])
        return None

    def _exe_name(self, pid: str) -> str:
        """The base name of a process's executable, "" if it cannot be read.
        A file replaced since it was run (a package upgrade) reads as
        ``PATH (deleted)``."""
        try:
            target = os.readlink(os.path.join(self.root, pid, "exe"))
        except OSError:
            return ""
        if target.endswith(" (deleted)"):
            target = target[:-len(" (deleted)")]
        return os.path.basename(target)

    def cgroups(self, pid: int) -> dict[str, str]:
        """``/proc/PID/cgroup`` as controller -> path; the v2 entry is under ``""``.

        A path is the cgroup's name as its owner made it: it may hold any
        character but ``\n`` (``\r``, U+2028...), so lines are split on
        ``\n`` alone. A line of another shape is left out (that
        controller's cgroup is unknown), not an error."""
        out: dict[str, str] = {}
        try:
            text = read_text(os.path.join(self.root, str(pid), "cgroup"))
        except Vanished:
            return out
        for line in lines(text):
            parts = line.split(":", 2)
            if len(parts) != 3:
                continue
            _hid, ctrls, path = parts
            for c in (ctrls.split(",") if ctrls else [""]):
                out[c] = path
        return out
