"""The processes the benchmark runs inside an arena.

Run as a script (``python -S workload.py ROLE ...``): it imports nothing but the
standard library, so it starts fast and holds little besides what it is told to
hold. Every role names itself (``/proc/PID/comm``) so that a contender's log,
which names processes, can be mapped back to the job. Every role prints
``ready`` once set up; the roles that do work print ``ops N T`` every report
period: N operations completed so far at CLOCK_MONOTONIC microsecond T.

Roles:

``hog``      allocates anonymous memory and touches every page: first
             ``--prefill`` bytes as fast as it can, then ``--rate`` MB/s
             (0 = as fast as it can) up to ``--cap`` bytes, then holds it.
             Prints ``alloc BYTES T`` after the prefill and every 32 MiB.
``service``  holds ``--hold`` bytes and serves one operation at a time: a 4 KiB
             read at a random offset of its own file (through the page cache,
             or with ``--direct`` around it), one byte read from each of 16
             pages of its memory, then a 1 ms pause. What it completes is its
             work.
``mapped``   maps ``--file`` and reads one byte of a random page of it at a
             time in ``--threads`` threads, without pause: a service whose
             working set is file-backed, like program text. Its page faults
             go through the page cache with the kernel's read-around, as
             program text does. Each read is one operation.
``storm``    forks a child every ``--interval-ms``; each child allocates
             ``--child-bytes`` and holds it. Stops after ``--max-children``.
``fleet``    one ``sleep`` in each of the given cgroups (the many-jobs
             scenario): started in the fleet's own cgroup and moved into its
             job once asleep, so that what it touched starting stays charged
             to the fleet.

The healthy loads of the false-positive suite:

``stream``   reads ``--file`` from start to end in 1 MiB reads through the
             page cache, in a loop (``cat`` of a large file); an operation
             is 1 MiB read.
``build``    like a build with a big cache: writes ``--total`` bytes as files
             of ``--piece`` bytes in ``--dir``, reads them all back, deletes
             them, in a loop; an operation is one file written or read.
``spin``     ``--procs`` processes each spinning on a CPU; an operation is
             100,000 loop turns of the first.
``burst``    every ``--every-s``: allocates ``--bytes`` of anonymous memory
             as fast as it can, holds it ``--hold-ms`` and frees it (a
             short burst of pressure); an operation is one burst.
"""
from __future__ import annotations

import argparse
import mmap
import os
import random
import sys
import threading
import time

PAGE = 4096
OP_READ_BYTES = 4096
OP_SUM_BYTES = 64 << 10
# The service's pace: one operation per millisecond keeps it well under a
# core (the machines have two) while any stall of a few ms shows in its count.
SERVICE_PAUSE_S = 0.001
HOG_CHUNK_BYTES = 4 << 20
# The hog says how far it got every this many bytes: enough to tell the rate
# it reached near the limit without flooding the pipe.
HOG_REPORT_BYTES = 32 << 20


def now_usec() -> int:
    return time.monotonic_ns() // 1000


def set_name(name: str) -> None:
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(name[:15])
    except OSError:
        pass


def say(line: str) -> None:
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        os._exit(0)     # nobody listens any more: the benchmark is gone


def hold_forever() -> None:
    while True:
        time.sleep(3600)


def filled(nbytes: int) -> list:
    """``nbytes`` of anonymous memory, touched, in chunks: hold the list."""
    return [b"\x5a" * min(HOG_CHUNK_BYTES, nbytes - off) for off in range(0, nbytes, HOG_CHUNK_BYTES)]


def hog(a: argparse.Namespace) -> None:
    set_name(a.name)
    say("ready")
    held = filled(a.prefill)
    done = a.prefill
    say(f"alloc {done} {now_usec()}")
    t0 = time.monotonic()
    base = done
    while not a.cap or done < a.cap:
        n = HOG_CHUNK_BYTES if not a.cap else min(HOG_CHUNK_BYTES, a.cap - done)
        if a.rate:
            # Each chunk is due when the rate says it is complete.
            delay = t0 + (done - base + n) / (a.rate * 1e6) - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        held.append(b"\x5a" * n)
        done += n
        if (done - base) % HOG_REPORT_BYTES < n:
            say(f"alloc {done} {now_usec()}")
    say(f"capped {done} {now_usec()}")
    hold_forever()


def service(a: argparse.Namespace) -> None:
    set_name(a.name)
    mem = bytearray(b"\x33" * a.hold)
    view = memoryview(mem)
    size = os.stat(a.file).st_size
    if a.direct:
        # O_DIRECT: the reads leave no page cache in the arena, so its charged
        # memory is what nobody can reclaim (the buffer must be page aligned).
        fd = os.open(a.file, os.O_RDONLY | os.O_DIRECT)
        buf = mmap.mmap(-1, OP_READ_BYTES)

        def read(off: int) -> None:
            os.preadv(fd, [buf], off)
    else:
        fd = os.open(a.file, os.O_RDONLY)
        # Read the whole file once so it starts cached, charged to this job.
        off = 0
        while off < size:
            off += len(os.pread(fd, 1 << 20, off)) or size

        def read(off: int) -> None:
            os.pread(fd, OP_READ_BYTES, off)
    rng = random.Random(1)
    ops = 0
    period = a.report_ms / 1000
    next_report = time.monotonic() + period
    say("ready")
    say(f"ops 0 {now_usec()}")
    while True:
        read(rng.randrange(0, max(1, size - OP_READ_BYTES)) & ~(PAGE - 1))
        i = rng.randrange(0, max(1, a.hold - OP_SUM_BYTES))
        sum(view[i:i + OP_SUM_BYTES:PAGE])
        ops += 1
        t = time.monotonic()
        if t >= next_report:
            say(f"ops {ops} {now_usec()}")
            next_report = t + period
        time.sleep(SERVICE_PAUSE_S)


def mapped(a: argparse.Namespace) -> None:
    set_name(a.name)
    fd = os.open(a.file, os.O_RDONLY)
    size = os.fstat(fd).st_size
    m = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    os.close(fd)
    pages = size // PAGE
    # Fault the whole file in once, so it starts cached, charged to this job.
    for p in range(pages):
        m[p * PAGE]
    counts = [0] * a.threads

    def reader(i: int) -> None:
        rng = random.Random(3 + i)
        while True:
            for _ in range(64):
                m[rng.randrange(pages) * PAGE]
            counts[i] += 64

    for i in range(1, a.threads):
        threading.Thread(target=reader, args=(i,), daemon=True).start()
    say("ready")
    say(f"ops 0 {now_usec()}")

    def report() -> None:
        while True:
            time.sleep(a.report_ms / 1000)
            say(f"ops {sum(counts)} {now_usec()}")
    threading.Thread(target=report, daemon=True).start()
    reader(0)


class Counter:
    """Operations done, reported every ``report_ms`` from a thread of its own."""

    def __init__(self, report_ms: int) -> None:
        self.n = 0
        self.period = report_ms / 1000
        say(f"ops 0 {now_usec()}")
        threading.Thread(target=self._report, daemon=True).start()

    def _report(self) -> None:
        while True:
            time.sleep(self.period)
            say(f"ops {self.n} {now_usec()}")


STREAM_READ_BYTES = 1 << 20


def stream(a: argparse.Namespace) -> None:
    set_name(a.name)
    held = filled(a.hold)   # noqa: F841 - held while streaming
    fd = os.open(a.file, os.O_RDONLY)
    if a.mmap:
        # a table scan: the file through a mapping, a page at a time, start
        # to end, in a loop (each MiB one operation)
        size = os.fstat(fd).st_size
        m = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        os.close(fd)
        say("ready")
        c = Counter(a.report_ms)
        per = STREAM_READ_BYTES // PAGE
        while True:
            for p in range(size // PAGE):
                m[p * PAGE]
                if p % per == per - 1:
                    c.n += 1
    say("ready")
    c = Counter(a.report_ms)
    while True:
        off = 0
        while True:
            n = len(os.pread(fd, STREAM_READ_BYTES, off))
            if not n:
                break
            off += n
            c.n += 1


def build(a: argparse.Namespace) -> None:
    set_name(a.name)
    block = os.urandom(a.piece)
    say("ready")
    c = Counter(a.report_ms)
    while True:
        names = []
        for i in range(max(1, a.total // a.piece)):
            p = os.path.join(a.dir, f"obj-{i}.o")
            with open(p, "wb") as f:
                f.write(block)
            names.append(p)
            c.n += 1
        for p in names:
            with open(p, "rb") as f:
                while f.read(1 << 20):
                    pass
            c.n += 1
        for p in names:
            os.unlink(p)


WRITE_BLOCK_BYTES = 1 << 20


def write(a: argparse.Namespace) -> None:
    """Buffered writes of a ``--total`` file in ``--dir``, 1 MiB at a time,
    then unlink it, in a loop: a backup or a download to a slow disk. An
    op is a MiB written."""
    set_name(a.name)
    block = os.urandom(WRITE_BLOCK_BYTES)
    path = os.path.join(a.dir, "written.dat")
    say("ready")
    c = Counter(a.report_ms)
    while True:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for _ in range(max(1, a.total // WRITE_BLOCK_BYTES)):
                os.write(fd, block)
                c.n += 1
        finally:
            os.close(fd)
        os.unlink(path)


SPIN_TURNS = 100_000


def spin(a: argparse.Namespace) -> None:
    set_name(a.name)
    for _ in range(1, a.procs):
        if os.fork() == 0:
            while True:
                pass
    say("ready")
    c = Counter(a.report_ms)
    while True:
        for _ in range(SPIN_TURNS):
            pass
        c.n += 1


def burst(a: argparse.Namespace) -> None:
    set_name(a.name)
    say("ready")
    c = Counter(a.report_ms)
    while True:
        t0 = time.monotonic()
        held = filled(a.bytes)
        time.sleep(a.hold_ms / 1000)
        del held
        c.n += 1
        time.sleep(max(0.0, t0 + a.every_s - time.monotonic()))


def storm(a: argparse.Namespace) -> None:
    set_name(a.name)
    say("ready")
    forked = 0
    while forked < a.max_children:
        pid = os.fork()
        if pid == 0:
            set_name(a.child_name)
            held = b"\x5a" * a.child_bytes  # noqa: F841 (held until killed)
            hold_forever()
        forked += 1
        if forked % 8 == 0:
            say(f"forked {forked} {now_usec()}")
        time.sleep(a.interval_ms / 1000)
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass
    say(f"forked {forked} {now_usec()}")
    while True:
        try:
            os.wait()
        except ChildProcessError:
            time.sleep(1)


# The fleet starts its sleepers this many at a time: each batch is started,
# waited for until asleep, then moved into its jobs.
FLEET_BATCH = 256
# How long a batch may take to fall asleep.
FLEET_SETTLE_S = 30.0


def fleet(a: argparse.Namespace) -> None:
    """One ``sleep`` per job, cheap enough for 10,000 jobs in a 1 GiB arena.

    Each ``sleep`` starts here, in the fleet's own cgroup (outside the
    arena), and is moved into its job's cgroups only once it is asleep:
    the pages it touched while starting stay charged where they were touched
    (a charge does not follow a task that moves), so a job holds a real,
    live process and is charged next to nothing (an ``exec`` in the job
    costs it about 180 KiB: page tables, stack, libc's data)."""
    set_name(a.name)
    sleep = "/bin/sleep" if os.path.exists("/bin/sleep") else "/usr/bin/sleep"
    with open(a.cgroups) as f:
        groups = [line.split() for line in f if line.strip()]
    for i in range(0, len(groups), FLEET_BATCH):
        batch = groups[i:i + FLEET_BATCH]
        pids = [os.posix_spawn(sleep, ["sleep", "3600"], {}) for _ in batch]
        late = wait_asleep([proc_pid(p) for p in pids], FLEET_SETTLE_S)
        if late:
            say(f"error: {len(late)} sleep process(es) did not fall asleep within {FLEET_SETTLE_S:g} s "
                f"(pid {late[0]})")
            sys.exit(1)
        for pid, targets in zip(pids, batch):
            for t in targets:
                fd = os.open(os.path.join(t, "cgroup.procs"), os.O_WRONLY)
                try:
                    os.write(fd, str(pid).encode())
                finally:
                    os.close(fd)
    say("ready")
    while True:
        try:
            os.wait()
        except ChildProcessError:
            time.sleep(1)


def proc_pid(pid: int) -> int:
    """``pid`` (in this process's pid namespace) as ``/proc`` names it: they
    differ in a pid namespace of its own under the host's ``/proc`` (the
    namespace view the benchmark gives earlyoom and nohang). A pidfd's
    fdinfo says the pid in the namespace of the ``/proc`` read."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return pid
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("Pid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    finally:
        os.close(fd)
    return pid


def asleep(pid: int) -> bool:
    """Whether ``pid`` runs ``sleep`` and sleeps in it: its exec and start
    are over (``wchan`` names the nanosleep, where the kernel shows it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open(f"/proc/{pid}/wchan") as f:
            wchan = f.read().strip()
    except OSError:
        return False
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    state = stat[stat.rindex(")") + 2:].split(" ", 1)[0]
    return comm == "sleep" and state == "S" and (wchan in ("", "0") or "nanosleep" in wchan)


def wait_asleep(pids: list, timeout_s: float) -> list:
    """Wait until every pid is asleep in ``sleep``; the pids that were not
    within ``timeout_s``."""
    end = time.monotonic() + timeout_s
    left = list(pids)
    while left:
        left = [p for p in left if not asleep(p)]
        if not left or time.monotonic() > end:
            break
        time.sleep(0.002)
    return left


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="workload")
    sub = top.add_subparsers(dest="role", required=True)
    h = sub.add_parser("hog")
    h.add_argument("--prefill", type=int, default=0)
    h.add_argument("--rate", type=float, default=0.0, help="MB/s after the prefill; 0 = as fast as possible")
    h.add_argument("--cap", type=int, default=0)
    h.add_argument("--name", default="oomk-hog")
    s = sub.add_parser("service")
    s.add_argument("--hold", type=int, required=True)
    s.add_argument("--file", required=True)
    s.add_argument("--direct", action="store_true", help="read the file with O_DIRECT (no page cache)")
    s.add_argument("--report-ms", type=int, default=100)
    s.add_argument("--name", default="oomk-svc")
    mp = sub.add_parser("mapped")
    mp.add_argument("--file", required=True)
    mp.add_argument("--report-ms", type=int, default=100)
    mp.add_argument("--threads", type=int, default=2)
    mp.add_argument("--name", default="oomk-mapped")
    f = sub.add_parser("storm")
    f.add_argument("--child-bytes", type=int, required=True)
    f.add_argument("--interval-ms", type=float, default=10.0)
    f.add_argument("--max-children", type=int, default=200)
    f.add_argument("--name", default="oomk-storm")
    f.add_argument("--child-name", default="oomk-child")
    fl = sub.add_parser("fleet")
    fl.add_argument("--cgroups", required=True, help="a file: one line per child, its cgroup folders")
    fl.add_argument("--name", default="oomk-fleet")
    st = sub.add_parser("stream")
    st.add_argument("--file", required=True)
    st.add_argument("--hold", type=int, default=0, help="anonymous memory to hold while streaming")
    st.add_argument("--mmap", action="store_true", help="read the file through a mapping, a page at a time")
    st.add_argument("--report-ms", type=int, default=100)
    st.add_argument("--name", default="oomk-load")
    b = sub.add_parser("build")
    b.add_argument("--dir", required=True)
    b.add_argument("--total", type=int, required=True)
    b.add_argument("--piece", type=int, default=2 << 20)
    b.add_argument("--report-ms", type=int, default=100)
    b.add_argument("--name", default="oomk-load")
    w = sub.add_parser("write")
    w.add_argument("--dir", required=True)
    w.add_argument("--total", type=int, required=True)
    w.add_argument("--report-ms", type=int, default=100)
    w.add_argument("--name", default="oomk-load")
    sp = sub.add_parser("spin")
    sp.add_argument("--procs", type=int, default=1)
    sp.add_argument("--report-ms", type=int, default=100)
    sp.add_argument("--name", default="oomk-load")
    bu = sub.add_parser("burst")
    bu.add_argument("--bytes", type=int, required=True)
    bu.add_argument("--hold-ms", type=int, default=500)
    bu.add_argument("--every-s", type=float, default=5.0)
    bu.add_argument("--report-ms", type=int, default=100)
    bu.add_argument("--name", default="oomk-load")
    return top


def main() -> None:
    a = parser().parse_args()
    roles = {"hog": hog, "service": service, "mapped": mapped, "storm": storm, "fleet": fleet,
             "stream": stream, "build": build, "write": write, "spin": spin, "burst": burst}
    roles[a.role](a)


if __name__ == "__main__":
    main()
