"""Output that never holds up the kill loop.

Log lines and decision records go through bounded queues to writer threads.
A journal that stalls under the very pressure being relieved, a FIFO whose
reader stopped reading, a full disk: each only holds up its writer thread,
and when a queue is full the line is dropped and counted, never waited for.
``info`` shows the counts.

The record file (``--json-log``) is opened with care: never through a
symlink (``O_NOFOLLOW``), never into a file another user owns or a hard
link to one, and a FIFO is opened by its writer thread, so a FIFO with no
reader does not hang the start.
"""
from __future__ import annotations

import errno
import logging
import os
import queue
import re
import stat
import sys
import threading
from typing import Callable, Mapping, TextIO

# Lines waiting for a writer. A decision record is a few KB: this is a few MB
# at most, and a burst of kills is far fewer records than this.
QUEUE_LINES = 1024

# The writer threads do nothing but write: they need little stack.
THREAD_STACK_BYTES = 256 << 10


class OutputPathError(ValueError):
    """A record file that must not be written (the message says why)."""


def start_thread(target: Callable[[], None], name: str) -> threading.Thread:
    """A daemon thread with a small stack (the daemon locks what it faults in)."""
    old = threading.stack_size(THREAD_STACK_BYTES)
    try:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
    finally:
        threading.stack_size(old)
    return t


class LoopHold:
    """A thread that gives way while the kill loop wakes: the loop calls
    ``hold`` when it wakes and ``release`` when it is done; the thread waits
    on ``_go`` (with a bound of its own) where it can stop. Its reads would
    otherwise queue the loop's for the GIL: each read the loop makes gives
    the GIL away, and the other thread could keep it up to the interpreter's
    switch interval, 5 ms, every time."""

    def __init__(self) -> None:
        # cleared while the loop wakes
        self._go = threading.Event()
        self._go.set()

    def hold(self) -> None:
        self._go.clear()

    def release(self) -> None:
        self._go.set()

    @property
    def held(self) -> bool:
        return not self._go.is_set()


class LineWriter:
    """Writes lines to one file descriptor from its own thread.

    ``write()`` never blocks: it queues the line, or drops and counts it when
    the queue is full. ``opener``, if given, opens the descriptor in the
    writer thread (and again after the reader of a FIFO went away)."""

    def __init__(self, name: str, fd: int | None = None, opener: Callable[[], int] | None = None,
                 max_lines: int = QUEUE_LINES) -> None:
        self.name = name
        self._fd = fd
        self._opener = opener
        self._q: queue.Queue[bytes | None] = queue.Queue(max_lines)
        self.written = 0
        self.dropped = 0
        self.errors = 0
        self.last_error = ""
        self._thread = start_thread(self._run, f"oomkiller-{name}")

    def write(self, text: str) -> None:
        try:
            self._q.put_nowait(text.encode("utf-8", "replace"))
        except queue.Full:
            self.dropped += 1

    def flush(self) -> None:
        """Nothing to do: lines leave through the writer thread."""

    def stats(self) -> dict[str, int | str]:
        out: dict[str, int | str] = {"written": self.written, "dropped": self.dropped, "errors": self.errors,
                                     "queued": self._q.qsize()}
        if self.last_error:
            out["last_error"] = self.last_error
        return out

    def close(self, timeout_s: float = 1.0) -> None:
        """Let the queue drain for up to ``timeout_s``, then leave the thread
        (a daemon thread stuck in a write does not keep the process alive)."""
        try:
            self._q.put(None, timeout=timeout_s)
        except queue.Full:
            return
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            data = self._q.get()
            if data is None:
                break
            try:
                if self._fd is None and self._opener is not None:
                    self._fd = self._opener()
                if self._fd is None:
                    raise OSError(errno.EBADF, "no file to write to")
                _write_all(self._fd, data)
                self.written += 1
            except OSError as e:
                self.errors += 1
                self.last_error = f"{e.strerror or e}"
                if e.errno == errno.EPIPE and self._opener is not None:
                    os.close(self._fd)          # the FIFO's reader left: wait for the next one
                    self._fd = None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def open_record_file(path: str) -> LineWriter:
    """The writer of decision records: ``-`` is stdout, else ``path``.

    Refused, with the reason: a symlink; a file owned by another user, or
    linked to more than one name; anything but a regular file or a FIFO."""
    if path == "-":
        return LineWriter("records", fd=1)
    _check_folders(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise OutputPathError(f"{path}: {e.strerror}") from None
    if st is not None:
        _check_existing(path, st)
        if stat.S_ISFIFO(st.st_mode):
            return LineWriter("records", opener=lambda: _open_fifo(path))
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o640)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OutputPathError(f"{path} is a symlink: refused (name the file itself)") from None
        raise OutputPathError(f"{path}: {e.strerror}") from None
    try:
        _check_existing(path, os.fstat(fd))
    except OutputPathError:
        os.close(fd)
        raise
    os.set_blocking(fd, True)
    return LineWriter("records", fd=fd)


def _check_folders(path: str) -> None:
    """Every folder on the way to ``path``, as written, must be one that no
    one else can change under us: a folder owned by root or by us and not
    writable by others (unless sticky, like /tmp), or a symlink owned by root
    or us (like /var/run). Otherwise another user could point a name on the
    way at a folder of ours (O_NOFOLLOW guards only the last name)."""
    me = os.geteuid()
    parts = os.path.abspath(path).split("/")[1:-1]
    here = "/"
    for part in parts:
        here = os.path.join(here, part)
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            return          # the open says so
        except OSError as e:
            raise OutputPathError(f"{here}: {e.strerror}") from None
        if st.st_uid not in (0, me):
            raise OutputPathError(f"{here} is owned by uid {st.st_uid}: another user could redirect the records "
                                  "(choose a folder only root or this daemon's user owns)")
        if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            raise OutputPathError(f"{here} may be written by other users (mode {stat.S_IMODE(st.st_mode):o}): "
                                  "another user could redirect the records")


def _check_existing(path: str, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise OutputPathError(f"{path} is a symlink: refused (name the file itself)")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
        raise OutputPathError(f"{path} is not a regular file or a FIFO ('-' writes to stdout)")
    if st.st_uid != os.geteuid():
        raise OutputPathError(f"{path} is owned by uid {st.st_uid}, not by this daemon: refused")
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
        raise OutputPathError(f"{path} has {st.st_nlink} links: refused (another name may be someone else's)")


def _open_fifo(path: str) -> int:
    """In the writer thread: blocks until the FIFO has a reader."""
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _check_existing(path, os.fstat(fd))
    except OutputPathError as e:
        os.close(fd)
        raise OSError(errno.EPERM, str(e)) from None
    return fd


class QueueLogHandler(logging.Handler):
    """A logging handler whose lines go through a LineWriter."""

    def __init__(self, writer: LineWriter) -> None:
        super().__init__()
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.writer.write(self.format(record) + "\n")
        except Exception:       # a bad format argument must not reach the loop
            self.writer.dropped += 1


# syslog's notice, between info and warning: a kill is news, not a fault.
NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")

# log_level's words, from the most said to the least.
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "notice": NOTICE, "warning": logging.WARNING,
          "error": logging.ERROR}


def syslog_priority(levelno: int) -> int:
    """A logging level as a syslog priority (sd-daemon(3)'s ``<N>``)."""
    for floor, priority in ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (NOTICE, 5),
                            (logging.INFO, 6)):
        if levelno >= floor:
            return priority
    return 7


_STREAM_ID = re.compile(r"([0-9]{1,20}):([0-9]{1,20})", re.ASCII)


def stderr_is_journal(environ: Mapping[str, str] | None = None, fd: int = 2,
                      warn: Callable[[str], None] | None = None) -> bool:
    """True when ``fd`` is the journal's stream: systemd sets
    ``$JOURNAL_STREAM`` to its ``device:inode``, and only a match with the
    descriptor's own fstat counts (sd-daemon(3)): the variable is inherited
    by children whose stderr went elsewhere. A value that is not
    ``device:inode`` is told to ``warn``."""
    environ = os.environ if environ is None else environ
    value = environ.get("JOURNAL_STREAM")
    if not value:
        return False
    m = _STREAM_ID.fullmatch(value) if isinstance(value, str) else None
    if not m:
        if warn is not None:
            shown = value[:60] + ("..." if len(value) > 60 else "") if isinstance(value, str) else type(value).__name__
            warn(f"ignoring JOURNAL_STREAM={shown!r}: not DEVICE:INODE; log lines carry no priority")
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(m.group(1)), int(m.group(2)))


class PriorityFormatter(logging.Formatter):
    """Each line prefixed with its syslog priority, ``<4>`` for a warning:
    the journal reads the prefix off a stream and files the line at that
    priority. Every line of a message gets it (a traceback too)."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return prefix + super().format(record).replace("\n", "\n" + prefix)


def setup_logging(level: int = logging.INFO, stream: TextIO | None = None,
                  environ: Mapping[str, str] | None = None) -> LineWriter | None:
    """Log lines at ``level`` and above to ``stream``, or by default to
    stderr through a writer thread and a bounded queue (a stalled journal
    must not stall a kill). When stderr is the journal's stream
    (``stderr_is_journal``), each line carries its priority."""
    writer = None
    problems: list[str] = []
    if stream is None:
        writer = LineWriter("log", fd=sys.stderr.fileno())
        handler: logging.Handler = QueueLogHandler(writer)
        journal = stderr_is_journal(environ, sys.stderr.fileno(), problems.append)
    else:
        handler = logging.StreamHandler(stream)
        journal = False
    handler.setFormatter(PriorityFormatter("%(message)s") if journal else logging.Formatter("%(message)s"))
    root = logging.getLogger("oomkiller")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    for problem in problems:
        root.warning("OOM: %s", problem)
    return writer
