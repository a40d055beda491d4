"""The one reader of kernel files: procfs, cgroupfs, sysctl, tracefs.

Each shape of file the kernel writes is parsed here once:

* a single value (``memory.max``, ``oom_score_adj``): ``read_int``;
* ``Key:  N kB`` fields (``/proc/meminfo``, ``/proc/PID/status``):
  ``read_kb_fields``, in bytes unless asked for kB;
* ``key N`` lines (``memory.stat``, ``memory.events``, ``memory.oom_control``,
  ``/proc/vmstat``): ``read_keyed``;
* a pid list (``cgroup.procs``): ``read_pids``;
* PSI totals (``/proc/pressure/memory``, ``memory.pressure``):
  ``read_psi_totals``;
* anything else as text: ``read_text``.

A caller that holds a file open and reads it again and again parses what it
read with ``parse_kb_fields`` or ``parse_keyed``; ``HeldFile`` holds one
open for it (the files every wake reads: ``/proc/meminfo``,
``/proc/vmstat``, the domain's ``memory.pressure``). ``pick_keyed`` takes a
few keys of a long ``key N`` text without parsing the rest.

What a file belongs to, a process or a cgroup, can go away at any time: every
reader raises ``Vanished`` then, and this module alone decides which errors
mean "gone" (``GONE_ERRNOS``). Files are opened through this module's
``open``, so that a test can stand in for every kernel read at one place.
"""
from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterable, Iterator

# What reading a file of a process or cgroup that is going away gives:
# ENOENT (removed before the open), ENODEV (a cgroup's file opened before its
# rmdir and read after), ESRCH (a process that exited between the open and
# the read), EINVAL (some files of an exiting task), ENOTDIR (a cgroup folder
# replaced by a file).
GONE_ERRNOS = frozenset((errno.ENOENT, errno.ENODEV, errno.ESRCH, errno.EINVAL, errno.ENOTDIR))

# One read of a kernel file asks for this much: most fit in one.
READ_CHUNK_BYTES = 16 << 10


class Vanished(FileNotFoundError):
    """What a file belonged to, a process or a cgroup, is gone: pass it over.

    Whatever its errno, a FileNotFoundError, so that callers that already
    pass over a missing file pass over a vanished one too."""


@contextlib.contextmanager
def vanishing(path: str) -> Iterator[None]:
    """Turn an error meaning "gone" (``GONE_ERRNOS``) in the block into
    ``Vanished``: the one place that decides what "gone" is."""
    try:
        yield
    except Vanished:
        raise
    except OSError as e:
        if e.errno in GONE_ERRNOS:
            raise Vanished(e.errno, e.strerror, e.filename or path) from None
        raise


def read_text(path: str, max_bytes: int | None = None) -> str:
    """A kernel file's text; raises ``Vanished`` if what it belongs to is
    gone. Bytes that are not UTF-8 (a process may name itself anything, a
    boot loader pass anything) are replaced, not an error. ``max_bytes``
    reads no more than that many bytes of a file that may be long.

    The text is as the kernel wrote it: a ``\r`` is not turned into a line
    end (a cgroup or process name may hold one). Split lines with
    ``lines()``, never ``str.splitlines()``, which also splits on ``\r``,
    ``\v``, ``\f``, ``\x1c``-``\x1e``, ``\x85`` and U+2028/2029: all of
    them can be in a name."""
    with vanishing(path):
        if max_bytes is None:
            # Unbuffered, in chunks until an empty read: a third faster
            # than a text file's read, and a listing makes thousands.
            with open(path, "rb", buffering=0) as f:
                data = f.read(READ_CHUNK_BYTES)
                if data:
                    more = f.read(READ_CHUNK_BYTES)
                    if more:
                        parts = [data, more]
                        while more:
                            more = f.read(READ_CHUNK_BYTES)
                            parts.append(more)
                        data = b"".join(parts)
            return data.decode("utf-8", errors="replace")
        with open(path, "rb") as f:
            return f.read(max_bytes).decode("utf-8", errors="replace")


class HeldFile:
    """A kernel file kept open and read from its start each time
    (``pread``): the open and the close that ``read_text`` makes are two
    system calls of three, and on a busy or emulated machine (TCG) they
    cost more than the read. For files read on every wake, that are never
    replaced by another file at the same path while open (procfs files;
    a cgroup's file, until the cgroup is removed).

    A read through the held descriptor that fails (what the file belonged
    to is gone: a cgroup removed, maybe made anew at the same path) opens
    the path again and reads that, as ``read_text`` would; only that
    failing raises (``Vanished`` if gone). Reads from several threads are
    safe (``pread`` keeps no offset); ``close()`` is for the owner."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._f = None

    def read(self) -> str:
        f = self._f
        if f is not None:
            try:
                return _pread_all(f.fileno())
            except OSError:
                self.close()
        with vanishing(self.path):
            f = self._f = open(self.path, "rb", buffering=0)
            try:
                return _pread_all(f.fileno())
            except OSError:
                self.close()
                raise

    def close(self) -> None:
        f, self._f = self._f, None
        if f is not None:
            f.close()


def _pread_all(fd: int) -> str:
    data = os.pread(fd, READ_CHUNK_BYTES, 0)
    if len(data) == READ_CHUNK_BYTES:
        parts = [data]
        while data:
            data = os.pread(fd, READ_CHUNK_BYTES, sum(map(len, parts)))
            parts.append(data)
        data = b"".join(parts)
    return data.decode("utf-8", errors="replace")


def lines(text: str) -> list[str]:
    """The lines of a kernel file: split on ``\n`` alone, the one line end
    the kernel writes and the one character it refuses in a cgroup's name."""
    out = text.split("\n")
    if out and out[-1] == "":
        out.pop()
    return out


def read_int(path: str, read: Callable[[str], str] | None = None) -> int | None:
    """A file of one integer, such as ``memory.max`` or ``oom_score_adj``;
    None for ``max`` (no limit). ValueError for anything else. ``read``
    reads it instead of ``read_text`` (a ``HeldFile``'s, for one read on
    every wake)."""
    text = (read or read_text)(path).strip()
    return None if text == "max" else int(text)


def parse_kb_fields(text: str, keys: Iterable[str] | None = None, *, kb: bool = False) -> dict[str, int]:
    """The ``Key:  N kB`` fields of a text in bytes (in kB with ``kb``); a
    field of one number without a unit (a count, such as ``Threads`` or
    ``HugePages_Total``) as it is. Other lines (``Name:``, ``Uid:``) are
    left out, and so is every key not in ``keys`` if it is given (those
    are found by search, not by splitting every line: a listing reads a
    ``status`` of some 55 lines for 3 of them)."""
    scale = 1 if kb else 1024
    out = {}
    found = ((line.partition(":")[::2] for line in lines(text)) if keys is None
             else _lines_of(text, keys, ":"))
    for key, rest in found:
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            out[key] = int(parts[0]) * scale
        elif len(parts) == 1 and parts[0].lstrip("-").isdigit():
            out[key] = int(parts[0])
    return out


def _lines_of(text: str, keys: Iterable[str], sep: str) -> Iterator[tuple[str, str]]:
    """(key, the rest of its line) for each of ``keys`` that begins a line
    of ``text`` followed by ``sep``, the first such line; found by search.
    A key that could not begin such a line (empty, or holding ``sep`` or a
    line end) is not looked for."""
    for key in keys:
        if not key or sep in key or "\n" in key:
            continue
        head = key + sep
        if text.startswith(head):
            at = len(head)
        else:
            at = text.find("\n" + head)
            if at < 0:
                continue
            at += len(head) + 1
        end = text.find("\n", at)
        yield key, text[at:] if end < 0 else text[at:end]


def read_kb_fields(path: str, keys: Iterable[str] | None = None, *, kb: bool = False) -> dict[str, int]:
    """``parse_kb_fields`` of a file such as ``/proc/meminfo`` or
    ``/proc/PID/status``; raises ``Vanished`` if it is gone."""
    return parse_kb_fields(read_text(path), keys, kb=kb)


def parse_keyed(text: str) -> dict[str, int]:
    """The ``key N`` lines of a text; lines of another shape are left out."""
    out = {}
    for line in lines(text):
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def pick_keyed(text: str, keys: Iterable[str]) -> dict[str, int]:
    """``parse_keyed(text)`` of ``keys`` alone, found by search: a long file
    such as ``/proc/vmstat`` (some 180 lines) read for one or two counters
    is not split into lines: the key and its number apart by one space, as
    the kernel writes them. A key that is not there, or whose line is of
    another shape, is left out."""
    out = {}
    for key, rest in _lines_of(text, keys, " "):
        parts = rest.split()
        if len(parts) == 1 and parts[0].lstrip("-").isdigit() and key.split() == [key]:
            out[key] = int(parts[0])
    return out


def read_keyed(path: str, read: Callable[[str], str] | None = None) -> dict[str, int]:
    """``parse_keyed`` of a file such as ``memory.stat``, ``memory.events``,
    ``cgroup.events``, ``memory.oom_control`` or ``/proc/vmstat``; raises
    ``Vanished`` if it is gone. ``read`` as for ``read_int``."""
    return parse_keyed((read or read_text)(path))


class HeldFiles:
    """``HeldFile``s by path, at most ``limit`` (past it, all are closed and
    held afresh): ``read`` for the files one owner reads on every wake."""

    def __init__(self, limit: int = 16) -> None:
        self.limit = limit
        self._held: dict[str, HeldFile] = {}

    def read(self, path: str) -> str:
        held = self._held.get(path)
        if held is None:
            if len(self._held) >= self.limit:
                self.close()
            held = self._held[path] = HeldFile(path)
        return held.read()

    def close(self) -> None:
        held, self._held = self._held, {}
        for h in held.values():
            h.close()


def read_pids(path: str) -> list[int]:
    """The pids of a ``cgroup.procs`` (or ``tasks``), in the file's order;
    raises ``Vanished`` if the cgroup is gone."""
    return [int(x) for x in read_text(path).split()]


def read_psi_totals(path: str) -> dict[str, int]:
    """``{"some": usec, "full": usec}``: the ``total=`` stall times of a PSI
    file (``/proc/pressure/memory``, ``memory.pressure``); a line without
    one is left out. Raises ``Vanished`` if it is gone."""
    return parse_psi_totals(read_text(path))


def parse_psi_totals(text: str) -> dict[str, int]:
    """``read_psi_totals`` of a PSI file's text."""
    out = {}
    for line in lines(text):
        kind, *fields = line.split() or [""]
        for field in fields:
            k, _, v = field.partition("=")
            if k == "total":
                out[kind] = int(v)
    return out
