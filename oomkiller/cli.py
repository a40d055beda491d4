"""``oomkiller``: the daemon and its control commands.

Exit codes: 0 ok; 1 run-time failure; 2 bad command line, config file,
environment or kernel flag; 3 no daemon answers on the control socket;
4 the daemon refused the command (only root may change it).
"""
from __future__ import annotations

import argparse
import os
import sys

from .client import DEFAULT_CONFIG_FILE, DEFAULT_CONTROL_SOCKET, MAX_SOCKET_PATH_BYTES, ControlError, request
from .exitcodes import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, EXIT_UNREACHABLE

# typing costs a control command 2 ms: the annotations are never evaluated.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from . import config as cfg

# A control command (info, start, stop, print, lowmem, and rank when the
# daemon answers it) imports only argparse, json, socket and the few light
# modules above: the daemon, its sources, the config parser and logging are
# imported by the commands that use them (tests/test_cli_imports.py).

# What each control command asks of the running daemon. Only `info` may be
# asked by any user; the others need root (the daemon checks SO_PEERCRED).
CONTROL_HELP = {
    "info": "show the running daemon's state: redline, domain, kills, each source and why one is off "
            "(any user may ask)",
    "start": "start watching memory and killing (root only)",
    "stop": "stop watching; the daemon keeps running and answers (root only)",
    "print": "toggle printing the free/total line on every wake (root only)",
    "lowmem": "simulate a low-memory event now: the next wake walks the ranking and may kill (root only)",
}
CONTROL_COMMANDS = tuple(CONTROL_HELP)
CONTROL_SOCKET_HELP = ("the daemon's control socket (else $OOMKILLER_CONTROL_SOCKET, else control_socket of the "
                       "config file, else /run/oomkiller/control.sock)")


def _policy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML config file (also $OOMKILLER_CONFIG)")
    p.add_argument("--domain", metavar="host|parent|CGROUP_DIR",
                   help="what free/total memory means: host (MemAvailable of MemTotal), parent (the cgroup "
                        "above the daemon's own, e.g. its pod) or a cgroup folder (its limit) (default host)")
    p.add_argument("--jobs", metavar="GLOB", action="append",
                   help="a cgroup matching GLOB is a job; the word 'auto' (the default) adds the rule of names: "
                        "systemd units and pods are jobs, slices never, elsewhere cgroups with processes")
    p.add_argument("--protect", metavar="GLOB", action="append", help="never kill jobs matching GLOB")
    p.add_argument("--avoid", metavar="GLOB", action="append", help="kill jobs matching GLOB last")
    p.add_argument("--prefer", metavar="GLOB", action="append", help="kill jobs matching GLOB first")
    p.add_argument("--cgroup-root", metavar="DIR", help=argparse.SUPPRESS)
    p.add_argument("--proc-root", metavar="DIR", help=argparse.SUPPRESS)


def parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line. ``only``, a control command or ``rank``: the parser
    of that command alone (what it parses, and its help, are the same;
    building the others would only slow the command down)."""
    from . import __version__
    top = argparse.ArgumentParser(prog="oomkiller", description="A low-latency OOM killer for Linux cgroups.")
    top.add_argument("--version", action="version", version=f"oomkiller {__version__}")
    sub = top.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")
    if only is None:
        _run_parser(sub)
    for name, text in CONTROL_HELP.items():
        if only in (None, name):
            c = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
            c.add_argument("--control", metavar="SOCKET", default=None, help=CONTROL_SOCKET_HELP)
            c.add_argument("--config", metavar="FILE", default=None,
                           help="the daemon's TOML config file, for its control_socket (also $OOMKILLER_CONFIG; "
                                f"default {DEFAULT_CONFIG_FILE} if there is one)")
            c.add_argument("--json", action="store_true", help="print the reply as JSON")
    if only is None:
        _bench_parser(sub)
    if only in (None, "rank"):
        _rank_parser(sub)
    return top


def _run_parser(sub: Any) -> None:
    run = sub.add_parser("run", help="run the daemon")
    _policy_args(run)
    run.add_argument("--redline", metavar="SIZE|PCT%", help="kill when free memory is below this (default 5%%)")
    run.add_argument("--sleep-ms", type=int, metavar="N", help="redline check period (default 1000)")
    run.add_argument("--term-redline", metavar="SIZE|PCT%",
                     help="the gentler first step: below this much free memory (above the redline), send the top "
                          "job SIGTERM, once (default 0: off)")
    run.add_argument("--term-grace-ms", type=int, metavar="N",
                     help="after a SIGTERM, how long before another job may get one (default 3000)")
    run.add_argument("--fixed-sleep", dest="adaptive_sleep", action="store_false", default=None,
                     help="wake only every sleep duration, also while memory falls (adaptive_sleep = false)")
    run.add_argument("--post-kill-delay-ms", type=int, metavar="N", help="pause after a kill (default 500)")
    run.add_argument("--dry-run", action="store_true", default=None, help="decide and log, kill nothing")
    run.add_argument("--no-autostart", dest="autostart", action="store_false", default=None,
                     help="start stopped; `oomkiller start` starts it")
    run.add_argument("--print", dest="print_", action="store_true", default=None,
                     help="print free/total memory on every wake")
    run.add_argument("--sources", metavar="LIST",
                     help="event sources to use, comma-separated: ebpf,prearm,psi,memcg,timer "
                          "(default all; the timer always runs)")
    run.add_argument("--control", metavar="SOCKET", help="control socket (default /run/oomkiller/control.sock)")
    run.add_argument("--json-log", metavar="FILE", help="where decision records go ('-' = stdout)")
    run.add_argument("--pre-kill", metavar="PROGRAM",
                     help="run PROGRAM (an absolute path, owned by root, writable by no one else) before a job is "
                          "signalled, with the decision as JSON on stdin")
    run.add_argument("--post-kill", metavar="PROGRAM", help="run PROGRAM after a job was signalled, likewise")
    run.add_argument("--hook-timeout-ms", type=int, metavar="N",
                     help="kill a hook and its process group after this long (default 5000)")
    run.add_argument("--pre-kill-wait-ms", type=int, metavar="N",
                     help="let a kill wait for --pre-kill this long at most (default 0: it does not wait)")
    run.add_argument("--log-level", metavar="LEVEL",
                     help="debug, info (the default), notice, warning or error: the least a line must be to be logged")
    run.add_argument("-v", "--verbose", dest="log_level", action="store_const", const="debug",
                     help="per-wake detail (--log-level debug)")
    run.add_argument("--print-bpf", action="store_true", help="print the BPF program as it would be compiled, and exit")


def _bench_parser(sub: Any) -> None:
    bench = sub.add_parser("bench", help="run the benchmark harness, from a checkout only "
                                         "(python -m oomkiller_bench --help)", add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, metavar="ARGS", help="the benchmark's own arguments")


def _rank_parser(sub: Any) -> None:
    rk = sub.add_parser("rank", help="print the walk a kill would take now, without killing",
                        description="Print the walk a kill would take now, without killing. Without options, the "
                                    "running daemon's own walk, from its control socket (root only); when no "
                                    "daemon answers, or with any of the options below, ranked here with this "
                                    "command's config.")
    _policy_args(rk)
    rk.add_argument("--control", metavar="SOCKET", default=None, help=CONTROL_SOCKET_HELP)
    rk.add_argument("--json", action="store_true", help="print the ranking as JSON")


def _cli_values(a: argparse.Namespace) -> dict[str, Any]:
    keys = {"domain": "domain", "redline": "redline", "sleep_ms": "sleep_ms", "autostart": "autostart",
            "adaptive_sleep": "adaptive_sleep", "print_": "print", "dry_run": "dry_run", "post_kill_delay_ms": "post_kill_delay_ms",
            "control": "control_socket", "jobs": "jobs", "protect": "protect", "avoid": "avoid",
            "prefer": "prefer", "json_log": "json_log", "sources": "sources", "cgroup_root": "cgroup_root", "proc_root": "proc_root",
            "log_level": "log_level", "term_redline": "term_redline", "term_grace_ms": "term_grace_ms",
            "pre_kill": "pre_kill", "post_kill": "post_kill", "hook_timeout_ms": "hook_timeout_ms",
            "pre_kill_wait_ms": "pre_kill_wait_ms"}
    return {key: getattr(a, attr) for attr, key in keys.items() if getattr(a, attr, None) is not None}


def _stderr_prefix(priority: int) -> str:
    """``<N>`` when stderr is the journal's stream (see output.stderr_is_journal)."""
    from .output import stderr_is_journal
    try:
        return f"<{priority}>" if stderr_is_journal(os.environ, sys.stderr.fileno()) else ""
    except (OSError, ValueError):       # no stderr at all
        return ""


def _config_warning(message: str) -> None:
    print(f"{_stderr_prefix(4)}oomkiller: warning: {message}", file=sys.stderr)


def load_config(a: argparse.Namespace) -> cfg.Config:
    from . import config as cfg
    from .procfs import Procfs
    try:
        cmdline = Procfs().cmdline()
    except OSError:
        cmdline = ""
    conf = cfg.load(cli=_cli_values(a), config_file=getattr(a, "config", None),
                    environ=os.environ, cmdline=cmdline, warn=_config_warning)
    return conf


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        # The benchmark is its own package, in the checkout but not in the
        # daemon's wheel.
        import importlib.util
        if importlib.util.find_spec("oomkiller_bench") is None:
            print("oomkiller: the benchmark is not installed; run it from a checkout: python -m oomkiller_bench",
                  file=sys.stderr)
            return EXIT_CONFIG
        from oomkiller_bench import main as bench_main
        return bench_main(argv[1:])
    a = parser(only=argv[0] if argv[:1] and argv[0] in (*CONTROL_COMMANDS, "rank") else None).parse_args(argv)
    try:
        if a.command in CONTROL_COMMANDS:
            return control_command(a)
        if a.command == "rank" and _rank_asks_daemon_first(a):
            # No config of this command's own can change the answer: ask
            # the daemon before reading one (see _rank_asks_daemon_first).
            done = rank_from_daemon(a)
            if done is not None:
                return done
            return _configured(a, asked_daemon=True)
        return _configured(a)
    except ControlError as e:
        print(f"oomkiller: {e}", file=sys.stderr)
        return e.exit_code


def _configured(a: argparse.Namespace, asked_daemon: bool = False) -> int:
    """The commands that read a config: run, and rank."""
    from . import config as cfg
    try:
        if a.command == "run" and a.print_bpf:
            return print_bpf()
        conf = load_config(a)
        if a.command == "rank":
            if not asked_daemon and not _rank_options_given(a):
                done = rank_from_daemon(a)
                if done is not None:
                    return done
            return rank_command(conf, a.json)
        return run_command(conf)
    except cfg.ConfigError as e:
        print(f"{_stderr_prefix(3)}oomkiller: config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except ControlError as e:
        print(f"oomkiller: {e}", file=sys.stderr)
        return e.exit_code


def _plain_control_path(a: argparse.Namespace) -> str | None:
    """The flag or ``$OOMKILLER_CONTROL_SOCKET`` when it is plainly a good
    socket path (absolute, printable, short enough): the config's checks
    would pass it unchanged, so it is taken without the config parser (a
    control command answers in milliseconds: tests/test_cli_imports.py).
    None otherwise."""
    given = a.control if a.control is not None else os.environ.get("OOMKILLER_CONTROL_SOCKET")
    if given is None:
        # No config file to read either: the default.
        if getattr(a, "config", None) is None and not os.environ.get("OOMKILLER_CONFIG") \
                and not os.path.lexists(DEFAULT_CONFIG_FILE):
            return DEFAULT_CONTROL_SOCKET
        return None
    if given.startswith("/") and given.isprintable() \
            and len(given.encode("utf-8", "surrogatepass")) <= MAX_SOCKET_PATH_BYTES:
        return given
    return None


def control_path(a: argparse.Namespace) -> str:
    """The daemon's control socket, found as the daemon finds it: the flag,
    ``$OOMKILLER_CONTROL_SOCKET``, ``control_socket`` of the config file,
    the default (``config.client_control_socket``); ConfigError if the way
    is bad."""
    plain = _plain_control_path(a)
    if plain is not None:
        return plain
    from . import config as cfg
    return cfg.client_control_socket(flag=a.control, config_file=getattr(a, "config", None),
                                     environ=os.environ, warn=_config_warning)


class _BadWay(ControlError):
    """The way to the control socket is bad (a bad flag, variable or config
    file): one config-error line, exit 2."""


def _control_path_or_exit(a: argparse.Namespace) -> str:
    plain = _plain_control_path(a)
    if plain is not None:
        return plain
    from . import config as cfg
    try:
        return control_path(a)
    except cfg.ConfigError as e:
        raise _BadWay(f"config error: {e}", EXIT_CONFIG) from None


def control_command(a: argparse.Namespace) -> int:
    import json
    reply = request(_control_path_or_exit(a), a.command)
    if a.json:
        print(json.dumps(reply.get("data", {}), indent=2, sort_keys=True))
    else:
        print(_printable_lines(reply.get("text", "")))
    return EXIT_OK


def _printable_lines(text: str) -> str:
    """A reply's text as the terminal gets it: whatever answers on the
    socket could send escape sequences."""
    from .text import printable
    return "\n".join(printable(line) for line in text.split("\n"))


def _domain(conf: cfg.Config):
    """The configured domain, read once; ConfigError naming the key at fault:
    proc_root, cgroup_root, the domain itself, or a line that does harm on a
    domain of its size."""
    from .cgroupfs import Cgroupfs
    from .domain import Domain
    from .procfs import Procfs

    def why(e: Exception) -> str:
        if isinstance(e, OSError) and e.strerror:
            return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
        return str(e)

    # isfile: a FIFO there would hang the read.
    meminfo = os.path.join(conf.proc_root, "meminfo")
    if not os.path.isfile(meminfo):
        raise conf.blame("proc_root", f"{conf.proc_root}: no meminfo there (not a procfs)")
    procfs = Procfs(conf.proc_root)
    try:
        if "MemTotal" not in procfs.meminfo():
            raise ValueError(f"{meminfo}: no MemTotal")
    except (OSError, ValueError) as e:
        raise conf.blame("proc_root", why(e)) from None
    if not os.path.isdir(conf.cgroup_root):
        raise conf.blame("cgroup_root", f"{conf.cgroup_root}: not a folder")
    try:
        cg = Cgroupfs(conf.cgroup_root, procfs)
    except (OSError, ValueError) as e:
        raise conf.blame("cgroup_root", why(e)) from None
    try:
        dom = Domain(conf.domain, procfs, cg, count_swap=conf.count_swap)
        snap = dom.snapshot(0)     # a domain whose memory cannot be read is a bad domain
    except (OSError, ValueError, KeyError, IndexError, RuntimeError) as e:
        # RuntimeError (RecursionError among them): a cgroup tree the reads
        # did not expect, made by whoever owns a cgroup in the domain
        problem = f"cannot read its cgroup tree ({type(e).__name__}: {e})" if isinstance(e, RuntimeError) else why(e)
        raise conf.blame("domain", problem if problem.startswith(conf.domain) else f"{conf.domain}: {problem}") from None
    conf.check_domain(snap.total_bytes)
    return dom


# Options of `rank` that ask for a ranking other than the running daemon's.
RANK_LOCAL_OPTIONS = ("config", "domain", "jobs", "protect", "avoid", "prefer", "cgroup_root", "proc_root")


def _rank_options_given(a: argparse.Namespace) -> bool:
    """Whether `rank` was given a config of its own, on the command line or
    in OOMKILLER_* variables (but for the control socket's)."""
    from . import config as cfg
    if any(getattr(a, k, None) is not None for k in RANK_LOCAL_OPTIONS):
        return True
    env = {"OOMKILLER_CONFIG"} | {"OOMKILLER_" + k.upper() for k in cfg.config_keys() if k != "control_socket"}
    return any(k in env for k in os.environ)


def _rank_asks_daemon_first(a: argparse.Namespace, cmdline_path: str = "/proc/cmdline") -> bool:
    """Whether `rank` may ask the daemon before reading a config: nothing
    but the socket could be configured (no option of RANK_LOCAL_OPTIONS, no
    OOMKILLER_* variable but the socket's, no oomkiller.* word on the kernel
    command line) and the socket's path is one the config takes as it is.
    Then reading the config first could neither fail, warn, nor change the
    answer, and a control command stays fast; otherwise it is read first,
    and says what is wrong with it."""
    if any(getattr(a, k, None) is not None for k in RANK_LOCAL_OPTIONS):
        return False
    if any(k.startswith("OOMKILLER_") and k != "OOMKILLER_CONTROL_SOCKET" for k in os.environ):
        return False
    if _plain_control_path(a) is None:
        return False        # the socket is named by a config file, or oddly: read the config first
    try:
        with open(cmdline_path, "rb") as f:
            cmdline = f.read(1 << 16)
    except OSError:
        cmdline = b""
    return b"oomkiller." not in cmdline.lower()


def rank_from_daemon(a: argparse.Namespace) -> int | None:
    """The running daemon's own walk, as it would take it now; None when no
    daemon answers (the caller ranks here instead, and says so)."""
    import json
    try:
        reply = request(_control_path_or_exit(a), "rank")
    except ControlError as e:
        if e.exit_code != EXIT_UNREACHABLE:
            raise
        print(f"oomkiller: {e}: ranked here, with this command's config", file=sys.stderr)
        return None
    data = reply.get("data", {})
    print(json.dumps(data.get("ranking", []), indent=2) if a.json else _printable_lines(reply.get("text", "")))
    return EXIT_OK


def rank_command(conf: cfg.Config, as_json: bool) -> int:
    """The walk a kill would take now, through the daemon's own code: its
    job list (with its keep-out set), its policy, its ranker."""
    import json

    from .daemon import Daemon
    ok, text, data = Daemon(conf, domain=_domain(conf)).handle("rank")
    print(json.dumps(data["ranking"], indent=2) if as_json else text)
    return EXIT_OK


def run_command(conf: cfg.Config) -> int:
    """The composition root: everything the daemon uses is built here, handed
    to it, and closed here once, in the reverse order, also on failure."""
    import faulthandler
    import logging

    from . import report
    from .control import ControlServer, SocketPathError
    from .daemon import Daemon
    from .footprint import one_malloc_arena, protect_self
    from .hooks import Hooks
    from .kmsg import KernelLog
    from .marks import CgroupMarks
    from .notify import Notifier
    from .output import LEVELS, OutputPathError, open_record_file, setup_logging
    from .sources.build import build_sources
    log = logging.getLogger("oomkiller")
    one_malloc_arena()      # before the first thread
    log_writer = setup_logging(LEVELS[conf.log_level])
    dom = _domain(conf)     # a bad domain is a config error, before anything starts
    conf.check_hooks()      # and a hook that must not run
    log.info("OOM: effective config %s", report.json_line(conf.describe()))
    for pid, name in dom.procfs.other_oom_killers():
        log.warning("OOM: another OOM killer is running: %s (pid %d): two killers act on one shortage, each on "
                    "its own view of it; stop and disable one of them", report.printable(name), pid)
    try:
        records = open_record_file(conf.json_log)
    except OutputPathError as e:
        raise conf.blame("json_log", str(e)) from None
    notifier = Notifier(os.environ, warn=lambda msg: log.warning("OOM: %s", msg))
    if notifier.watchdog_usec:
        # systemd's watchdog aborts a stalled daemon with SIGABRT: the
        # threads' stacks then go to the journal, to show where it stood.
        faulthandler.enable(all_threads=True)
        if conf.kill_timeout_ms * 1000 >= notifier.watchdog_usec // 2:
            log.warning("OOM: kill_timeout_ms=%d is at least half the watchdog period (%d ms): a kill that waits "
                        "that long for its job to empty may get the daemon restarted (raise WatchdogSec=)",
                        conf.kill_timeout_ms, notifier.watchdog_usec // 1000)
    built = control = None
    # its writer thread opens /dev/kmsg at the first kill
    kernel_log = KernelLog() if conf.kmsg else None
    marks = CgroupMarks(dom.cgroupfs.layout, dom.path) if conf.cgroup_marks else None
    metrics, metrics_problem = None, ""
    hooks = Hooks(conf.pre_kill, conf.post_kill, timeout_ms=conf.hook_timeout_ms,
                  pre_kill_wait_ms=conf.pre_kill_wait_ms, proc_root=conf.proc_root, subreaper=True)
    try:
        raise_fd_limit()
        daemon: Daemon | None = None
        try:
            # Requests wait in the backlog until the daemon runs its server.
            control = ControlServer(conf.control_socket, lambda cmd: daemon.handle(cmd))
        except SocketPathError as e:
            raise conf.blame("control_socket", str(e)) from None
        if conf.metrics:
            metrics, metrics_problem = _metrics_server(conf, lambda: daemon.published if daemon else None)
        built = build_sources(conf, dom)
        daemon = Daemon(conf, domain=dom, json_out=records, log_writer=log_writer, sources=built.sources,
                        unavailable=built.unavailable, arm=built.arm, brake=built.brake, control=control,
                        notifier=notifier, kernel_log=kernel_log, marks=marks, metrics=metrics, hooks=hooks,
                        background_listing=True)
        daemon.metrics_problem = metrics_problem
        if metrics is not None:
            daemon.publish()
            metrics.start()
        if conf.protect_self and os.geteuid() == 0:
            problems, before, after = protect_self()
            for problem in problems:
                log.warning("OOM: %s", problem)
            log.info("OOM: own memory: %s resident before trimming, %s after, %s locked",
                     report.format_size(before["VmRSS"]), report.format_size(after["VmRSS"]),
                     report.format_size(after.get("VmLck", 0)))
        daemon.run()
    except RuntimeError as e:
        log.error("OOM: %s", e)
        return EXIT_FAILURE
    finally:
        if built is not None:
            built.close()       # the brake's memory.high goes back
        if control is not None:
            control.close()
        if metrics is not None:
            metrics.close()
        records.close()
        if kernel_log is not None:
            kernel_log.close()
        if marks is not None:
            marks.close()
        hooks.close()
        notifier.close()
        if log_writer is not None:
            log_writer.close()
    return EXIT_OK


def _metrics_server(conf: cfg.Config, snapshot):
    """(server, "") or, when prometheus_client is missing, (None, why) after
    one warning: metrics are optional, killing is not. A path or port that
    cannot be listened on is a config error."""
    import logging

    from .control import SocketPathError
    log = logging.getLogger("oomkiller")
    try:
        from .metrics import MetricsServer
        return MetricsServer(conf.metrics, snapshot), ""
    except ImportError as e:
        why = (f"prometheus_client is not installed ({e}): pip install 'oomkiller[metrics]' or "
               "apt install python3-prometheus-client")
        log.warning("OOM: metrics = %s: no endpoint: %s", conf.metrics, why)
        return None, why
    except SocketPathError as e:
        raise conf.blame("metrics", str(e)) from None
    except OSError as e:
        raise conf.blame("metrics", f"cannot listen on {conf.metrics}: {e.strerror or e}") from None


def raise_fd_limit() -> None:
    """A kill holds a pidfd per victim it times: take the hard limit."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def print_bpf() -> int:
    from .sources.bpf import BpfSource
    print(BpfSource().program_text())
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
