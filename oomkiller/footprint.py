"""The daemon's own memory: keep what it needs resident, give back the rest.

The killer must keep working under the pressure it fights, so its pages must
not be reclaimed: it locks them. bcc's compiler (libLLVM and libclang-cpp:
about 80 MB resident) is never mapped here: a short-lived child compiles
and loads the BPF program (``sources/bpfload``). So, after the sources have
started:

1. the C heap is trimmed, and the pages of any compiler library something
   did map are paged out (``MADV_PAGEOUT``: they are file-backed, nothing
   is lost) and left unlocked;
2. every other mapping is locked as it is faulted in (``mlock2`` with
   ``MLOCK_ONFAULT``), and, if that worked, so is every future one
   (``mlockall(MCL_FUTURE | MCL_ONFAULT)``): the working set stays resident
   without pre-faulting or pinning what is never touched.
"""
from __future__ import annotations

import ctypes
import os

from .files import lines, read_kb_fields, read_text

MCL_FUTURE, MCL_ONFAULT = 2, 4
MLOCK_ONFAULT = 1
MADV_PAGEOUT = 21           # Linux 5.4

# Only bcc's compiler uses these; the loaded program, its maps and perf
# buffers live in the kernel and in libbcc, which stays locked.
COMPILER_LIBS = ("libLLVM", "libclang", "libz3", "libxml2", "libicu")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.mlock2.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint]    # glibc 2.27


def mappings(maps_path: str = "/proc/self/maps") -> list[tuple[int, int, str]]:
    out = []
    for line in lines(read_text(maps_path)):
        parts = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        out.append((lo, hi, parts[5].strip() if len(parts) > 5 else ""))
    return out


def is_compiler(name: str) -> bool:
    return any(os.path.basename(name).startswith(lib) for lib in COMPILER_LIBS)


def status_bytes(keys: tuple[str, ...] = ("VmRSS", "RssAnon", "RssFile", "VmLck"),
                 path: str = "/proc/self/status") -> dict[str, int]:
    return read_kb_fields(path, keys)


def release_compiler() -> int:
    """Page out the compiler's libraries and trim the heap; returns the
    number of compiler bytes that were mapped."""
    mapped = 0
    for lo, hi, name in mappings():
        if is_compiler(name):
            mapped += hi - lo
            _libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), MADV_PAGEOUT)
    if hasattr(_libc, "malloc_trim"):   # glibc
        _libc.malloc_trim(0)
    return mapped


def lock_resident() -> list[str]:
    """Lock every mapping but the compiler's, as faulted, and (only if that
    all worked) every future one: with a memlock limit too small, locking
    future mappings would make later allocations fail."""
    failed, err = 0, 0
    for lo, hi, name in mappings():
        if is_compiler(name) or name == "[vsyscall]":
            continue
        if _libc.mlock2(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), MLOCK_ONFAULT) != 0:
            failed, err = failed + 1, ctypes.get_errno()
    if failed:
        return [f"cannot lock {failed} mappings: {os.strerror(err)} "
                "(raise LimitMEMLOCK or give CAP_IPC_LOCK); future memory left unlocked"]
    if _libc.mlockall(MCL_FUTURE | MCL_ONFAULT) != 0:
        return [f"cannot lock future memory: {os.strerror(ctypes.get_errno())}"]
    return []


# The killer must get the CPU before the workloads it judges (the systemd
# unit sets the same Nice=).
OWN_NICE = -10


M_ARENA_MAX = -8


def one_malloc_arena() -> None:
    """Keep every thread on glibc's main malloc arena. Each thread that
    allocates would otherwise get an arena of its own, a 64 MB reservation
    that ``mlockall(MCL_FUTURE)`` counts against RLIMIT_MEMLOCK in full
    (three writer threads took VmLck from 58 to 250 MB). Call it before
    any thread starts; the threads here allocate little and take turns on
    the GIL anyway."""
    if hasattr(_libc, "mallopt"):
        _libc.mallopt(M_ARENA_MAX, 1)


def protect_self() -> tuple[list[str], dict[str, int], dict[str, int]]:
    """oom_score_adj -1000, nice -10, compiler released, the rest locked.
    Returns (problems, memory before, memory after)."""
    problems = []
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) > OWN_NICE:
            os.setpriority(os.PRIO_PROCESS, 0, OWN_NICE)
    except OSError as e:
        problems.append(f"cannot set nice {OWN_NICE}: {e.strerror} (needs CAP_SYS_NICE)")
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("-1000")
    except OSError as e:
        problems.append(f"cannot set oom_score_adj -1000: {e.strerror} (needs CAP_SYS_RESOURCE)")
    before = status_bytes()
    release_compiler()
    problems += lock_resident()
    return problems, before, status_bytes()
