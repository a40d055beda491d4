"""One frozen config from defaults, the kernel command line, a TOML file, the
environment and the command line, in that order of precedence (later wins).

* kernel command line: ``oomkiller.redline=``, ``oomkiller.sleep_ms=`` and
  ``oomkiller.autostart=`` (the seed's ``kernel.oom.*`` flags); hyphens are
  accepted for underscores. Any other ``oomkiller.*`` word is a warning, not an
  error: a boot entry is slow to fix, and a daemon that will not start
  protects nothing.
* TOML file (``--config``, or ``$OOMKILLER_CONFIG``): flat top-level keys named
  as in ``Config`` (see ``deploy/oomkiller.toml``, which lists every default).
  It must be a regular file of UTF-8 text, at most 1 MiB; it is opened without
  blocking, so a FIFO or a device is an error, not a hang. An unknown key is
  an error.
* environment: ``OOMKILLER_<KEY>``, lists comma-separated. Any other
  ``OOMKILLER_*`` variable is a warning: Kubernetes gives a pod
  ``OOMKILLER_SERVICE_HOST``, ``OOMKILLER_PORT``... for a service of that name.
* CLI flags; an unknown key is an error.

Every value is validated once, here; a bad one raises ``ConfigError``, one line
naming where it came from and the key as it was written there. Sizes are read
exactly (no float). Values that would do harm are refused the same way: an
empty job list, strings with NUL, control characters or bytes that were not
UTF-8, a relative control_socket, cgroup_root or proc_root, a socket path too
long for sun_path, sizes above 1 EiB, a redline at or above an
``arm_redline`` other than the default while prearm is on (at the default
20%, that only earns a warning). What depends on the
domain's size (a line at or above it; a redline and an arm line of different
kinds) is checked by ``Config.check_domain`` once the domain has been read.
The CLI turns a ConfigError into exit code 2.
"""
from __future__ import annotations

import difflib
import os
import re
import reprlib
import stat
try:
    import tomllib
except ImportError:     # Python < 3.11: tomli is the same parser, published before it joined the stdlib
    import tomli as tomllib
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Callable, Iterable, Mapping

from .exitcodes import (EXIT_CONFIG, EXIT_DENIED, EXIT_FAILURE, EXIT_OK,  # noqa: F401 - known here too
                        EXIT_UNREACHABLE)
from .client import DEFAULT_CONTROL_SOCKET

KERNEL_CMDLINE_KEYS = ("redline", "sleep_ms", "autostart")

MAX_SIZE = 1 << 60                  # 1 EiB: no memory domain comes near it
MAX_CONFIG_FILE_BYTES = 1 << 20     # a config file lists two dozen keys
from .client import DEFAULT_CONFIG_FILE, MAX_SOCKET_PATH_BYTES  # noqa: E402 - shared with the light client

Warn = Callable[[str], None]

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
# ASCII digits only: int() would take other scripts' digits too.
_SIZE_RE = re.compile(r"\s*(\d+)(?:\.(\d+))?\s*(?:([KMGT])(?:I?B)?|B)?\s*", re.IGNORECASE | re.ASCII)
_PERCENT_RE = re.compile(r"\s*(\d+)(?:\.(\d+))?\s*%\s*", re.ASCII)
_MAX_DIGITS = 24    # more than a size or a percentage ever needs, far below int()'s 4300

_ODD_CHAR = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")

_brief_repr = reprlib.Repr()
_brief_repr.maxstring = _brief_repr.maxother = 60
_brief_repr.maxlong = 40
_brief_repr.maxlevel = 3
_brief_repr.maxdict = _brief_repr.maxlist = _brief_repr.maxtuple = 4


def _brief(v: Any) -> str:
    """A value as a message shows it: its repr, cut short."""
    try:
        return _brief_repr.repr(v)
    except Exception:   # a repr that fails (an int past str()'s digit limit, ...)
        return f"<{type(v).__name__}>"


def _one_line(text: str) -> str:
    """``text`` with every unprintable character escaped: a message stays one
    line, and prints on any terminal (lone surrogates too)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class ConfigError(ValueError):
    """A bad configuration value; the message, one line, names its origin and key."""

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message))


def _format_size(n: int) -> str:
    for unit, name in ((1 << 40, "T"), (1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")):
        if n >= unit:
            return f"{n // unit}{name}" if n % unit == 0 else f"{n / unit:.1f}{name}"
    return f"{n}B"


def _decimal(whole: str, frac: str | None, text: str) -> tuple[int, int]:
    """``"12", "50"`` -> (1250, 100): the number 12.50 as a fraction, exactly.
    More digits than any size or percentage needs are a ValueError."""
    whole = whole.lstrip("0")
    frac = (frac or "").rstrip("0")
    if len(whole) > _MAX_DIGITS:
        raise ValueError(f"too large: {_brief(text)}")
    if len(frac) > _MAX_DIGITS:
        raise ValueError(f"too many decimals: {_brief(text)}")
    scale = 10 ** len(frac)
    return int(whole or "0") * scale + int(frac or "0"), scale


def parse_size(text: str | int) -> int:
    """``"50M"`` -> 52428800. K, M, G, T suffixes are powers of 1024; the
    number is read exactly (no float), fractions of a byte are dropped."""
    if isinstance(text, bool) or not isinstance(text, (int, str)):
        raise ValueError(f"not a size: {_brief(text)} (use bytes or a K, M, G, T suffix, "
                         "or a percentage as \"5%\")")
    if isinstance(text, int):
        n = text
    else:
        m = _SIZE_RE.fullmatch(text)
        if not m:
            raise ValueError(f"not a size: {_brief(text)} (use bytes or a K, M, G, T suffix)")
        num = _decimal(m.group(1), m.group(2), text)
        n = num[0] * _UNITS[(m.group(3) or "").upper()] // num[1]
    if n < 0:
        raise ValueError(f"negative size: {_brief(n)}")
    if n > MAX_SIZE:
        raise ValueError(f"too large: {_brief(text)} (at most 1 EiB, {MAX_SIZE} bytes)")
    return n


def _permyriad(m: re.Match[str]) -> int:
    """A matched percentage to permyriad, rounded to the nearest."""
    num = _decimal(m.group(1), m.group(2), m.string)
    q, r = divmod(num[0] * 100, num[1])
    return q + (2 * r >= num[1])


@dataclass(frozen=True)
class Redline:
    """The line free memory must stay above: bytes, or permyriad of the domain."""

    bytes_: int = 0
    permyriad: int = 0

    @classmethod
    def parse(cls, text: str | int) -> "Redline":
        if isinstance(text, str):
            m = _PERCENT_RE.fullmatch(text)
            if m:
                pm = _permyriad(m)
                if not 0 < pm < 10000:
                    raise ValueError(f"percent out of range: {_brief(text)} (more than 0%, less than 100%)")
                return cls(permyriad=pm)
        return cls(bytes_=parse_size(text))

    def resolve_bytes(self, total_bytes: int) -> int:
        if self.permyriad:
            return total_bytes * self.permyriad // 10000
        return self.bytes_

    def __str__(self) -> str:
        if self.permyriad:
            return f"{self.permyriad / 100:g}%"
        return str(self.bytes_)

    def show(self) -> str:
        """As a message shows it: ``5%`` or ``200G``."""
        return str(self) if self.permyriad else _format_size(self.bytes_)


DEFAULT_ARM_REDLINE = Redline(permyriad=2000)
# At the default arm_redline the arm line keeps at least this much above the
# redline (see Config.arm_line_bytes).
ARM_BAND = Redline(permyriad=1000)


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str):
        s = v.strip().lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
    raise ValueError(f"not a boolean: {_brief(v)}")


def _int(lo: int, hi: int):
    def conv(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise ValueError(f"not an integer: {_brief(v)}")
        if isinstance(v, str):
            if not re.fullmatch(r"\s*[-+]?\d{1,%d}\s*" % _MAX_DIGITS, v, re.ASCII):
                raise ValueError(f"not an integer: {_brief(v)}")
            v = int(v)
        if not lo <= v <= hi:
            raise ValueError(f"{_brief(v)} is outside {lo}..{hi}")
        return v
    return conv


def _text(v: Any) -> str:
    """A non-empty string of printable text: no NUL, no control characters, no
    bytes that were not UTF-8 (they arrive as lone surrogates)."""
    if not isinstance(v, str) or not v:
        raise ValueError(f"not a non-empty string: {_brief(v)}")
    m = _ODD_CHAR.search(v)
    if m:
        c = m.group()
        what = ("a NUL byte" if c == "\0" else "a byte that is not UTF-8" if "\ud800" <= c <= "\udfff"
                else "a control character")
        raise ValueError(f"{_brief(v)} holds {what}")
    return v


def _abs_path(v: Any) -> str:
    s = _text(v)
    if not s.startswith("/"):
        raise ValueError(f"{_brief(s)} is not an absolute path")
    return s


def _socket_path(v: Any) -> str:
    s = _abs_path(v)
    n = len(s.encode())
    if n > MAX_SOCKET_PATH_BYTES:
        raise ValueError(f"{_brief(s)} is {n} bytes long; a socket path takes at most {MAX_SOCKET_PATH_BYTES}")
    return s


def _metrics(v: Any) -> str:
    """"" (off), an absolute socket path, or a loopback HOST:PORT."""
    if v == "":
        return ""
    s = _text(v)
    from .metrics import parse_address
    if parse_address(s)[0] == "unix":
        return _socket_path(s)
    return s


def _hook(v: Any) -> str:
    """"" (none), or an absolute path (what it names is checked at start:
    ``Config.check_hooks``)."""
    if v == "":
        return ""
    return _abs_path(v)


def _log_path(v: Any) -> str:
    """``-`` (stdout) or a file path."""
    return _text(v)


def _globs(v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [s for s in (x.strip() for x in v.split(",")) if s]
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) and x for x in v):
        raise ValueError(f"not a list of globs: {_brief(v)}")
    for g in v:
        _text(g)
        try:
            PurePosixPath("/").match(g)     # how rank.glob_match uses it
        except ValueError as e:
            raise ValueError(f"not a glob: {_brief(g)} ({e})") from None
    return tuple(v)


def _jobs(v: Any) -> tuple[str, ...]:
    globs = _globs(v)
    if not globs:
        raise ValueError("no globs: no job could ever be killed (the default \"auto\" makes units, pods "
                         "and cgroups with processes jobs)")
    return globs


SOURCES = ("ebpf", "prearm", "psi", "memcg", "timer")


def _sources(v: Any) -> tuple[str, ...]:
    names = _globs(v)
    bad = [n for n in names if n not in SOURCES]
    if bad:
        raise ValueError(f"unknown source {_brief(bad[0])} (known: {', '.join(SOURCES)})")
    return names


LOG_LEVELS = ("debug", "info", "notice", "warning", "error")


def _log_level(v: Any) -> str:
    """One of LOG_LEVELS, in any case."""
    word = v.strip().lower() if isinstance(v, str) else None
    if word not in LOG_LEVELS:
        raise ValueError(f"not a log level: {_brief(v)} (one of {', '.join(LOG_LEVELS)})")
    return word


def _percent(v: Any) -> int:
    """``"60%"`` -> 6000 permyriad; 0 or ``"0"`` turns the check off."""
    if not isinstance(v, bool) and (v == 0 or v == "0"):
        return 0
    m = _PERCENT_RE.fullmatch(v) if isinstance(v, str) else None
    if not m:
        raise ValueError(f"not a percentage: {_brief(v)} (write it like \"60%\")")
    pm = _permyriad(m)
    if not 0 <= pm <= 10000:
        raise ValueError(f"percent out of range: {_brief(v)}")
    return pm


# The least share of dirty pages that may hold the pressure limit, but 0
# (never): a lower share holds it more often, and a few dirty pages are
# always there (a quiet host keeps 0.1-1% of its memory dirty).
MIN_DIRTY_HOLD_PERMYRIAD = 500


# The least I/O stall that may carry a thrash episode, but 0 (off): every
# domain that reads its disk is stalled on I/O some of the time, and with a
# lower share the slow-storage path fires on such a domain's refaults.
MIN_IO_STALL_LIMIT_PERMYRIAD = 2000


def _percent_or_off(v: Any, off: str) -> int:
    """``_percent``, but a value that rounds to 0 without being 0 is refused
    (``off`` says what "0" does)."""
    pm = _percent(v)
    if pm == 0 and not (isinstance(v, str) and re.fullmatch(r"\s*0+(\.0+)?\s*%?\s*", v)) and v != 0:
        raise ValueError(f"{_brief(v)} rounds to 0: write \"0\" to {off}")
    return pm


def _io_stall_limit(v: Any) -> int:
    """``"40%"`` -> 4000 permyriad; 0, ``"0"`` or ``"0%"`` turns the
    slow-storage path of the thrash detector off; under 20% is refused."""
    pm = _percent_or_off(v, "turn the I/O stall path off")
    if 0 < pm < MIN_IO_STALL_LIMIT_PERMYRIAD:
        raise ValueError(f"{_brief(v)} is under {MIN_IO_STALL_LIMIT_PERMYRIAD / 100:g}%: any domain reading its "
                         "disk is stalled on I/O that much; \"0\" turns the I/O stall path off")
    return pm


def _dirty_hold(v: Any) -> int:
    """``"12.5%"`` -> 1250 permyriad; 0, ``"0"`` or ``"0%"`` never holds;
    anything under 5% otherwise is refused (it would hold the pressure
    limit through a freeze beside a little writing)."""
    pm = _percent_or_off(v, "turn the hold off")
    if 0 < pm < MIN_DIRTY_HOLD_PERMYRIAD:
        raise ValueError(f"{_brief(v)} would hold the pressure limit whenever a few pages are dirty: "
                         f"{MIN_DIRTY_HOLD_PERMYRIAD / 100:g}% is the least (\"0\" turns the hold off; a higher "
                         "share holds it less often)")
    return pm


# A refault rate above 100 times the file cache per second is no limit: the
# frozen arena measured 11 to 17 times.
MAX_REFAULT_PERMYRIAD_PER_S = 1_000_000


def _refault_rate(v: Any) -> int:
    """``"20%"`` (of the file cache, per second) -> 2000 permyriad per
    second; 0 or ``"0"`` turns thrash detection off. Unlike other
    percentages it may exceed 100%: a page can refault many times a second."""
    if not isinstance(v, bool) and (v == 0 or v == "0"):
        return 0
    m = _PERCENT_RE.fullmatch(v) if isinstance(v, str) else None
    if not m:
        raise ValueError(f"not a percentage: {_brief(v)} (write it like \"20%\": refaults per second, "
                         "as a share of the file cache)")
    pm = _permyriad(m)
    if not 0 <= pm <= MAX_REFAULT_PERMYRIAD_PER_S:
        raise ValueError(f"out of range: {_brief(v)} (0% to {MAX_REFAULT_PERMYRIAD_PER_S // 100}%)")
    return pm


@dataclass(frozen=True)
class Config:
    """The effective configuration. Units are in the names."""

    domain: str = "host"
    # The seed's 50M is below this kind of host's own min watermarks (66 MiB on
    # a 24 GiB VM): by the time MemAvailable reaches it the kernel is already in
    # direct reclaim. 5% is earlyoom's SIGKILL line.
    redline: Redline = field(default_factory=lambda: Redline(permyriad=500))
    sleep_ms: int = 1000
    # While free memory falls, the timer also wakes halfway to the next line
    # (the arm line, then the redline) at the rate seen between the last two
    # snapshots, never sooner than MIN_TICK_MS; steady memory keeps sleep_ms.
    adaptive_sleep: bool = True
    autostart: bool = True
    print_: bool = False
    dry_run: bool = False
    # Memory figures are read fresh, but the kernel frees a victim's memory
    # over a few ms after the cgroup empties and page cache refills; half a
    # second keeps one kill from being followed by a second on stale numbers.
    post_kill_delay_ms: int = 500
    kill_timeout_ms: int = 5000
    control_socket: str = DEFAULT_CONTROL_SOCKET
    # What is a job (core.jobrule): "auto" is the rule of names (systemd
    # units and pods, never slices; elsewhere cgroups holding processes);
    # globs add jobs where they match.
    jobs: tuple[str, ...] = ("auto",)
    protect: tuple[str, ...] = ()
    avoid: tuple[str, ...] = ()
    prefer: tuple[str, ...] = ()
    json_log: str = "-"
    # Event sources besides the redline timer, which always runs.
    sources: tuple[str, ...] = SOURCES
    # Also low when every task of the domain was stalled on memory this share
    # of the time ("full" PSI) over the last few seconds: thrashing, where file
    # cache keeps "free" looking fine. systemd-oomd's default limit is 60%.
    pressure_limit_permyriad: int = 6000
    # The pressure limit holds while this share of the domain's memory (or
    # more) is dirty or under writeback and at most half of it is not file
    # cache (core/detect.py): that stall is reclaim waiting for the disk,
    # which no kill shortens. 0 never holds it.
    pressure_dirty_hold_permyriad: int = 1250
    # Thrashing (core/thrash.py): low when file pages refault at this rate
    # per second, as a share of the file cache (active + inactive file), for
    # thrash_sustain_ms, while some task of the domain is stalled on memory
    # thrash_stall_limit of that time (or, with no PSI, free memory is under
    # the arm line), and the file cache is at most half the domain. A 512 MiB
    # arena frozen by an anonymous hog at 85% refaults 1,100-1,700%/s with
    # 15-25% of each second stalled; a stream through the cache twice the
    # arena's size 850-1,140%/s with up to 42% of a second stalled: the
    # cache's share of the domain (99% there, 12% frozen) tells them apart.
    # A twentieth of it is the activated refaults' own limit (thrash.py).
    thrash_refault_limit_permyriad: int = 2000
    thrash_stall_limit_permyriad: int = 1000
    # On slow storage, refaults at a quarter of the refault limit carry an
    # episode while the domain is stalled on I/O this share of the time (PSI
    # "some" of its io.pressure), with its own major faults (core/thrash.py);
    # 0 turns that path off.
    thrash_io_stall_limit_permyriad: int = 4000
    # A burst of refaults shorter than this never fires.
    thrash_sustain_ms: int = 1000
    # PSI trigger: wake when "some" stall exceeds psi_stall_ms per psi_window_ms
    # (10%). Unprivileged processes get windows rounded up to 2 s.
    psi_stall_ms: int = 100
    psi_window_ms: int = 1000
    # While free memory is below this line (and above the redline), the top
    # victim is armed in the kernel: a task of it whose reclaim fails is killed
    # on the spot. Never lower than the redline.
    arm_redline: Redline = field(default_factory=lambda: DEFAULT_ARM_REDLINE)
    # Set the domain's memory.high just above limit minus redline, so a runaway
    # job is throttled while the core decides (cgroup v2 only; off by default:
    # it changes the domain's own settings).
    memory_high_brake: bool = False
    # Count the room left in the swap the domain may use as free memory, and
    # its swap in the total (domain.py): a laptop swapping its browser out
    # has memory to give. Off: free memory is RAM alone, as without swap.
    count_swap: bool = True
    # mlockall(MCL_CURRENT|MCL_FUTURE|MCL_ONFAULT) and oom_score_adj -1000.
    protect_self: bool = True
    cgroup_root: str = "/sys/fs/cgroup"
    proc_root: str = "/proc"
    # The least a log line must be to be written: debug adds a line per wake.
    log_level: str = "info"
    # One line per kill in the kernel log (/dev/kmsg), rate-limited (kmsg.py).
    kmsg: bool = True
    # After a kill, systemd-oomd's marks on the job's unit cgroup
    # (user.oomd_ooms, user.oomd_kill), which systemd reads (marks.py).
    cgroup_marks: bool = True
    # A Prometheus endpoint (metrics.py): "" is off; a Unix socket path, or
    # a loopback HOST:PORT (no other address: it has no authentication).
    metrics: str = ""
    # Hooks (hooks.py): a program run before and after a job is signalled,
    # off the kill loop, with the decision's record on stdin; "" is none.
    pre_kill: str = ""
    post_kill: str = ""
    # Each run is killed, with its process group, at this limit.
    hook_timeout_ms: int = 5000
    # How long a kill may wait for pre_kill to finish (never longer than
    # hook_timeout_ms); 0: the kill does not wait.
    pre_kill_wait_ms: int = 0
    # The gentler first step (off: "0"): below this much free memory, but
    # above the redline, the top job's processes get SIGTERM, once, and
    # term_grace_ms before another job may get one (core/decide.py).
    term_redline: Redline = field(default_factory=Redline)
    term_grace_ms: int = 3000
    # Where each value that is not a default came from: field name ->
    # (origin, key as written there), for messages about it.
    origins: Mapping[str, tuple[str, str]] = field(default_factory=dict, compare=False, repr=False)

    def arm_line_bytes(self, total_bytes: int) -> int:
        """The arm line in bytes of a domain this big: never under the
        redline. At the default arm_redline it also stays ARM_BAND above the
        redline, so a redline set above 20% still leaves prearm a band to
        arm in (with none, a 64M redline in a 256M arena lost 66% of its
        fast hogs to the kernel; with the band, none)."""
        red = self.redline.resolve_bytes(total_bytes)
        arm = self.arm_redline.resolve_bytes(total_bytes)
        if self.arm_redline == DEFAULT_ARM_REDLINE:
            arm = max(arm, min(total_bytes - 1, red + ARM_BAND.resolve_bytes(total_bytes)))
        return max(red, arm)

    def term_line_bytes(self, total_bytes: int) -> int:
        """The term line in bytes of a domain this big; 0 when it is off."""
        return self.term_redline.resolve_bytes(total_bytes)

    def describe(self) -> dict[str, Any]:
        """The effective config by config-file key."""
        out = {}
        for key, (name, _conv) in _KEYS.items():
            v = getattr(self, name)
            if isinstance(v, Redline):
                v = str(v)
            elif isinstance(v, tuple):
                v = list(v)
            elif name in ("pressure_limit_permyriad", "pressure_dirty_hold_permyriad", "thrash_refault_limit_permyriad",
                          "thrash_stall_limit_permyriad", "thrash_io_stall_limit_permyriad"):
                v = f"{v / 100:g}%"
            out[key] = v
        return out

    def blame(self, name: str, problem: str) -> ConfigError:
        """A ConfigError about field ``name``, naming where its value came from."""
        origin, key = self.origins.get(name, ("default", _FIELD_KEYS[name]))
        return ConfigError(f"{origin}: bad value for {key!r}: {problem}")

    def _said(self, name: str) -> str:
        """``arm_redline (20%, the default)``: a field for the message about another."""
        origin, key = self.origins.get(name, ("the default", _FIELD_KEYS[name]))
        v = getattr(self, name)
        return f"{key} ({v.show() if isinstance(v, Redline) else v}, {origin})"

    def _band_problem(self, red: int, arm: int, where: str = "") -> None:
        """Redline ``red`` at or above arm line ``arm`` (same unit) with prearm on:
        the arm line is the redline, so nothing is ever armed. An error when
        arm_redline was changed from its default; at the default the arm line
        follows the redline (``arm_line_bytes``), so there is nothing to say
        (the shipped config file sets every key, so "set" would not tell).
        ``where`` tells the domain when the two were compared in bytes."""
        if "prearm" not in self.sources or red < arm:
            return
        if self.arm_redline != DEFAULT_ARM_REDLINE:
            red_from, arm_from = self.origins.get("redline"), self.origins.get("arm_redline")
            if red_from and (not arm_from or _rank(red_from) > _rank(arm_from)):
                raise self.blame("redline", f"{self.redline.show()} is at or above {self._said('arm_redline')}{where}: "
                                            "prearm would never arm (keep it below, or drop prearm from sources)")
            raise self.blame("arm_redline", f"{self.arm_redline.show()} is at or below {self._said('redline')}{where}: "
                                            "prearm would never arm (set it above, or drop prearm from sources)")

    def check(self) -> None:
        """What no single value shows: checks between keys."""
        if self.psi_stall_ms >= self.psi_window_ms:     # the window's floor is above the stall's default
            raise self.blame("psi_stall_ms", f"{self.psi_stall_ms} must be less than psi_window_ms "
                                             f"({self.psi_window_ms})")
        red, arm = self.redline, self.arm_redline
        if bool(red.permyriad) == bool(arm.permyriad):
            self._band_problem(red.permyriad or red.bytes_, arm.permyriad or arm.bytes_)
        term = self.term_redline
        if (term.permyriad or term.bytes_) and bool(red.permyriad) == bool(term.permyriad):
            self._term_problem(red.permyriad or red.bytes_, term.permyriad or term.bytes_)

    def _term_problem(self, red: int, term: int, where: str = "") -> None:
        """A term line at or below the redline (same unit): the SIGTERM step
        would never come before the kill. Blames the key set last."""
        if term > red:
            return
        red_from, term_from = self.origins.get("redline"), self.origins.get("term_redline")
        if red_from and term_from and _rank(red_from) > _rank(term_from):
            raise self.blame("redline", f"{self.redline.show()} is at or above {self._said('term_redline')}{where}: "
                                        "the SIGTERM step would never come first (keep the redline below it)")
        raise self.blame("term_redline", f"{self.term_redline.show()} is at or below {self._said('redline')}{where}: "
                                         "it must be above the redline (or \"0\": off)")

    def check_hooks(self, euid: int | None = None) -> None:
        """Raise ConfigError for a hook that must not be run (hooks.hook_problem):
        it reads the file system, so it is checked by the daemon at start,
        not by ``load``."""
        from .hooks import hook_problem
        for name in ("pre_kill", "post_kill"):
            path = getattr(self, name)
            if path:
                problem = hook_problem(path, euid)
                if problem:
                    raise self.blame(name, problem)

    def check_domain(self, total_bytes: int) -> None:
        """Raise ConfigError for lines that do harm on a domain of ``total_bytes``:
        a redline at or above its size (every job killed with no pressure at
        all), an arm line at or above it (the top job armed all the time), and,
        when the redline and the arm line are of different kinds, a redline at
        or above the arm line (see ``check``)."""
        size = f"the domain's size ({_format_size(total_bytes)})"
        red = self.redline.resolve_bytes(total_bytes)
        if red >= total_bytes:
            raise self.blame("redline", f"{self.redline.show()} is at or above {size}: every job would be killed "
                                        "with no memory pressure at all")
        term = self.term_line_bytes(total_bytes)
        if term >= total_bytes:
            raise self.blame("term_redline", f"{self.term_redline.show()} is at or above {size}: the top job would "
                                             "be sent SIGTERM with no memory pressure at all")
        if term and bool(self.redline.permyriad) != bool(self.term_redline.permyriad):
            self._term_problem(red, term, f" on a domain of {_format_size(total_bytes)}, where they are "
                                          f"{_format_size(red)} and {_format_size(term)}")
        if "prearm" not in self.sources:
            return
        arm = self.arm_redline.resolve_bytes(total_bytes)
        if arm >= total_bytes:
            raise self.blame("arm_redline", f"{self.arm_redline.show()} is at or above {size}: the top job would be "
                                            "armed all the time")
        if bool(self.redline.permyriad) != bool(self.arm_redline.permyriad):
            self._band_problem(red, arm, f" on a domain of {_format_size(total_bytes)}, where they are "
                                               f"{_format_size(red)} and {_format_size(arm)}")


# key -> (field name, converter)
_KEYS: dict[str, tuple[str, Any]] = {
    "domain": ("domain", _text),
    "redline": ("redline", Redline.parse),
    "sleep_ms": ("sleep_ms", _int(1, 3_600_000)),
    "autostart": ("autostart", _bool),
    "print": ("print_", _bool),
    "dry_run": ("dry_run", _bool),
    "post_kill_delay_ms": ("post_kill_delay_ms", _int(0, 3_600_000)),
    "kill_timeout_ms": ("kill_timeout_ms", _int(1, 600_000)),
    "control_socket": ("control_socket", _socket_path),
    "jobs": ("jobs", _jobs),
    "protect": ("protect", _globs),
    "avoid": ("avoid", _globs),
    "prefer": ("prefer", _globs),
    "json_log": ("json_log", _log_path),
    "sources": ("sources", _sources),
    "pressure_limit": ("pressure_limit_permyriad", _percent),
    "pressure_dirty_hold": ("pressure_dirty_hold_permyriad", _dirty_hold),
    "thrash_refault_limit": ("thrash_refault_limit_permyriad", _refault_rate),
    "thrash_stall_limit": ("thrash_stall_limit_permyriad", _percent),
    "thrash_io_stall_limit": ("thrash_io_stall_limit_permyriad", _io_stall_limit),
    # Under 250 ms a single read-around burst would pass; over a minute the
    # freeze is what the user already lives through.
    "thrash_sustain_ms": ("thrash_sustain_ms", _int(250, 60_000)),
    "psi_stall_ms": ("psi_stall_ms", _int(1, 60_000)),
    # The kernel takes trigger windows of 500 ms to 10 s (psi.rst).
    "psi_window_ms": ("psi_window_ms", _int(500, 10_000)),
    "arm_redline": ("arm_redline", Redline.parse),
    "memory_high_brake": ("memory_high_brake", _bool),
    "count_swap": ("count_swap", _bool),
    "adaptive_sleep": ("adaptive_sleep", _bool),
    "protect_self": ("protect_self", _bool),
    "cgroup_root": ("cgroup_root", _abs_path),
    "proc_root": ("proc_root", _abs_path),
    "log_level": ("log_level", _log_level),
    "kmsg": ("kmsg", _bool),
    "cgroup_marks": ("cgroup_marks", _bool),
    "metrics": ("metrics", _metrics),
    "pre_kill": ("pre_kill", _hook),
    "post_kill": ("post_kill", _hook),
    "hook_timeout_ms": ("hook_timeout_ms", _int(10, 600_000)),
    # The kill loop waits this long at most: well inside the watchdog's 30 s.
    "pre_kill_wait_ms": ("pre_kill_wait_ms", _int(0, 10_000)),
    "term_redline": ("term_redline", Redline.parse),
    "term_grace_ms": ("term_grace_ms", _int(0, 3_600_000)),
}


def config_keys() -> tuple[str, ...]:
    """Every key a config file, the environment or the command line may set."""
    return tuple(_KEYS)
_FIELD_KEYS = {name: key for key, (name, _conv) in _KEYS.items()}

# Origins by precedence, lowest first; a clash between two keys blames the
# later. Any other origin is the config file's path.
_ORIGIN_RANK = {"kernel command line": 1, "environment": 3, "command line": 4}


def _rank(origin: tuple[str, str]) -> int:
    return _ORIGIN_RANK.get(origin[0], 2)


def _did_you_mean(norm: str, spell: Callable[[str], str] = lambda k: k) -> str:
    close = difflib.get_close_matches(norm, _KEYS, n=1, cutoff=0.75)
    return f" (did you mean {spell(close[0])!r}?)" if close else ""


def _apply(values: dict[str, Any], origins: dict[str, tuple[str, str]],
           items: Iterable[tuple[str, str, Any]], origin: str) -> None:
    """Merge ``(key as written, key, value)`` items into ``values``; an unknown
    key, or one written twice (``sleep-ms`` and ``sleep_ms``), is an error."""
    seen: dict[str, str] = {}
    for written, norm, value in items:
        if norm not in _KEYS:
            raise ConfigError(f"{origin}: unknown key {written!r}{_did_you_mean(norm)} "
                              f"(known: {', '.join(sorted(_KEYS))})")
        if norm in seen:
            raise ConfigError(f"{origin}: {seen[norm]!r} and {written!r} are the same key")
        seen[norm] = written
        name, conv = _KEYS[norm]
        try:
            values[name] = conv(value)
        except (ValueError, TypeError, ArithmeticError) as e:
            raise ConfigError(f"{origin}: bad value for {written!r}: {e}") from None
        origins[name] = (origin, written)


def kernel_cmdline_values(cmdline: str) -> list[tuple[str, str | None]]:
    """``oomkiller.*`` words of a kernel command line: (``oomkiller.key`` as
    written, value or None if it has no ``=``)."""
    out = []
    for word in cmdline.split():
        if word == "--":
            break   # what follows is init's arguments, not the kernel's
        if word.startswith("oomkiller."):
            key, eq, value = word.partition("=")
            out.append((key, value if eq else None))
    return out


def _kernel_items(cmdline: str, warn: Warn) -> list[tuple[str, str, str]]:
    items: dict[str, tuple[str, str, str]] = {}     # a key given twice: the last wins, as in the kernel
    known = ", ".join("oomkiller." + k for k in KERNEL_CMDLINE_KEYS)
    for written, value in kernel_cmdline_values(cmdline):
        norm = written[len("oomkiller."):].replace("-", "_")
        if norm not in KERNEL_CMDLINE_KEYS:
            what = "a key read only from the config file, environment or flags" if norm in _KEYS else "unknown"
            warn(_one_line(f"kernel command line: ignoring {written!r}: {what} (read here: {known})"))
        elif value is None:
            warn(_one_line(f"kernel command line: ignoring {written!r}: no value (write {written}=VALUE)"))
        else:
            items.pop(norm, None)
            items[norm] = (written, norm, value)
    return list(items.values())


def env_values(environ: Mapping[str, str]) -> dict[str, str]:
    """``OOMKILLER_*`` variables but ``OOMKILLER_CONFIG``, by name as written."""
    return {k: v for k, v in environ.items()
            if isinstance(k, str) and k.startswith("OOMKILLER_") and k != "OOMKILLER_CONFIG"}


def _env_items(environ: Mapping[str, str], warn: Warn) -> list[tuple[str, str, str]]:
    items = []
    for name, value in env_values(environ).items():
        norm = name[len("OOMKILLER_"):].lower().replace("-", "_")
        if norm in _KEYS:
            items.append((name, norm, value))
        else:
            hint = _did_you_mean(norm, lambda k: "OOMKILLER_" + k.upper())
            warn(_one_line(f"environment: ignoring unknown variable {name!r}{hint}"))
    return items


def _file_kind(mode: int) -> str:
    for test, what in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "not a regular file"


def read_config_file(path: str, named_by: str = "") -> dict[str, Any]:
    """The table of a TOML config file. Anything but a regular file of UTF-8
    TOML up to MAX_CONFIG_FILE_BYTES is a ConfigError, as is a path that
    cannot name a file; ``named_by`` says where the path came from."""
    where = f"{path}{named_by}"
    if not isinstance(path, str):
        raise ConfigError(f"config file: not a path: {_brief(path)}{named_by}")
    if not path:
        raise ConfigError(f"config file: an empty path{named_by}")
    if "\0" in path:
        raise ConfigError(f"{where}: a path cannot hold a NUL byte")
    too_big = f"{where}: larger than {MAX_CONFIG_FILE_BYTES >> 20} MiB: not a config file"
    try:
        # stat before open: opening a device can have effects of its own.
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(f"{where}: {_file_kind(mode)}, not a config file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):     # swapped since the stat
                raise ConfigError(f"{where}: {_file_kind(st.st_mode)}, not a config file")
            if st.st_size > MAX_CONFIG_FILE_BYTES:
                raise ConfigError(too_big)
            chunks, left = [], MAX_CONFIG_FILE_BYTES + 1
            while left > 0:
                chunk = os.read(fd, left)
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such config file") from None
    except PermissionError:
        raise ConfigError(f"{where}: permission denied") from None
    except OSError as e:
        raise ConfigError(f"{where}: cannot read it: {e.strerror or e}") from None
    data = b"".join(chunks)
    if len(data) > MAX_CONFIG_FILE_BYTES:
        raise ConfigError(too_big)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        hint = " (UTF-16? save it as UTF-8)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise ConfigError(f"{where}: not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start}{hint}") from None
    try:
        return tomllib.loads(text.removeprefix("\ufeff"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where}: not valid TOML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{where}: not valid TOML: nested too deeply") from None
    except ValueError:      # the only other thing tomllib raises: an integer longer than int() takes
        raise ConfigError(f"{where}: not valid TOML: a number with too many digits") from None


# The config file the packaged unit runs the daemon with (deploy/oomkiller.service).


def client_control_socket(*, flag: str | None = None, config_file: str | None = None,
                          environ: Mapping[str, str] | None = None,
                          default_file: str = DEFAULT_CONFIG_FILE, warn: Warn | None = None) -> str:
    """The daemon's control socket as a control command finds it, in the
    daemon's order: the flag, ``$OOMKILLER_CONTROL_SOCKET``, then
    ``control_socket`` of the config file (``--config``, else
    ``$OOMKILLER_CONFIG``, else ``default_file`` if there is one), then
    the default. Each value is checked as the daemon checks it; a config
    file named on the command line or by the environment that cannot be
    read, or is not TOML, is a ConfigError. Only ``control_socket`` of the
    file is read: a bad value of another key is the daemon's to refuse.
    ``default_file``, which no one named, is passed over with a warning
    when this user cannot read it."""
    warn = warn or (lambda _msg: None)
    environ = environ if environ is not None else {}
    values: dict[str, Any] = {}
    origins: dict[str, tuple[str, str]] = {}
    if flag is not None:
        _apply(values, origins, [("--control", "control_socket", flag)], "command line")
    elif environ.get("OOMKILLER_CONTROL_SOCKET") is not None:
        _apply(values, origins, [("OOMKILLER_CONTROL_SOCKET", "control_socket",
                                  environ["OOMKILLER_CONTROL_SOCKET"])], "environment")
    else:
        named_by = ""
        if config_file is None and environ.get("OOMKILLER_CONFIG"):
            config_file, named_by = environ["OOMKILLER_CONFIG"], " (named by OOMKILLER_CONFIG)"
        raw: dict[str, Any] = {}
        if config_file is not None:
            raw = read_config_file(config_file, named_by)
        elif os.path.lexists(default_file):
            if os.access(default_file, os.R_OK):
                config_file = default_file
                raw = read_config_file(default_file)
            else:
                warn(_one_line(f"{default_file}: permission denied: the control socket is taken to be "
                               f"{Config.control_socket}"))
        items = [(k, k.replace("-", "_"), v) for k, v in raw.items()
                 if isinstance(k, str) and k.replace("-", "_") == "control_socket"]
        _apply(values, origins, items, _one_line(config_file or ""))
    return values.get("control_socket", Config.control_socket)


def load(*, cli: Mapping[str, Any] | None = None, config_file: str | None = None,
         environ: Mapping[str, str] | None = None, cmdline: str | None = None,
         warn: Warn | None = None) -> Config:
    """Build the effective config; see the module docstring for precedence.

    ``warn`` gets one line per ignored kernel-command-line word or unknown
    ``OOMKILLER_*`` variable; None drops them."""
    warn = warn or (lambda _msg: None)
    values: dict[str, Any] = {}
    origins: dict[str, tuple[str, str]] = {}
    if cmdline:
        _apply(values, origins, _kernel_items(cmdline, warn), "kernel command line")
    environ = environ if environ is not None else {}
    named_by = ""
    if config_file is None and environ.get("OOMKILLER_CONFIG"):
        config_file, named_by = environ["OOMKILLER_CONFIG"], " (named by OOMKILLER_CONFIG)"
    if config_file is not None:
        raw = read_config_file(config_file, named_by)
        _apply(values, origins, [(k, k.replace("-", "_"), v) for k, v in raw.items()], _one_line(config_file))
    _apply(values, origins, _env_items(environ, warn), "environment")
    _apply(values, origins, [(k, k.replace("-", "_"), v) for k, v in (cli or {}).items() if v is not None],
           "command line")
    conf = Config(**values, origins=origins)
    conf.check()
    return conf
