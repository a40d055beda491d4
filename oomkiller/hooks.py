"""Hooks: a command of the operator's, run before (``pre_kill``) and after
(``post_kill``) oomkiller signals a job, off the kill loop.

What a hook gets:

* stdin: the decision as one JSON line, the record the daemon writes for it
  (``--json-log``): for ``post_kill`` the finished record; for ``pre_kill``
  the same record as it stands before the signal (its ``victim`` set, no
  ``attempts`` yet, ``result`` empty).
* the environment, clean: ``PATH`` and the ``OOMKILLER_*`` variables of
  ``environment`` below, nothing inherited from the daemon.
* cwd ``/``, no descriptors but 0, 1 and 2 (stdout and stderr are pipes the
  daemon reads, keeping the last ``OUTPUT_TAIL_BYTES`` of each), a session
  and process group of its own, ``oom_score_adj`` 0 and nice 0 (the daemon
  runs at -1000 and -10, and the kernel must be free to kill a hook that
  grows; both are set by the daemon right after the start, since setting
  them in the child before ``exec`` would mean running Python code in a
  forked child of a threaded process).

How it runs: one worker thread takes requests from a bounded queue
(``HOOK_QUEUE``); a request that finds it full is dropped and counted. Each
run has ``hook_timeout_ms``: at that limit the hook's whole process group is
sent SIGKILL. When the hook exits, whatever it left running in its process
group is killed too (start lasting work with ``systemd-run``), and so is
a child that left the group with a session of its own (the daemon is a
child subreaper: ``_sweep_orphans``), so a hook never outlives its run. A non-zero exit, a death by signal, a timeout or a
hook that cannot be started is logged at warning with the tail of its
stderr, and counted (``info``: ``output: hooks``).

The kill loop never waits on a hook, with one bounded exception the
operator asks for: ``pre_kill_wait_ms`` (0, the default: no wait) lets the
kill wait for ``pre_kill`` to finish, at most that long and never past
``hook_timeout_ms``; the signal goes out at the bound whatever the hook is
doing. ``pre_kill`` never runs for the pre-armed kill in the kernel: that
kill has happened when the daemon hears of it (``post_kill`` does run).
No hook runs in a dry run.

Which file may be a hook (``hook_problem``): an absolute path to a regular,
executable file owned by root (or by the daemon's own user when it does
not run as root), not writable by group or others, in folders that are
owned the same way and writable by no one else (a sticky folder such as
``/tmp`` counts as safe: only an entry's owner may replace it), reached
through no symbolic link owned by anyone else (in a sticky folder, whoever
made a name first owns it, and may point it anywhere). Anything else is
refused at start with one line, and checked again before each run; the run
starts the very file checked, not whatever the path leads to by then.
"""
from __future__ import annotations

import errno
import logging
import os
import queue
import selectors
import signal
import stat
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple

from .output import start_thread

log = logging.getLogger("oomkiller")

PRE_KILL = "pre_kill"
POST_KILL = "post_kill"

# Requests waiting for the worker: a hook per kill before and one after,
# and kills are post_kill_delay_ms (500 ms) apart.
HOOK_QUEUE = 8

# What is kept of a hook's stdout and of its stderr: the last this many
# bytes each; the rest is read and thrown away.
OUTPUT_TAIL_BYTES = 4096

# What a warning shows of a failed hook's stderr.
LOG_TAIL_CHARS = 400

# After SIGKILL, how long to wait for the hook to be reaped before moving
# on (a process in uninterruptible sleep dies when it wakes).
REAP_WAIT_S = 1.0

# The only variable a hook inherits besides its own.
HOOK_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# At most this many pids in OOMKILLER_PIDS (the record on stdin has all).
ENV_PIDS_MAX = 64


# -- which file may be a hook ------------------------------------------------------

def _owner_ok(uid: int, euid: int) -> bool:
    return uid == 0 or uid == euid


def _who(euid: int) -> str:
    return "root" if euid == 0 else f"root or uid {euid} (the daemon's user)"


def _folders(path: str) -> list[str]:
    """Every folder above ``path``, nearest first, up to ``/``."""
    out = []
    d = os.path.dirname(path)
    while True:
        out.append(d)
        up = os.path.dirname(d)
        if up == d:
            return out
        d = up


# Symbolic links followed, at most, on the way to a hook (the kernel's own limit).
MAX_LINKS = 40


def _follow(path: str, euid: int) -> Tuple[str, list, Optional[str]]:
    """Follow ``path`` one name at a time as the kernel does: (the file it
    names, every symbolic link met on the way, a problem or None). A link
    is a step of the path like a folder: whoever owns it can point it
    elsewhere at any time, and in a sticky folder such as ``/tmp`` that is
    whoever made it, maybe before the hook was ever put there. So a link
    must be owned as the hook is. (``os.path.realpath`` reads links without
    asking their owner, as the kernel's ``protected_symlinks`` would.)"""
    todo = [p for p in reversed(path.split("/")) if p not in ("", ".")]
    cur, links = "/", []
    while todo:
        name = todo.pop()
        if name == "..":
            cur = os.path.dirname(cur)
            continue
        nxt = os.path.join(cur, name)
        st = os.lstat(nxt)
        if not stat.S_ISLNK(st.st_mode):
            cur = nxt
            continue
        links.append(nxt)
        if len(links) > MAX_LINKS:
            return nxt, links, "too many levels of symbolic links"
        if not _owner_ok(st.st_uid, euid):
            return nxt, links, (f"symbolic link {nxt} is owned by uid {st.st_uid}, who could point it at another "
                                f"program; it must be owned by {_who(euid)}")
        target = os.readlink(nxt)
        if target.startswith("/"):
            cur = "/"
        todo.extend(p for p in reversed(target.split("/")) if p not in ("", "."))
    return cur, links, None


def hook_problem(path: str, euid: Optional[int] = None) -> Optional[str]:
    """Why ``path`` may not be run as a hook, or None. It runs with the
    daemon's privileges, so whoever can change the file, a symbolic link
    or any folder on its way, could run commands as root."""
    return resolve_hook(path, euid)[1]


def resolve_hook(path: str, euid: Optional[int] = None) -> Tuple[Optional[str], Optional[str]]:
    """(the file to run, None), or (None, why ``path`` may not be run as a
    hook): see ``hook_problem``. The file to run is the one checked: the
    path is not followed again, so a link changed after the check cannot
    lead elsewhere."""
    euid = os.geteuid() if euid is None else euid
    if not path.startswith("/"):
        return None, f"{path}: not an absolute path"
    try:
        real, links, problem = _follow(path, euid)
        if problem:
            return None, f"{path}: {problem}"
        st = os.stat(real, follow_symlinks=False)
    except FileNotFoundError:
        return None, f"{path}: no such file"
    except OSError as e:
        return None, f"{path}: {e.strerror or e}"
    where = path if real == path else f"{path} (that is {real})"
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        return None, f"{where}: {kind}, not a program"
    if not st.st_mode & 0o111 or not os.access(real, os.X_OK):
        return None, f"{where}: not executable (chmod 755 it)"
    if not _owner_ok(st.st_uid, euid):
        return None, (f"{where}: owned by uid {st.st_uid}; a hook runs with the daemon's privileges, so it must be "
                      f"owned by {_who(euid)}")
    if st.st_mode & 0o022:
        return None, (f"{where}: writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); anyone who can "
                      "write it could run commands with the daemon's privileges (chmod go-w it)")
    # The folders of the path as written, of each link met, and of the file.
    folders = _folders(path) + [f for link in links for f in _folders(link)] + _folders(real)
    for folder in dict.fromkeys(folders):
        try:
            fs = os.stat(folder)
        except OSError as e:
            return None, f"{where}: folder {folder}: {e.strerror or e}"
        if not _owner_ok(fs.st_uid, euid):
            return None, (f"{where}: folder {folder} is owned by uid {fs.st_uid}, who could replace the hook; "
                          f"it must be owned by {_who(euid)}")
        if fs.st_mode & 0o022 and not fs.st_mode & stat.S_ISVTX:
            return None, (f"{where}: folder {folder} is writable by group or others (mode "
                          f"{stat.S_IMODE(fs.st_mode):04o}), who could replace the hook")
    return real, None


# -- what a hook is told -------------------------------------------------------------

def trigger_word(decision: str, armed: bool = False, simulated: bool = False, term: bool = False) -> str:
    """OOMKILLER_TRIGGER: what made the domain low, in one word."""
    if term:
        return "term_redline"
    if armed:
        return "armed"
    if simulated:
        return "lowmem"
    if decision == "free below redline":
        return "redline"
    if decision.startswith("thrashing"):
        return "thrash"
    if decision.startswith("memory stall"):
        return "stall"
    return "other"


def environment(hook: str, sig: str, record: Mapping[str, Any], *, trigger: str, job_name: str,
                cgroup: str, cgroup_v2: str, score_bytes: int, result: str = "", freed_bytes: int = 0,
                pids: Sequence[int] = ()) -> dict[str, str]:
    """The whole environment of one run. ``job_name`` comes escaped for
    display (``report.printable``); ``cgroup`` is the path as it is."""
    snap = record.get("snapshot") or {}
    env = {
        "PATH": HOOK_PATH,
        "OOMKILLER_HOOK": hook,
        "OOMKILLER_SIGNAL": sig,
        "OOMKILLER_TRIGGER": trigger,
        "OOMKILLER_REASON": str(record.get("decision", "")),
        "OOMKILLER_DOMAIN_NAME": str(record.get("domain", "")),
        "OOMKILLER_JOB": job_name,
        "OOMKILLER_CGROUP": cgroup,
        "OOMKILLER_CGROUP_V2": cgroup_v2,
        "OOMKILLER_SCORE_BYTES": str(score_bytes),
        "OOMKILLER_FREE_BYTES": str(snap.get("free_bytes", "")),
        "OOMKILLER_TOTAL_BYTES": str(snap.get("total_bytes", "")),
        "OOMKILLER_REDLINE_BYTES": str(record.get("redline_bytes", "")),
    }
    if hook == POST_KILL:
        env.update({"OOMKILLER_RESULT": result, "OOMKILLER_FREED_BYTES": str(freed_bytes),
                    "OOMKILLER_PROCS": str(len(pids)),
                    "OOMKILLER_PIDS": " ".join(str(p) for p in list(pids)[:ENV_PIDS_MAX])})
    # No NUL can reach the kernel's execve: a cgroup path cannot hold one,
    # but the values come from outside.
    return {k: v.replace("\0", "") for k, v in env.items()}


# -- running them ---------------------------------------------------------------------

# What the kill loop hands over: a function that makes (stdin, environment).
# The worker calls it, so the loop only queues, even before a signal.
MakeInput = Callable[[], Tuple[bytes, dict]]


@dataclass
class _Request:
    hook: str
    path: str
    make: MakeInput
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class Outcome:
    """How one run ended."""

    hook: str
    path: str
    status: str                 # "ok", "failed", "timed_out", "refused"
    detail: str = ""            # "exit status 1", "killed by SIGSEGV", ...
    stdout_tail: bytes = b""
    stderr_tail: bytes = b""


def _tail(buf: bytes, chunk: bytes) -> bytes:
    buf += chunk
    return buf[-OUTPUT_TAIL_BYTES:]


def _text_tail(data: bytes) -> str:
    """The end of a hook's output for a log line: one line, printable."""
    from .report import printable
    text = data.decode("utf-8", "replace").strip()
    if len(text) > LOG_TAIL_CHARS:
        text = "..." + text[-LOG_TAIL_CHARS:]
    return printable(text)


class Hooks:
    """``pre_kill`` and ``post_kill`` for the kill loop: neither blocks but
    for ``pre_kill_wait_ms`` (see the module docstring)."""

    def __init__(self, pre_kill: str = "", post_kill: str = "", *, timeout_ms: int = 5000,
                 pre_kill_wait_ms: int = 0, max_queue: int = HOOK_QUEUE, euid: Optional[int] = None,
                 proc_root: str = "/proc", on_outcome: Optional[Callable[[Outcome], None]] = None,
                 subreaper: bool = False) -> None:
        self.paths = {PRE_KILL: pre_kill, POST_KILL: post_kill}
        self.timeout_s = timeout_ms / 1000
        self.pre_kill_wait_s = min(pre_kill_wait_ms, timeout_ms) / 1000
        self.euid = os.geteuid() if euid is None else euid
        self.proc_root = proc_root
        self.on_outcome = on_outcome
        self._q: "queue.Queue[Optional[_Request]]" = queue.Queue(max_queue)
        self._lock = threading.Lock()
        self._current: Optional[subprocess.Popen] = None
        self._closing = False
        self._unreaped: list[subprocess.Popen] = []
        self.ran = self.ok = self.failed = self.timed_out = self.dropped = 0
        self.last_error = ""
        self._thread = start_thread(self._run, "oomkiller-hooks") if (pre_kill or post_kill) else None
        # A hook's child that leaves its session (setsid) escapes the group
        # kill. As a child subreaper the daemon gets such orphans as its own
        # children, and each run ends them (``_sweep_orphans``). Only for a
        # process that starts nothing else: the daemon, not a test runner.
        self.subreaper = bool(subreaper and self._thread is not None and become_subreaper())
        self.orphans_killed = 0
        self._orphans_unreaped: list[int] = []

    @property
    def enabled(self) -> bool:
        return self._thread is not None

    def has(self, hook: str) -> bool:
        return bool(self.paths.get(hook))

    # -- the kill loop's side -------------------------------------------------------
    def submit(self, hook: str, make: MakeInput) -> Optional[threading.Event]:
        """Queue one run; its event is set when it has ended. None when the
        hook is not set or the queue was full (counted)."""
        path = self.paths.get(hook)
        if not path or self._thread is None:
            return None
        req = _Request(hook, path, make)
        try:
            self._q.put_nowait(req)
        except queue.Full:
            self.dropped += 1
            return None
        return req.done

    def pre_kill(self, make: MakeInput) -> bool:
        """Run ``pre_kill``; wait for it up to ``pre_kill_wait_ms`` (never
        past ``hook_timeout_ms``). True if it finished within the wait."""
        done = self.submit(PRE_KILL, make)
        if done is None or self.pre_kill_wait_s <= 0:
            return False
        return done.wait(self.pre_kill_wait_s)

    def post_kill(self, make: MakeInput) -> None:
        self.submit(POST_KILL, make)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in self.paths.items() if v}
        out.update({"ran": self.ran, "ok": self.ok, "failed": self.failed, "timed_out": self.timed_out,
                    "dropped": self.dropped, "queued": self._q.qsize()})
        if self.orphans_killed:
            out["orphans_killed"] = self.orphans_killed
        if self.last_error:
            out["last_error"] = self.last_error
        return out

    def close(self, timeout_s: float = 1.0) -> None:
        """Stop: a hook still running is killed with its process group."""
        if self._thread is None:
            return
        self._closing = True
        try:
            self._q.put_nowait(None)
        except queue.Full:
            pass
        with self._lock:
            p = self._current
        if p is not None:
            _kill_group(p)
        self._thread.join(timeout_s)

    # -- the worker -------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            req = self._q.get()
            if req is None or self._closing:
                if req is not None:
                    req.done.set()
                return
            try:
                outcome = self._execute(req)
            except Exception as e:      # noqa: BLE001 - the worker must not die: the queue would fill for good
                outcome = Outcome(req.hook, req.path, "failed", f"{type(e).__name__}: {e}")
            finally:
                req.done.set()
            self._count(outcome)

    def _count(self, o: Outcome) -> None:
        if o.status != "refused":
            self.ran += 1
        if o.status == "ok":
            self.ok += 1
            log.debug("OOM: %s hook %s: ok%s", o.hook, o.path,
                      f": {_text_tail(o.stdout_tail)}" if o.stdout_tail.strip() else "")
        else:
            if o.status == "timed_out":
                self.timed_out += 1
            else:
                self.failed += 1
            tail = o.stderr_tail if o.stderr_tail.strip() else o.stdout_tail
            self.last_error = f"{o.hook}: {o.detail}"
            log.warning("OOM: %s hook %s %s%s", o.hook, o.path,
                        "timed out" if o.status == "timed_out" else "failed",
                        f": {o.detail}" + (f": {_text_tail(tail)}" if tail.strip() else ""))
        if self.on_outcome is not None:
            self.on_outcome(o)

    def _execute(self, req: _Request) -> Outcome:
        for p in list(self._unreaped):
            if p.poll() is not None:
                self._unreaped.remove(p)
        real, problem = resolve_hook(req.path, self.euid)
        if problem or real is None:
            return Outcome(req.hook, req.path, "refused", f"not run: {problem}")
        stdin, env = req.make()
        try:
            p = subprocess.Popen([req.path], executable=real, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, cwd="/", env=env, close_fds=True,
                                 start_new_session=True)
        except OSError as e:
            return Outcome(req.hook, req.path, "failed", f"cannot start it: {e.strerror or e}")
        with self._lock:
            self._current = p
        try:
            self._unprotect(p.pid)
            return self._watch(req, p, stdin)
        finally:
            with self._lock:
                self._current = None
            for f in (p.stdin, p.stdout, p.stderr):
                try:
                    f.close()
                except OSError:
                    pass
            if self.subreaper:
                self._sweep_orphans()

    def _sweep_orphans(self) -> None:
        """End what a run left that escaped its process group: as a child
        subreaper the daemon inherits a hook's orphans, so its children
        outside its own session (hooks run in sessions of their own, and the
        daemon starts nothing else) are those. Each is signalled through a
        pidfd opened and then confirmed still ours, and reaped within
        ORPHAN_REAP_S (the rest on a later run). Rounds, since an orphan's
        own children come to us as it dies."""
        me, my_sid = os.getpid(), os.getsid(0)
        known = {p.pid for p in self._unreaped}
        for _ in range(ORPHAN_ROUNDS):
            found = []
            for pid in _children(me, self.proc_root):
                if pid in known:
                    continue
                try:
                    if os.getsid(pid) == my_sid:
                        continue
                except OSError:
                    continue
                found.append(pid)
            if not found:
                break
            for pid in found:
                try:
                    fd = os.pidfd_open(pid)
                except OSError:
                    continue
                try:
                    # not a pid reused since the scan; a zombie (a child
                    # of the hook's that exited) only wants reaping
                    if pid in _children(me, self.proc_root, only=pid) and _state(pid, self.proc_root) != "Z":
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
                        self.orphans_killed += 1
                        log.warning("OOM: a hook left pid %d running outside its process group: killed", pid)
                except OSError:
                    pass
                finally:
                    os.close(fd)
            self._orphans_unreaped = list(dict.fromkeys(self._orphans_unreaped + found))
            self._reap_orphans(ORPHAN_REAP_S)

    def _reap_orphans(self, within_s: float) -> None:
        end = time.monotonic() + within_s
        while self._orphans_unreaped:
            for pid in list(self._orphans_unreaped):
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done = pid          # not ours to reap (any more)
                if done:
                    self._orphans_unreaped.remove(pid)
            if not self._orphans_unreaped or time.monotonic() >= end:
                return
            time.sleep(0.005)

    def _unprotect(self, pid: int) -> None:
        """What the hook inherited from the daemon and must not keep: its
        oom_score_adj (-1000) and nice (-10)."""
        try:
            fd = os.open(f"{self.proc_root}/{pid}/oom_score_adj", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        except OSError:
            pass        # gone already, or no procfs: nothing to undo
        try:
            if os.getpriority(os.PRIO_PROCESS, pid) < 0:
                os.setpriority(os.PRIO_PROCESS, pid, 0)
        except OSError:
            pass

    def _watch(self, req: _Request, p: subprocess.Popen, stdin: bytes) -> Outcome:
        """Feed stdin, keep the tails of stdout and stderr, and wait for the
        exit or the limit, all in one poll loop: a hook that does not read
        its stdin, or writes without end, holds nothing up."""
        deadline = time.monotonic() + self.timeout_s
        try:
            pidfd = os.pidfd_open(p.pid)
        except OSError as e:
            _kill_group(p)
            self._reap(p)
            return Outcome(req.hook, req.path, "failed", f"cannot watch it: {e.strerror or e}")
        sel = selectors.DefaultSelector()
        out = {p.stdout.fileno(): b"", p.stderr.fileno(): b""}
        pending = memoryview(stdin)
        try:
            for f in (p.stdout, p.stderr, p.stdin):
                os.set_blocking(f.fileno(), False)
            sel.register(pidfd, selectors.EVENT_READ)
            for fd in out:
                sel.register(fd, selectors.EVENT_READ)
            if pending:
                sel.register(p.stdin.fileno(), selectors.EVENT_WRITE)
            else:
                p.stdin.close()
            exited = False
            while not exited:
                left = deadline - time.monotonic()
                if left <= 0 or self._closing:
                    break
                for key, _ev in sel.select(left):
                    fd = key.fd
                    if fd == pidfd:
                        exited = True
                    elif fd in out:
                        if not self._read(fd, out):
                            sel.unregister(fd)
                    else:
                        pending = self._feed(p, pending)
                        if not pending:
                            sel.unregister(fd)
                            p.stdin.close()
            if not exited:
                _kill_group(p)
                self._reap(p)
                why = ("killed as the daemon stopped" if self._closing else
                       f"killed at hook_timeout_ms ({int(self.timeout_s * 1000)} ms)")
                return Outcome(req.hook, req.path, "timed_out", why, out[p.stdout.fileno()],
                               out[p.stderr.fileno()])
            # The hook has exited (not reaped, so its process group cannot
            # be anyone else's yet): nothing it left behind runs on.
            _kill_group(p)
            for fd in out:
                self._read(fd, out, drain=True)
            rc = self._reap(p)
        finally:
            sel.close()
            os.close(pidfd)
        stdout, stderr = out[p.stdout.fileno()], out[p.stderr.fileno()]
        if self._closing and rc == -signal.SIGKILL:
            return Outcome(req.hook, req.path, "timed_out", "killed as the daemon stopped", stdout, stderr)
        if rc == 0:
            return Outcome(req.hook, req.path, "ok", "", stdout, stderr)
        if rc is None:
            detail = "did not end after SIGKILL"
        elif rc < 0:
            try:
                detail = f"killed by {signal.Signals(-rc).name}"
            except ValueError:
                detail = f"killed by signal {-rc}"
        else:
            detail = f"exit status {rc}"
        return Outcome(req.hook, req.path, "failed", detail, stdout, stderr)

    @staticmethod
    def _read(fd: int, out: dict, drain: bool = False) -> bool:
        """Read what is there into the tail; False at end of file."""
        for _ in range(64 if drain else 1):
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not chunk:
                return False
            out[fd] = _tail(out[fd], chunk)
        return True

    @staticmethod
    def _feed(p: subprocess.Popen, pending: memoryview) -> memoryview:
        try:
            n = os.write(p.stdin.fileno(), pending[:65536])
        except BlockingIOError:
            return pending
        except OSError:         # EPIPE: the hook closed its stdin; what it read is its business
            return pending[:0]
        return pending[n:]

    def _reap(self, p: subprocess.Popen) -> Optional[int]:
        try:
            return p.wait(REAP_WAIT_S)
        except subprocess.TimeoutExpired:
            self._unreaped.append(p)     # polled again before the next run
            return None


# prctl(2): PR_SET_CHILD_SUBREAPER
PR_SET_CHILD_SUBREAPER = 36
# A hook's orphans: how many rounds of their own orphans, and how long to
# wait for the SIGKILLed to be reaped before the next run tries again.
ORPHAN_ROUNDS = 8
ORPHAN_REAP_S = 1.0


def become_subreaper() -> bool:
    """Make this process a child subreaper; False where prctl refuses."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _children(ppid: int, proc_root: str = "/proc", only: Optional[int] = None) -> list[int]:
    """The pids whose parent is ``ppid`` (``stat``'s fourth field, after the
    name in parentheses, which may hold anything), among ``only`` if given."""
    out = []
    if only is not None:
        names = [str(only)]
    else:
        try:
            names = [n for n in os.listdir(proc_root) if n.isdigit()]
        except OSError:
            return out
    for name in names:
        try:
            with open(f"{proc_root}/{name}/stat", "rb") as f:
                data = f.read(4096)
            if int(data[data.rindex(b")") + 2:].split()[1]) == ppid:
                out.append(int(name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def _state(pid: int, proc_root: str = "/proc") -> str:
    """A process's state letter (``stat``'s third field), "" if unknown."""
    try:
        with open(f"{proc_root}/{pid}/stat", "rb") as f:
            data = f.read(4096)
        return data[data.rindex(b")") + 2:].split()[0].decode()
    except (OSError, ValueError, IndexError):
        return ""


def _kill_group(p: subprocess.Popen) -> None:
    """SIGKILL the hook's process group; its leader is ours and not yet
    reaped (Popen reaps only in wait or poll), so the group id is still its."""
    if p.returncode is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except OSError as e:
        if e.errno not in (errno.ESRCH, errno.EPERM):
            raise
