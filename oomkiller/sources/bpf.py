"""eBPF source: reclaim and OOM tracepoints, compiled by bcc, as PressureEvents.

The C program (``oomkiller/bpf/oomkiller.bpf.c``) sums reclaim stall per cgroup, sends
one ``struct oom_event`` (``oomkiller/bpf/oomkiller.h``) per cgroup per rate-limit
interval through a perf buffer, and can SIGKILL a task of a pre-armed cgroup
at its first reclaim. ``Event`` below mirrors the struct; ``layout_check_source``
turns the mirror into static asserts that fail to compile if the two drift.

The daemon never imports bcc (importing it alone maps about 60 MB of
LLVM and libbcc): ``start()`` has a short-lived child process compile, load
and attach the program (``bpfload``) and hand back the descriptors that keep
it alive; the maps and the perf buffer are then read through libbpf
(``bpfmaps``).
"""
from __future__ import annotations

import ctypes
import glob
import logging
import mmap
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass

from ..files import read_text
from ..model import EventKind, PressureEvent, Source
from . import SourceUnavailable, bpfload
from .bpfmaps import Map, PerfBuffer

log = logging.getLogger("oomkiller")

# Event kinds: the OOMK_KIND_* values of oomkiller/bpf/oomkiller.h and their names.
KIND_MEMCG_RECLAIM = 1
KIND_DIRECT_RECLAIM = 2
KIND_STALL = 3
KIND_KSWAPD = 4
KIND_RECLAIM_RETRY = 5
KIND_COMPACT_RETRY = 6
KIND_KERNEL_OOM_VICTIM = 7
KIND_ARMED_KILL = 8

KIND_NAMES = {
    KIND_MEMCG_RECLAIM: EventKind.MEMCG_RECLAIM,
    KIND_DIRECT_RECLAIM: EventKind.DIRECT_RECLAIM,
    KIND_STALL: EventKind.STALL,
    KIND_KSWAPD: EventKind.KSWAPD,
    KIND_RECLAIM_RETRY: EventKind.RECLAIM_RETRY,
    KIND_COMPACT_RETRY: EventKind.COMPACT_RETRY,
    KIND_KERNEL_OOM_VICTIM: EventKind.KERNEL_OOM_VICTIM,
    KIND_ARMED_KILL: EventKind.ARMED_KILL,
}
_HEADER_KINDS = {
    "OOMK_KIND_MEMCG_RECLAIM": KIND_MEMCG_RECLAIM,
    "OOMK_KIND_DIRECT_RECLAIM": KIND_DIRECT_RECLAIM,
    "OOMK_KIND_STALL": KIND_STALL,
    "OOMK_KIND_KSWAPD": KIND_KSWAPD,
    "OOMK_KIND_RECLAIM_RETRY": KIND_RECLAIM_RETRY,
    "OOMK_KIND_COMPACT_RETRY": KIND_COMPACT_RETRY,
    "OOMK_KIND_KERNEL_OOM_VICTIM": KIND_KERNEL_OOM_VICTIM,
    "OOMK_KIND_ARMED_KILL": KIND_ARMED_KILL,
}

# Indexes of the per-cpu ``counters`` array (OOMK_COUNTER_*).
COUNTER_RATE_LIMITED = 0
COUNTER_SIGNAL_FAILED = 1
COUNTER_STATE_FULL = 2
COUNTER_OUTSIDE = 3
_HEADER_COUNTERS = {
    "OOMK_COUNTER_RATE_LIMITED": COUNTER_RATE_LIMITED,
    "OOMK_COUNTER_SIGNAL_FAILED": COUNTER_SIGNAL_FAILED,
    "OOMK_COUNTER_STATE_FULL": COUNTER_STATE_FULL,
    "OOMK_COUNTER_OUTSIDE": COUNTER_OUTSIDE,
    "OOMK_COUNTERS": 4,
}

COMM_LEN = 16
PAGE_SIZE_BYTES = mmap.PAGESIZE

# The C program ships inside the package (package data), so an installed
# wheel compiles the same source as a checkout.
DEFAULT_BPF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bpf")
PROGRAM_FILE = "oomkiller.bpf.c"
HEADER_FILE = "oomkiller.h"

# Per-cpu perf ring size in pages. An event is 120 bytes plus an 8-byte
# header; with the per-cgroup rate limit 16 pages hold far more than arrive
# between two polls of the event loop.
PERF_PAGES = 16

# A reclaim that brought back no page at all has failed: the charge path
# retries a few times and then calls the OOM killer.
ARM_MIN_RECLAIMED_PAGES = 1

# -D flag -> tracepoints it needs. A tracepoint missing on some kernel (e.g.
# oom:compact_retry without CONFIG_COMPACTION) leaves its probe out.
TRACEPOINT_FLAGS = {
    "HAVE_TP_MEMCG_RECLAIM": ("vmscan/mm_vmscan_memcg_reclaim_begin", "vmscan/mm_vmscan_memcg_reclaim_end"),
    "HAVE_TP_DIRECT_RECLAIM": ("vmscan/mm_vmscan_direct_reclaim_begin", "vmscan/mm_vmscan_direct_reclaim_end"),
    "HAVE_TP_WAKEUP_KSWAPD": ("vmscan/mm_vmscan_wakeup_kswapd",),
    "HAVE_TP_RECLAIM_RETRY_ZONE": ("oom/reclaim_retry_zone",),
    "HAVE_TP_COMPACT_RETRY": ("oom/compact_retry",),
    "HAVE_TP_MARK_VICTIM": ("oom/mark_victim",),
}
# oom:mark_victim of older kernels carries only the pid; newer ones (and
# Debian's 6.1) add the victim's comm, sizes in kB, uid and oom_score_adj.
_MARK_VICTIM_RSS_FIELDS = ("total_vm;", "anon_rss;", "file_rss;", "shmem_rss;", "uid;", "pgtables;", "oom_score_adj;")
_MARK_VICTIM_COMM_FIELD = "__data_loc char[] comm;"


class Event(ctypes.Structure):
    """Mirror of ``struct oom_event`` in oomkiller/bpf/oomkiller.h."""

    _fields_ = [
        ("timestamp_ns", ctypes.c_uint64),
        ("cgroup_id", ctypes.c_uint64),
        ("stall_ns", ctypes.c_uint64),
        ("gfp_flags", ctypes.c_uint64),
        ("val", ctypes.c_uint64 * 5),
        ("kind", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("order", ctypes.c_int32),
        ("arg", ctypes.c_int32 * 4),
        ("comm", ctypes.c_char * COMM_LEN),
    ]


EVENT_SIZE = ctypes.sizeof(Event)


def layout_check_source(event_size: int = EVENT_SIZE) -> str:
    """C that compiles only if the header matches ``Event`` and the constants here.

    ``event_size`` exists so a test can show that a wrong size fails.
    """
    lines = [f'#include "{HEADER_FILE}"',
             f'_Static_assert(sizeof(struct oom_event) == {event_size}, "sizeof(struct oom_event)");']
    for name, ctype in Event._fields_:
        offset = getattr(Event, name).offset
        lines.append(f'_Static_assert(__builtin_offsetof(struct oom_event, {name}) == {offset}, "offset of {name}");')
        lines.append(f'_Static_assert(sizeof(((struct oom_event *)0)->{name}) == {ctypes.sizeof(ctype)}, "size of {name}");')
    for macro, value in {**_HEADER_KINDS, **_HEADER_COUNTERS, "OOMK_COMM_LEN": COMM_LEN}.items():
        lines.append(f'_Static_assert({macro} == {value}, "{macro}");')
    return "\n".join(lines) + "\n"


def _hex(value: int) -> str:
    return f"{value:#x}"


def decode(raw: bytes, page_size_bytes: int = PAGE_SIZE_BYTES) -> PressureEvent:
    """One perf-buffer payload -> PressureEvent.

    ``detail`` is space-separated ``key=value`` pairs, the kind-specific fields
    of the header's table, with page and kB counts turned into bytes.
    """
    if len(raw) < EVENT_SIZE:
        raise ValueError(f"event payload of {len(raw)} bytes, expected {EVENT_SIZE}")
    ev = Event.from_buffer_copy(raw[:EVENT_SIZE])
    kind = KIND_NAMES.get(ev.kind, f"unknown_{ev.kind}")
    comm = ev.comm.decode("utf-8", "replace")
    val, arg = list(ev.val), list(ev.arg)
    pid = ev.pid
    fields: list[tuple[str, object]] = []
    if comm:
        fields.append(("comm", comm))
    if ev.kind == KIND_KERNEL_OOM_VICTIM:
        fields += [("oom_invoker_pid", arg[0]), ("uid", arg[1]), ("oom_score_adj", arg[2]),
                   ("anon_rss_bytes", val[0] * 1024), ("file_rss_bytes", val[1] * 1024),
                   ("shmem_rss_bytes", val[2] * 1024), ("total_vm_bytes", val[3] * 1024),
                   ("pgtables_bytes", val[4] * 1024)]
    else:
        fields.append(("tid", ev.tid))
    if ev.kind in (KIND_MEMCG_RECLAIM, KIND_DIRECT_RECLAIM):
        fields += [("order", ev.order), ("gfp", _hex(ev.gfp_flags))]
    elif ev.kind == KIND_STALL:
        fields += [("reclaim", KIND_NAMES.get(arg[0], str(arg[0]))), ("reclaimed_bytes", val[0] * page_size_bytes),
                   ("window_usec", val[1] // 1000), ("reclaims", arg[1])]
    elif ev.kind == KIND_KSWAPD:
        fields += [("node", arg[0]), ("zone", arg[1]), ("order", ev.order), ("gfp", _hex(ev.gfp_flags))]
    elif ev.kind == KIND_RECLAIM_RETRY:
        fields += [("node", arg[0]), ("zone", arg[1]), ("order", ev.order),
                   ("reclaimable_bytes", val[0] * page_size_bytes), ("available_bytes", val[1] * page_size_bytes),
                   ("min_wmark_bytes", val[2] * page_size_bytes), ("no_progress_loops", arg[2]),
                   ("wmark_check", arg[3])]
    elif ev.kind == KIND_COMPACT_RETRY:
        fields += [("order", ev.order), ("priority", arg[0]), ("result", arg[1]), ("retries", arg[2]),
                   ("max_retries", arg[3]), ("retry", val[0])]
    elif ev.kind == KIND_ARMED_KILL:
        fields += [("reclaim", KIND_NAMES.get(arg[0], str(arg[0]))), ("signal_rc", arg[1]),
                   ("reclaimed_bytes", val[0] * page_size_bytes), ("armed_cgroup_id", val[1]),
                   ("order", ev.order), ("gfp", _hex(ev.gfp_flags))]
    return PressureEvent(
        source=Source.EBPF,
        kind=kind,
        cgroup_id=ev.cgroup_id,
        pid=pid,
        stall_usec=ev.stall_ns // 1000,
        timestamp_usec=ev.timestamp_ns // 1000,
        detail=" ".join(f"{k}={v}" for k, v in fields),
    )


# Linux 6.x values, for kernels whose tracepoint formats do not spell them out.
GFP_NORETRY_DEFAULT = 1 << 16
GFP_RETRY_MAYFAIL_DEFAULT = 1 << 14
# Allocations above this order are "costly": the allocator gives up on them
# rather than invoke the OOM killer (PAGE_ALLOC_COSTLY_ORDER).
ARM_MAX_ORDER = 3
# Failed reclaims in a row by one thread before the armed kill. A memcg
# charge retries MAX_RECLAIM_RETRIES (16) times before its OOM killer, so two
# leave a wide margin and keep one unlucky reclaim from killing. The page
# allocator's should_reclaim_retry() gives up at once when what is free and
# reclaimable cannot meet the watermark (seen in a guest: the kernel killed
# before a second failure in every run), so there the first failure counts.
ARM_FAILED_RECLAIMS = {"memcg": 2, "direct": 1}


def gfp_bit(tracefs: str, name: str, default: int) -> int:
    """A __GFP_* flag's value as this kernel's reclaim tracepoint prints it:
    the bits moved between kernel versions, so they are read, not assumed."""
    try:
        fmt = read_text(os.path.join(tracefs, "events", "vmscan", "mm_vmscan_direct_reclaim_begin", "format"))
    except OSError:
        return default
    m = re.search(r'\{([^{}]*)\}?\s*,\s*"' + re.escape(name) + '"', fmt)
    if not m:
        return default
    expr = m.group(1)
    shift = re.search(r"<<\s*\(?\s*(\d+)", expr)
    if shift:
        return 1 << int(shift.group(1))
    num = re.search(r"0x[0-9a-fA-F]+|\b\d+\b", expr)
    return int(num.group(0), 0) if num else default


def tracepoint_flags(tracefs: str) -> dict[str, bool]:
    """Which optional parts of the program this kernel's tracepoints allow."""
    flags = {}
    for flag, tps in TRACEPOINT_FLAGS.items():
        flags[flag] = all(os.path.exists(os.path.join(tracefs, "events", tp, "format")) for tp in tps)
    fmt = ""
    if flags["HAVE_TP_MARK_VICTIM"]:
        try:
            fmt = read_text(os.path.join(tracefs, "events", "oom", "mark_victim", "format"))
        except OSError:
            pass
    flags["MARK_VICTIM_RSS"] = all(field in fmt for field in _MARK_VICTIM_RSS_FIELDS)
    flags["MARK_VICTIM_COMM"] = _MARK_VICTIM_COMM_FIELD in fmt
    return flags


# -- kernel headers -----------------------------------------------------------
# bcc compiles against the headers at /lib/modules/$(uname -r)/build (and
# .../source), or the tree named by $BCC_KERNEL_SOURCE, or the kernel's own
# /sys/kernel/kheaders.tar.xz (CONFIG_IKHEADERS). A host running a kernel its
# distribution does not ship has none of these, but often has the
# distribution's headers of another version under /usr/src. The program reads
# only tracepoint arguments and helpers, never kernel structs, so those compile
# it correctly; pointing bcc at them through BCC_KERNEL_SOURCE spares writing
# links into /lib/modules.
#
# Debian (and Ubuntu) split a header tree in two: linux-headers-V-common holds
# the source tree's headers, linux-headers-V-FLAVOUR the generated ones and a
# Makefile that includes the common one's. bcc takes BCC_KERNEL_SOURCE as one
# tree (bcc 0.26 loader.cc: has_kpath_source is false for it), so alone it
# fails with 'generated/autoconf.h' not found; the FLAVOUR tree's generated
# folders are added as -I flags, the same folders bcc adds from
# /lib/modules/.../build when both links exist (kbuild_helper.cc).
KHEADERS_FILE = "/sys/kernel/kheaders.tar.xz"
USR_SRC = "/usr/src"
_MAKEFILE_INCLUDE = re.compile(r"^include\s+(/\S+)/Makefile\s*$", re.M)


@dataclass(frozen=True)
class KernelHeaders:
    """Where bcc finds kernel headers, and how it is told.

    ``how``: ``modules`` (bcc finds /lib/modules/RELEASE/build itself),
    ``kheaders`` (the kernel's own archive), ``environment`` (the operator's
    $BCC_KERNEL_SOURCE), ``usr-src`` (a header tree under /usr/src chosen
    here). ``source_dir`` is set as BCC_KERNEL_SOURCE for the compile when it
    is not already; ``include_dirs`` are added as -I flags."""

    how: str
    source_dir: str = ""
    include_dirs: tuple[str, ...] = ()
    note: str = ""


def _split_tree(tree: str) -> tuple[str, tuple[str, ...]] | None:
    """(source tree, -I folders of the build tree) of a header tree, or None if
    it is not one. A whole tree is its own source; a Debian FLAVOUR tree names
    its source tree in its Makefile. A source half alone (Debian's -common)
    is not one: it lacks the generated headers."""
    if not os.path.isfile(os.path.join(tree, "include", "generated", "autoconf.h")):
        return None
    if os.path.isfile(os.path.join(tree, "include", "linux", "kconfig.h")):
        return tree, ()
    try:
        m = _MAKEFILE_INCLUDE.search(read_text(os.path.join(tree, "Makefile"), max_bytes=65536))
    except (OSError, ValueError):
        return None
    if not m or not os.path.isfile(os.path.join(m.group(1), "include", "linux", "kconfig.h")):
        return None
    # The order of kbuild_helper.cc's split-tree flags, build tree's part.
    dirs = [os.path.join(tree, "include")]
    for arch in sorted(glob.glob(os.path.join(glob.escape(tree), "arch", "*", "include", "generated"))):
        dirs += [arch, os.path.join(arch, "uapi")]
    dirs.append(os.path.join(tree, "include", "generated", "uapi"))
    return m.group(1), tuple(dirs)


def _version_key(name: str) -> list:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


def find_kernel_headers(release: str | None = None, *, modules_dir: str = "/lib/modules",
                        usr_src: str = USR_SRC, kheaders: str = KHEADERS_FILE,
                        environ=None) -> KernelHeaders:
    """The headers bcc will compile against on this host, first found of:
    $BCC_KERNEL_SOURCE, /lib/modules/RELEASE/build, the kernel's kheaders,
    /usr/src/linux-headers-RELEASE, the newest other tree under /usr/src.
    Raises SourceUnavailable, saying what to install, when there are none."""
    release = release or os.uname().release
    environ = os.environ if environ is None else environ
    given = environ.get("BCC_KERNEL_SOURCE")
    if given:
        split = _split_tree(given)
        if split is None:
            raise SourceUnavailable(f"BCC_KERNEL_SOURCE={given} is not a kernel header tree "
                                    "(no include/linux/kconfig.h, nor a build tree naming one)")
        return KernelHeaders("environment", split[0], split[1],
                             f"kernel headers from BCC_KERNEL_SOURCE={given}")
    build = os.path.join(modules_dir, release, "build")
    if os.path.isdir(os.path.join(build, "include")):
        return KernelHeaders("modules", note=f"kernel headers at {build}")
    if os.path.exists(kheaders):
        return KernelHeaders("kheaders", note=f"kernel headers from {kheaders}")
    trees = sorted(glob.glob(os.path.join(glob.escape(usr_src), "linux-headers-*")), key=_version_key, reverse=True)
    exact = os.path.join(usr_src, f"linux-headers-{release}")
    if exact in trees:
        trees.remove(exact)
        trees.insert(0, exact)
    for tree in trees:
        split = _split_tree(tree)
        if split is None:
            continue
        what = "" if tree == exact else (
            f"; {release} has none, these are another version's: the program reads only "
            "tracepoint arguments, so they compile it correctly")
        return KernelHeaders("usr-src", split[0], split[1],
                             f"kernel headers from {tree} (BCC_KERNEL_SOURCE={split[0]}){what}")
    raise SourceUnavailable(
        f"no kernel headers for {release} ({build} missing, none under {usr_src}): install "
        f"linux-headers-{release} or your distribution's current headers (Debian: linux-headers-$(dpkg "
        "--print-architecture)), or set BCC_KERNEL_SOURCE to a header tree")


class BpfSource:
    """Reclaim and OOM tracepoint events from a bcc program.

    ``start()`` has the loader compile, load and attach it (within
    ``load_timeout_s``) and takes over its maps; ``fds()`` go into the daemon's
    selector; ``drain()`` returns the events that arrived, without blocking.
    ``arm(path, cgroup_id)`` makes the kernel SIGKILL a task anywhere in that
    v2 cgroup's subtree whose reclaims keep failing, and report it as
    ``armed_kill``. With ``prearm=False`` (or a kernel without
    ``bpf_send_signal``) the program only collects.
    """

    name = "ebpf"

    def __init__(self, *, stall_threshold_usec: int = 2000, window_usec: int = 100_000,
                 rate_limit_usec: int = 50_000, quiet_usec: int | None = None,
                 bpf_dir: str | None = None, tracefs: str = "/sys/kernel/tracing",
                 modules_dir: str = "/lib/modules", usr_src: str = USR_SRC,
                 kheaders: str = KHEADERS_FILE, perf_pages: int = PERF_PAGES,
                 arm_min_reclaimed_pages: int = ARM_MIN_RECLAIMED_PAGES, prearm: bool = True,
                 arm_reclaim: str = "memcg", domain_v2: str | None = None,
                 load_timeout_s: float = bpfload.LOAD_TIMEOUT_S) -> None:
        for key, value in (("stall_threshold_usec", stall_threshold_usec), ("window_usec", window_usec),
                           ("rate_limit_usec", rate_limit_usec)):
            if value < 0:
                raise ValueError(f"{key} must be >= 0, got {value}")
        self.stall_threshold_usec = stall_threshold_usec
        self.window_usec = window_usec
        self.rate_limit_usec = rate_limit_usec
        self.arm_min_reclaimed_pages = arm_min_reclaimed_pages
        self.prearm = prearm
        self.prearm_error = ""
        if arm_reclaim not in ("memcg", "direct"):
            raise ValueError(f"arm_reclaim must be 'memcg' or 'direct', got {arm_reclaim!r}")
        # A cgroup domain runs short in memcg reclaim, the host in direct reclaim.
        self.arm_reclaim = arm_reclaim
        # A cgroup that has not begun reclaim for a window's length is news again.
        self.quiet_usec = window_usec if quiet_usec is None else quiet_usec
        self.bpf_dir = bpf_dir or DEFAULT_BPF_DIR
        self.tracefs = tracefs
        self.modules_dir = modules_dir
        self.usr_src = usr_src
        self.kheaders = kheaders
        self.headers: KernelHeaders | None = None
        self.perf_pages = perf_pages
        self.load_timeout_s = load_timeout_s
        # A cgroup domain's v2 cgroup: the program sends only its tasks' events.
        self.domain_v2 = domain_v2
        self.domain_filter = "off: the host is the domain" if domain_v2 is None else ""
        self.lost_perf = 0
        self.events_total = 0
        self.events_by_kind: dict[str, int] = {}
        self.load_usec = 0
        self._maps: dict[str, Map] = {}
        self._tracepoint_fds: list[int] = []
        self._prog_fds: list[int] = []      # the programs, held to be seen (bpftool prog show --pid)
        self._perf: PerfBuffer | None = None
        self._pending: list[PressureEvent] = []
        self._flags: dict[str, bool] = {}

    # -- program ----------------------------------------------------------
    def cflags(self) -> list[str]:
        """The compiler flags: parameters and the kernel's tracepoint features."""
        flags = self._flags or tracepoint_flags(self.tracefs)
        out = [
            f"-I{self.bpf_dir}",
            f"-DSTALL_THRESHOLD_NS={self.stall_threshold_usec * 1000}ULL",
            f"-DWINDOW_NS={self.window_usec * 1000}ULL",
            f"-DQUIET_NS={self.quiet_usec * 1000}ULL",
            f"-DRATE_LIMIT_NS={self.rate_limit_usec * 1000}ULL",
            f"-DEVENT_SIZE={EVENT_SIZE}",
        ]
        out += [f"-D{flag}" for flag, on in flags.items() if on]
        if self.domain_v2 is not None:
            out.append("-DDOMAIN_FILTER")
        if self.headers is not None:
            out += [f"-I{d}" for d in self.headers.include_dirs]
        if self.prearm:
            no_oom = (gfp_bit(self.tracefs, "__GFP_NORETRY", GFP_NORETRY_DEFAULT)
                      | gfp_bit(self.tracefs, "__GFP_RETRY_MAYFAIL", GFP_RETRY_MAYFAIL_DEFAULT))
            out += ["-DWITH_PREARM", f"-DARM_MIN_RECLAIMED={self.arm_min_reclaimed_pages}ULL",
                    f"-DARM_FAILED_RECLAIMS={ARM_FAILED_RECLAIMS[self.arm_reclaim]}",
                    f"-DARM_MAX_ORDER={ARM_MAX_ORDER}",
                    "-DARM_RECLAIM_KIND=" + ("OOMK_KIND_MEMCG_RECLAIM" if self.arm_reclaim == "memcg"
                                             else "OOMK_KIND_DIRECT_RECLAIM"),
                    f"-DGFP_NO_OOM={no_oom:#x}ULL"]
        return out

    def program_text(self) -> str:
        """The program as compiled: its cflags, the header and the C file."""
        if self.headers is None:
            try:
                self.headers = self._find_headers()
            except SourceUnavailable as e:
                self.headers = KernelHeaders("none", note=str(e))
        parts = ["// cflags: " + " ".join(self.cflags()), "// " + self.headers.note]
        for name in (HEADER_FILE, PROGRAM_FILE):
            path = os.path.join(self.bpf_dir, name)
            with open(path) as f:
                parts.append(f"// ---- {path}\n{f.read()}")
        return "\n".join(parts)

    # -- lifetime ---------------------------------------------------------
    def start(self) -> None:
        """Compile, load and attach; raise SourceUnavailable with the reason if that cannot be done."""
        if self._perf is not None:
            return
        self._ensure_tracefs()
        bpfload.check_bcc()
        self.headers = self._find_headers()
        self._flags = tracepoint_flags(self.tracefs)
        if not (self._flags["HAVE_TP_MEMCG_RECLAIM"] or self._flags["HAVE_TP_DIRECT_RECLAIM"]):
            raise SourceUnavailable(
                f"no vmscan reclaim tracepoints under {self.tracefs}/events: "
                "the kernel needs CONFIG_TRACEPOINTS and tracefs must be readable (run as root)")
        src = os.path.join(self.bpf_dir, PROGRAM_FILE)
        if not os.path.exists(src):
            raise SourceUnavailable(f"{src} not found: pass bpf_dir= the folder holding {PROGRAM_FILE}")
        started = time.monotonic()
        if self.headers.how == "usr-src":
            log.info("OOM: ebpf: %s", self.headers.note)
        # BCC_KERNEL_SOURCE is set for the loader's compile alone when the
        # headers are a tree found here (or the operator's split tree).
        reply, fds = bpfload.load({"src": src, "cflags": self.cflags(), "kernel_source": self.headers.source_dir},
                                  self.load_timeout_s)
        try:
            self._adopt(reply, fds)
        except (SourceUnavailable, OSError, ValueError, KeyError, TypeError) as e:
            self.close()
            raise SourceUnavailable(f"BPF program loaded but its maps could not be opened: {e}") from None
        if self.domain_v2 is not None:
            self._set_domain(self.domain_v2)
        self.load_usec = int((time.monotonic() - started) * 1e6)

    def _adopt(self, reply: dict, fds: list[int]) -> None:
        """Take the loader's descriptors over: each is owned by exactly one
        map, one attachment, or closed here."""
        left = dict(enumerate(fds))
        try:
            maps, tracepoints = reply.get("maps"), reply.get("tracepoints")
            if not isinstance(maps, dict) or not isinstance(tracepoints, dict):
                raise ValueError("the loader's answer has no maps and tracepoints")
            for name, m in maps.items():
                fd = left.pop(int(m["fd"]))
                try:
                    self._maps[str(name)] = Map(str(name), fd)
                except BaseException:
                    os.close(fd)        # not a map: owned by nothing else
                    raise
                self._maps[str(name)].check(int(m["type"]), int(m["key_size"]), int(m["value_size"]))
            for _tp, index in sorted(tracepoints.items()):
                self._tracepoint_fds.append(left.pop(int(index)))
            progs = reply.get("progs") or {}
            if not isinstance(progs, dict):
                raise ValueError("the loader's programs are not a mapping")
            for _name, index in sorted(progs.items()):
                fd = left.pop(int(index))
                if _fd_kind(fd) != "anon_inode:bpf-prog":
                    os.close(fd)
                    raise ValueError("the loader sent a program descriptor that is not a BPF program")
                self._prog_fds.append(fd)
            if "events" not in self._maps or "counters" not in self._maps:
                raise KeyError("events and counters")
            self._perf = PerfBuffer(self._maps["events"].fd, self.perf_pages, self._on_event, self._on_lost)
        finally:
            for fd in left.values():
                os.close(fd)

    def set_domain(self, path: str | None) -> None:
        """A new cgroup at the domain's path: filter by it. When its v2
        cgroup is not known, the filter is emptied: every event passes."""
        if self._perf is None or self.domain_v2 is None:
            return      # not loaded, or compiled without the filter (the host)
        if path is None:
            try:
                self._maps["domain_cg"].delete(_u32(0))
            except (OSError, KeyError):
                pass
            self.domain_filter = "off: the new domain cgroup's v2 counterpart is not known"
            return
        self._set_domain(path)

    def _set_domain(self, path: str) -> None:
        """Put the domain's v2 cgroup in the program's filter. If that
        fails, every event passes, as without a filter, and ``info`` says
        why."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                self._maps["domain_cg"].update(_u32(0), _u32(fd))
            finally:
                os.close(fd)
        except (OSError, KeyError, ValueError) as e:     # the filter is an economy, not a need
            try:
                self._maps["domain_cg"].delete(_u32(0))      # an empty slot lets every event pass
            except (OSError, KeyError):
                pass
            self.domain_filter = f"off: {path}: {e}"
            log.warning("OOM: ebpf: events are not filtered to the domain: %s: %s", path, e)
            return
        self.domain_filter = path

    def close(self) -> None:
        """Detach the probes and free the maps (and with them any armed kill)."""
        perf, self._perf = self._perf, None
        if perf is not None:
            perf.close()
        maps, self._maps = self._maps, {}
        for m in maps.values():
            m.close()
        fds, self._tracepoint_fds = self._tracepoint_fds, []
        for fd in fds:
            os.close(fd)        # the last descriptor of a tracepoint's event: detached
        fds, self._prog_fds = self._prog_fds, []
        for fd in fds:
            os.close(fd)

    @property
    def live(self) -> bool:
        return self._perf is not None

    def map(self, name: str) -> Map:
        """One of the loaded program's maps (KeyError: not loaded, or not in this build)."""
        return self._maps[name]

    def _ensure_tracefs(self) -> None:
        if os.path.isdir(os.path.join(self.tracefs, "events")):
            return
        if os.geteuid() != 0:
            if os.path.ismount(self.tracefs):
                raise SourceUnavailable(
                    f"{self.tracefs}/events is not readable: loading BPF on tracepoints needs root "
                    "(or CAP_BPF and CAP_PERFMON with tracefs readable)")
            raise SourceUnavailable(
                f"tracefs is not mounted at {self.tracefs} and only root can mount it: "
                f"run `mount -t tracefs tracefs {self.tracefs}` as root")
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mount(b"tracefs", self.tracefs.encode(), b"tracefs", 0, None) != 0:
            err = ctypes.get_errno()
            raise SourceUnavailable(
                f"tracefs is not mounted at {self.tracefs} and mounting it failed: {os.strerror(err)}; "
                f"mount it with `mount -t tracefs tracefs {self.tracefs}`")

    def _find_headers(self) -> KernelHeaders:
        return find_kernel_headers(modules_dir=self.modules_dir, usr_src=self.usr_src, kheaders=self.kheaders)

    # -- events -----------------------------------------------------------
    def fds(self) -> list[int]:
        """File descriptors of the perf-buffer readers, one per CPU, readable when events wait."""
        return self._perf.fds() if self._perf is not None else []

    def drain(self, fd: int | None = None) -> list[PressureEvent]:
        """The events that arrived since the last call; never blocks."""
        if self._perf is not None:
            # Not a poll of the rings: the kernel's perf_poll() reports POLLIN
            # once per wakeup (it swaps rb->poll to 0), so after the daemon's
            # selector has seen a ring ready a second poll finds nothing and
            # the events would wait for the next wakeup. Read every ring instead.
            self._perf.consume()
        out, self._pending = self._pending, []
        return out

    def _on_event(self, _cpu: int, raw: bytes) -> None:
        event = decode(raw)
        self.events_total += 1
        self.events_by_kind[event.kind] = self.events_by_kind.get(event.kind, 0) + 1
        self._pending.append(event)

    def _on_lost(self, count) -> None:
        self.lost_perf += count

    # -- counters ---------------------------------------------------------
    def _counter(self, index: int) -> int:
        if self._perf is None:
            return 0
        return self._maps["counters"].percpu_sum_u64(_u32(index))

    @property
    def rate_limited(self) -> int:
        """Events the kernel side did not send because of the per-cgroup rate limit."""
        return self._counter(COUNTER_RATE_LIMITED)

    @property
    def outside_domain(self) -> int:
        """Events of tasks outside the domain the program did not send."""
        return self._counter(COUNTER_OUTSIDE)

    def stats(self) -> dict:
        """Numbers for ``oomkiller info``."""
        return {
            "source": self.name,
            "live": self.live,
            "events": self.events_total,
            "events_by_kind": dict(self.events_by_kind),
            # lost: the perf buffer was full; rate limited and outside the
            # domain: not sent, by design
            "lost_perf": self.lost_perf,
            "rate_limited": self.rate_limited,
            "outside_domain": self.outside_domain,
            "domain_filter": self.domain_filter,
            "signal_failed": self._counter(COUNTER_SIGNAL_FAILED),
            "cgroup_state_full": self._counter(COUNTER_STATE_FULL),
            "prearm": self.prearm,
            "load_usec": self.load_usec,
            "kernel_headers": (self.headers.source_dir or self.headers.how) if self.headers else "",
            "attached_tracepoints": len(self._tracepoint_fds),
            "tracepoints": sorted(tp for flag, tps in TRACEPOINT_FLAGS.items()
                                  if self._flags.get(flag) for tp in tps),
            "stall_threshold_usec": self.stall_threshold_usec,
            "window_usec": self.window_usec,
            "quiet_usec": self.quiet_usec,
            "rate_limit_usec": self.rate_limit_usec,
        }


def _u32(value: int) -> bytes:
    return bytes(ctypes.c_uint32(value))


def explain(e: "CapturedError") -> str:
    """A failed bcc compile, load or attach as one line saying what to do."""
    text = f"{e.error} {e.log}"
    first = next((ln.strip() for ln in e.log.splitlines() if "error" in ln.lower()), "")
    if "Operation not permitted" in text or "Permission denied" in text:
        return (f"BPF not permitted ({e.error}): run as root, or with CAP_BPF, CAP_PERFMON "
                "and CAP_SYS_RESOURCE")
    if "kernel headers" in text.lower():
        return f"bcc cannot find kernel headers: install linux-headers-{os.uname().release}"
    if "compile" in str(e.error).lower():
        return f"BPF program failed to compile: {first or e.error}"
    return f"BPF program failed to load or attach: {e.error}" + (f" ({first})" if first else "")


def _fd_kind(fd: int) -> str:
    """What a descriptor of this process is (``anon_inode:bpf-prog``...), "" if unknown."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


class CapturedError(Exception):
    def __init__(self, error: BaseException, log: str) -> None:
        super().__init__(str(error))
        self.error = error
        self.log = log


def with_captured_stderr(fn):
    """Run ``fn`` with fd 2 sent to a file: bcc's compiler writes its diagnostics
    there from C++, and a failure should become one clear line, not a page.
    Warnings of a successful run are passed on to stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as log:
        os.dup2(log.fileno(), 2)
        try:
            result = fn()
            error = None
        except Exception as e:  # bcc raises plain Exception
            result, error = None, e
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        text = log.read().decode("utf-8", "replace")
    if error is not None:
        raise CapturedError(error, text)
    if text.strip():
        sys.stderr.write(text)
    return result


class PreArm:
    """The pre-armed kill's actuator: the loaded program's armed-cgroup maps.

    Apart from the source on purpose: the source only wakes the core; this
    is what the core's Arm and Disarm actions act on. The map is the truth
    of who is armed (the program clears it itself when it fires: the arm is
    one shot)."""

    def __init__(self, source: BpfSource) -> None:
        self.source = source

    def _maps(self) -> tuple[Map, Map]:
        if not self.source.live or not self.source.prearm:
            raise RuntimeError("PreArm without a loaded pre-arm program")
        try:
            return self.source.map("armed"), self.source.map("armed_cg")
        except KeyError:
            raise RuntimeError("PreArm without a loaded pre-arm program") from None

    def arm(self, cgroup_path: str, cgroup_id: int) -> None:
        """SIGKILL, from the kernel, a task anywhere under the v2 cgroup
        ``cgroup_path`` (id ``cgroup_id``) whose reclaims keep failing."""
        armed, armed_cg = self._maps()
        if cgroup_id <= 1:
            raise ValueError(f"refusing to arm cgroup id {cgroup_id}: the root cgroup or none")
        fd = os.open(cgroup_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            armed_cg.update(_u32(0), _u32(fd))
        finally:
            os.close(fd)        # the map holds its own reference to the cgroup
        armed.update(_u32(0), bytes(ctypes.c_uint64(cgroup_id)))

    def disarm(self) -> None:
        try:
            armed, armed_cg = self._maps()
        except RuntimeError:
            return              # unloaded: nothing is armed
        armed.update(_u32(0), bytes(ctypes.c_uint64(0)))
        try:
            armed_cg.delete(_u32(0))
        except OSError:
            pass                # already empty

    @property
    def armed(self) -> int:
        """The armed cgroup v2 id, 0 when disarmed (or unloaded)."""
        try:
            armed, _ = self._maps()
            raw = armed.lookup(_u32(0))
        except (RuntimeError, OSError):
            return 0
        return ctypes.c_uint64.from_buffer_copy(raw).value if raw else 0

    def stats(self) -> dict:
        return {"armed_cgroup_id": self.armed}
