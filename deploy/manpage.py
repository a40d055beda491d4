"""oomkiller(8), generated from the argument parser (``oomkiller.cli.parser()``)
by argparse-manpage, with the sections a parser does not hold: the
configuration, the exit status (from ``oomkiller.config``'s EXIT_* codes),
the environment and the files.

    python deploy/manpage.py deploy/oomkiller.8     (make man)
    python deploy/manpage.py --check deploy/oomkiller.8

The page is written only when its text changed, so its date is the date of
its last change; ``--check`` exits 1 if the file is not what the parser makes
now (tests/test_manpage.py runs it).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from argparse_manpage.manpage import Manpage  # noqa: E402  (argparse-manpage, the `man` extra)

from oomkiller import __version__, cli  # noqa: E402
from oomkiller import config as cfg  # noqa: E402

# What each exit code means, in the words of the README's table; every
# EXIT_* of oomkiller.config must be here (checked below).
EXIT_MEANINGS = {
    "EXIT_OK": "Success.",
    "EXIT_FAILURE": "The daemon failed at run time, e.g. another daemon holds the control socket.",
    "EXIT_CONFIG": "A bad command line, config file, environment variable, kernel command line flag or "
                   "domain; a control socket or record file path that is not safe or cannot be made "
                   "(as the default socket, for a user other than root).",
    "EXIT_UNREACHABLE": "A control command found no daemon on the control socket, or may not reach it.",
    "EXIT_DENIED": "The daemon refused a control command: only root may change it.",
}

SECTIONS = r"""
[DESCRIPTION]
.B oomkiller run
watches a memory
.I domain
(the host, or one cgroup) and, when its free memory falls below the
.I redline
or every task in it stalls on memory, kills the first killable
.I job
(a cgroup, with all its processes) of a ranked list. It is woken at once by
a BPF program on the kernel's reclaim and OOM tracepoints, by PSI triggers
and by memory cgroup events, and every second by its own timer. It can arm
the kernel to kill the top job at its first failed reclaim. The other
commands talk to a running daemon over its control socket, or, for
.BR rank ,
show the walk a kill would take now.

[CONFIGURATION]
One configuration is built at start from, lowest precedence first: the
defaults; the
.BR oomkiller.redline= ,
.B oomkiller.sleep_ms=
and
.B oomkiller.autostart=
words of the kernel command line; the TOML file
(\fB\-\-config\fR, or \fB$OOMKILLER_CONFIG\fR); \fBOOMKILLER_\fIKEY\fR
environment variables (lists comma-separated); the command line. The
effective configuration is logged once at start. The shipped file lists
every key with its default and what it does. A bad value is one line naming
where it came from and the key, and exit status 2.

[HOOKS]
.B pre_kill
and
.B post_kill
name programs run before and after a job is signalled (a kill, or the
SIGTERM of
.BR term_redline ),
off the kill loop, one at a time, each killed with its process group at
.BR hook_timeout_ms .
Stdin holds the decision's JSON record; the environment holds only
.B PATH
and
.BR OOMKILLER_HOOK ,
.BR OOMKILLER_SIGNAL ,
.BR OOMKILLER_TRIGGER ,
.BR OOMKILLER_REASON ,
.BR OOMKILLER_DOMAIN_NAME ,
.BR OOMKILLER_JOB ,
.BR OOMKILLER_CGROUP ,
.BR OOMKILLER_CGROUP_V2 ,
.B OOMKILLER_SCORE_BYTES
and the domain's figures, and for
.B post_kill
.BR OOMKILLER_RESULT ,
.BR OOMKILLER_FREED_BYTES ,
.B OOMKILLER_PROCS
and
.BR OOMKILLER_PIDS .
A hook must be an executable owned by root and writable by no one else, in
folders likewise. A kill waits for
.B pre_kill
only
.B pre_kill_wait_ms
(0: not at all). Failures are logged at warning with the end of the hook's
stderr and counted in
.BR "oomkiller info" .

[EXIT STATUS]
@EXIT@

[ENVIRONMENT]
.TP
.B OOMKILLER_CONFIG
The config file, when \fB\-\-config\fR is not given.
.TP
.B OOMKILLER_\fIKEY\fR
Any config key, e.g. \fBOOMKILLER_REDLINE=10%\fR; lists are comma-separated.
.TP
.B OOMKILLER_CONTROL_SOCKET
The control socket of the control commands.
.TP
.B BCC_KERNEL_SOURCE
The kernel header tree the BPF program is compiled against. Unset, the
daemon uses \fI/lib/modules/$(uname -r)/build\fR, the kernel's own
\fI/sys/kernel/kheaders.tar.xz\fR, or else the newest header tree under
\fI/usr/src\fR (logged; the program reads only tracepoint arguments, so
another version's headers compile it).

[FILES]
.TP
.I /etc/oomkiller/oomkiller.toml
The config file of the installed service (\fBmake install\fR).
.TP
.I /run/oomkiller/control.sock
The control socket. Its folder must be writable by its owner only.
.TP
.I /usr/local/lib/systemd/system/oomkiller.service
The systemd unit (\fBmake install\fR): the kernel OOM killer kept away,
memory locked and protected, only the capabilities it uses.
.TP
.I /usr/local/share/oomkiller/hooks
Example hooks: \fBnotify\-desktop\fR (a desktop notification to each user
with a graphical session) and \fBrestart\-unit\fR (restarts the killed
service, or a unit named in it).
.TP
.I /opt/oomkiller
The installed package: a virtual environment over the system's Python, whose
\fBbcc\fR module comes from the distribution (Debian's python3\-bpfcc).
.TP
.I /proc/pressure/memory, /sys/fs/cgroup
What is read: PSI, the domain's and jobs' cgroups.
.TP
.I /sys/kernel/tracing
tracefs, for the BPF program's tracepoints (mounted if it is not).

[SEE ALSO]
.BR systemd.resource\-control (5),
.BR earlyoom (1),
.BR systemd\-oomd (8)
"""


def exit_section() -> str:
    codes = {name: getattr(cfg, name) for name in dir(cfg) if name.startswith("EXIT_")}
    missing = sorted(set(codes) - set(EXIT_MEANINGS))
    if missing:
        raise SystemExit(f"deploy/manpage.py: exit codes with no meaning written: {', '.join(missing)}")
    return "\n".join(f".TP\n.B {codes[name]}\n{EXIT_MEANINGS[name]}"
                     for name in sorted(EXIT_MEANINGS, key=lambda n: codes[n]))


def render() -> str:
    # argparse wraps usage and help to the terminal; man fills the text
    # itself, and a usage line broken by argparse renders as ragged lines.
    os.environ["COLUMNS"] = "100000"
    with tempfile.NamedTemporaryFile("w", suffix=".include") as inc:
        inc.write(SECTIONS.replace("@EXIT@", exit_section()).lstrip("\n"))
        inc.flush()
        parser = cli.parser()
        parser.description = None       # the NAME line says it; DESCRIPTION says more
        page = Manpage(parser, format="pretty", _data={
            "project_name": "oomkiller", "version": __version__, "manual_section": 8,
            "manual_title": "System Administration", "include": inc.name,
            "description": "low-latency OOM killer for Linux cgroups"})
        return str(page)


def _body(text: str) -> str:
    """The page without its .TH line, which carries the date."""
    return re.sub(r"^\.TH .*\n", "", text, count=1, flags=re.M)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if OUT is not what the parser makes now")
    ap.add_argument("out", help="the man page file")
    a = ap.parse_args(argv)
    text = render()
    try:
        with open(a.out) as f:
            old = f.read()
    except FileNotFoundError:
        old = ""
    if _body(old) == _body(text):
        return 0
    if a.check:
        print(f"{a.out} is not what oomkiller.cli.parser() makes now: run `make man`", file=sys.stderr)
        return 1
    with open(a.out, "w") as f:
        f.write(text)
    print(f"manpage: wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
