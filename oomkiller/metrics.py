"""A Prometheus endpoint, off by default (``metrics = ""``).

The kill loop never serves it and never waits on it: at most once a second,
and after every kill, it publishes a plain dict of its counters
(``Daemon.publish``, one reference swap), and a thread of its own serves
scrapes from the last one published. The latency histograms are counted by
the loop in plain integer buckets (``Buckets``, no lock, no library); the
metrics thread turns the dict into Prometheus families with
``prometheus_client`` (an optional dependency, ``pip install
oomkiller[metrics]`` or Debian's python3-prometheus-client), and reads the
daemon's own RSS and locked bytes from /proc itself.

Where it listens: a Unix socket path (``/run/oomkiller/metrics.sock``; its
folder must be writable by its owner only, as for the control socket) or a
loopback address and port (``127.0.0.1:9127``, ``[::1]:9127``). Any other
address is a config error: the endpoint has no authentication, and what it
tells (the domain's memory, kills, the daemon's state) is for the host's
own collector; a remote Prometheus scrapes it through a proxy or a node
agent on the host.

Bounded work per request: one connection at a time, 1 s for the whole of
it (request and reply), a request of at most 8 KiB; only ``GET /metrics``
(or ``/``) gets the page, anything else a 404 or 400. prometheus_client's
own ``start_http_server`` starts a thread per connection with no deadline,
which a local user could use to pile up threads; its text format is used,
its server is not.
"""
from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from typing import Any, Callable, Optional, Sequence, Tuple

from .footprint import status_bytes
from .output import start_thread

log = logging.getLogger("oomkiller")

# Latency buckets, in microseconds: the armed kill decides in 2-7 ms, the
# timer in up to a second, a job of a thousand processes empties in up to
# a few hundred ms (README: Benchmark; killer.py).
LATENCY_BUCKETS_USEC = (500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
                        1_000_000, 2_500_000, 5_000_000, 10_000_000)

REQUEST_MAX_BYTES = 8192
REQUEST_TIMEOUT_S = 1.0
LISTEN_BACKLOG = 8
DEFAULT_PORT = 9127

# The kills a daemon can count (daemon.py, Killer.walk): each is exported
# from the start at 0, so that rate() and increase() see the first kill of
# each kind (a series that first appears at 1 shows no increase).
KILL_KINDS = (("cgroup.kill", "emptied"), ("cgroup.kill", "not_empty"), ("cgroup.kill", "failed"),
              ("signal", "emptied"), ("signal", "not_empty"), ("signal", "failed"), ("none", "dry_run"))


class Buckets:
    """A histogram the loop fills: plain integers, no lock (only the loop
    writes; a scrape reads a published copy)."""

    def __init__(self, bounds_usec: Sequence[int] = LATENCY_BUCKETS_USEC) -> None:
        self.bounds = tuple(bounds_usec)
        self.counts = [0] * (len(self.bounds) + 1)     # the last is +Inf
        self.sum_usec = 0

    def observe(self, usec: int) -> None:
        usec = max(0, usec)
        i = 0
        while i < len(self.bounds) and usec > self.bounds[i]:
            i += 1
        self.counts[i] += 1
        self.sum_usec += usec

    def snapshot(self) -> dict[str, Any]:
        return {"bounds": self.bounds, "counts": tuple(self.counts), "sum_usec": self.sum_usec}


def cumulative(h: dict[str, Any]) -> list[tuple[str, int]]:
    """Prometheus buckets (``le`` in seconds, cumulative) of a snapshot."""
    out, total = [], 0
    for bound, n in zip(h["bounds"], h["counts"]):
        total += n
        out.append((f"{bound / 1e6:g}", total))
    out.append(("+Inf", total + h["counts"][-1]))
    return out


def families(snap: dict[str, Any] | None, own: dict[str, int]) -> list[Any]:
    """The metric families of a published snapshot (``Daemon.publish``)
    and the daemon's own memory."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
    out: list[Any] = []

    def gauge(name: str, doc: str, value: float | None, labels: dict[str, str] | None = None) -> None:
        if value is None:
            return
        g = GaugeMetricFamily(f"oomkiller_{name}", doc, labels=list(labels or {}))
        g.add_metric(list((labels or {}).values()), value)
        out.append(g)

    def counter(name: str, doc: str, rows: dict[tuple[str, ...], float], labels: Sequence[str] = ()) -> None:
        c = CounterMetricFamily(f"oomkiller_{name}", doc, labels=list(labels))
        for key, v in sorted(rows.items()):
            c.add_metric(list(key), v)
        out.append(c)

    gauge("resident_bytes", "The daemon's own resident memory (VmRSS).", own.get("VmRSS"))
    gauge("locked_bytes", "The daemon's own locked memory (VmLck).", own.get("VmLck"))
    if snap is None:
        return out
    gauge("up", "1 while the kill loop publishes; its age is oomkiller_published_age_seconds.", 1)
    gauge("published_age_seconds", "Seconds since the kill loop last published these figures.",
          max(0.0, (time.monotonic_ns() // 1000 - snap["published_usec"]) / 1e6))
    gauge("running", "1 while watching (oomkiller start/stop).", 1 if snap["running"] else 0)
    for key, doc in (("domain_free_bytes", "Free memory of the domain at the last wake."),
                     ("domain_total_bytes", "Total memory of the domain at the last wake."),
                     ("redline_bytes", "The redline in bytes of the domain."),
                     ("arm_line_bytes", "The arm line in bytes of the domain (prearm arms below it).")):
        gauge(key, doc, snap.get(key))
    counter("wakes_total", "Wakes of the core, by what woke it (one wake may count for several sources).",
            {(s,): n for s, n in snap["wakes_by_source"].items()}, ["source"])
    ev = snap.get("ebpf")
    if ev:
        counter("ebpf_events_lost_total", "eBPF events lost: the perf buffer was full.", {(): ev["lost_perf"]})
        counter("ebpf_events_rate_limited_total", "eBPF events not sent by design: rate-limited per cgroup.",
                {(): ev["rate_limited"]})
        counter("ebpf_events_outside_domain_total", "eBPF events not sent by design: outside the domain.",
                {(): ev["outside_domain"]})
    counter("kills_total", "Kill attempts, by method (cgroup.kill, signal, none) and result "
            "(emptied, not_empty, failed, dry_run).", {**dict.fromkeys(KILL_KINDS, 0), **snap["kills"]},
            ["method", "result"])
    counter("freed_bytes_total", "Bytes freed by kills (domain used before minus after).", {(): snap["freed_bytes"]})
    counter("armed_kills_total", "Kills of the armed job in the kernel, at its failed reclaim.",
            {(): snap["armed_kills"]})
    counter("kernel_oom_kills_total", "Tasks the kernel's own OOM killer chose (in the domain, or any on a host "
            "domain): kills oomkiller did not prevent.", {(): snap["kernel_kills_seen"]})
    counter("terms_total", "The SIGTERM step (term_redline): jobs sent SIGTERM (signalled), or not (failed).",
            {("signalled",): 0, ("failed",): 0, **{(k,): n for k, n in (snap.get("terms") or {}).items()}},
            ["result"])
    if snap.get("hooks") is not None:
        counter("hook_runs_total", "pre_kill and post_kill runs by how they ended (ok, failed, timed_out), and "
                "runs dropped with the queue full.", {(k,): n for k, n in snap["hooks"].items()}, ["result"])
    for key, doc in (("event_to_decision_seconds", "From the first event of a wake to the kill decision."),
                     ("signal_to_empty_seconds", "From the signal to the killed job's cgroup being empty.")):
        h = snap[key]
        fam = HistogramMetricFamily(f"oomkiller_{key}", doc)
        fam.add_metric([], cumulative(h), sum_value=h["sum_usec"] / 1e6)
        out.append(fam)
    return out


class _Collector:
    def __init__(self, snapshot: Callable[[], dict | None]) -> None:
        self.snapshot = snapshot

    def collect(self):
        try:
            own = status_bytes(("VmRSS", "VmLck"))
        except OSError:
            own = {}
        yield from families(self.snapshot(), own)


def parse_address(value: str) -> Tuple[str, Any]:
    """``("unix", path)`` or ``("tcp", (host, port))``; ValueError naming
    what is wrong. Only loopback addresses (see the module docstring)."""
    if value.startswith("/"):
        return "unix", value
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r}: not an absolute socket path or HOST:PORT (like \"127.0.0.1:{DEFAULT_PORT}\")")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        host = "127.0.0.1"
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: port must be 1..65535")
    import ipaddress
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{value!r}: {host!r} is not an IP address (give 127.0.0.1 or [::1])") from None
    if not ip.is_loopback:
        raise ValueError(f"{value!r}: {host} is not a loopback address: the endpoint has no authentication, "
                         "so it listens on loopback or a Unix socket only (scrape it through a local agent "
                         "or proxy)")
    return "tcp", (str(ip), int(port))


class MetricsServer:
    """Serves ``GET /metrics`` from its own thread; ``start`` binds (errors
    are ``SocketPathError`` / OSError for the caller), ``close`` stops."""

    def __init__(self, address: str, snapshot: Callable[[], dict | None]) -> None:
        from prometheus_client import CollectorRegistry, generate_latest  # ImportError: the caller warns
        self.address = address
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Collector(snapshot))
        self._render = generate_latest
        self.served = self.refused = self.timed_out = self.errors = 0
        self.last_error = ""
        kind, where = parse_address(address)
        self._unix_path = where if kind == "unix" else None
        if kind == "unix":
            from .control import _bind
            self._sock = _bind(where)
        else:
            fam = socket.AF_INET6 if ":" in where[0] else socket.AF_INET
            self._sock = socket.create_server(where, family=fam, backlog=LISTEN_BACKLOG)
        self._sock.settimeout(None)
        self._stop_r, self._stop_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._thread = start_thread(self._serve, "oomkiller-metrics")

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"listen": self.address, "served": self.served, "refused": self.refused,
                               "timed_out": self.timed_out, "errors": self.errors}
        if self.last_error:
            out["last_error"] = self.last_error
        return out

    def _serve(self) -> None:
        while True:
            r, _, _ = select.select([self._sock, self._stop_r], [], [])
            if self._stop_r in r:
                return
            try:
                conn, _addr = self._sock.accept()
            except OSError:
                continue
            try:
                self._one(conn)
            except socket.timeout:
                self.timed_out += 1
            except Exception as e:     # noqa: BLE001 - one client must not end the thread
                self.errors += 1
                self.last_error = f"{type(e).__name__}: {e}"
            finally:
                conn.close()

    def _one(self, conn: socket.socket) -> None:
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        data = b""
        while b"\r\n\r\n" not in data and b"\n\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout()
            conn.settimeout(left)
            chunk = conn.recv(REQUEST_MAX_BYTES + 1 - len(data))
            if not chunk:
                break
            data += chunk
            if len(data) > REQUEST_MAX_BYTES:
                self.refused += 1
                return self._reply(conn, deadline, 431, b"request too large\n")
        words = data.split(b"\r\n", 1)[0].split(b"\n", 1)[0].split()
        if len(words) != 3 or not words[2].startswith(b"HTTP/"):
            self.refused += 1
            return self._reply(conn, deadline, 400, b"bad request\n")
        method, target = words[0], words[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD") or target not in (b"/metrics", b"/"):
            self.refused += 1
            return self._reply(conn, deadline, 404, b"only GET /metrics\n")
        body = self._render(self._registry)
        self.served += 1
        self._reply(conn, deadline, 200, b"" if method == b"HEAD" else body,
                    b"text/plain; version=0.0.4; charset=utf-8", len(body))

    def _reply(self, conn: socket.socket, deadline: float, code: int, body: bytes,
               ctype: bytes = b"text/plain; charset=utf-8", length: int | None = None) -> None:
        reason = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 431: b"Request Header Fields Too Large"}[code]
        head = (b"HTTP/1.0 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                % (code, reason, ctype, len(body) if length is None else length))
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout()
        conn.settimeout(left)
        conn.sendall(head + body)

    def close(self, timeout_s: float = 2.0) -> None:
        try:
            os.write(self._stop_w, b"x")
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._sock.close()
        if self._unix_path:
            try:
                os.unlink(self._unix_path)
            except OSError:
                pass
        os.close(self._stop_r)
        os.close(self._stop_w)
