"""Listing every job of the domain in a thread of its own.

Reading a thousand jobs takes some 170 ms (more on a loaded machine), and
below the arm line the arming asks for a fresh listing every 250 ms. Done on
the kill loop, an event that came during a listing waited for it to end: in
the benchmark, the redline's memcg event came 300-600 ms into one, and the
kill with it. The loop now asks this thread for a listing and goes on with
the latest one it has (see ``Daemon.core_jobs``); the thread reads with a
``Cgroupfs`` of its own, so nothing the loop reads (the walk's own reads of
the jobs it may kill) is shared with it. The loop still gets the GIL within
the interpreter's switch interval while the thread reads.

A listing that raises is logged (at most once a minute) and the next
request tries again; the loop, finding no recent listing, lists itself."""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from .cgroupfs import Cgroupfs
from .model import Job
from .output import LoopHold

log = logging.getLogger("oomkiller")

FAILURE_LOG_S = 60.0
# The longest a listing waits for the loop before each job (see ``hold``):
# a loop that is stuck does not stop the listings.
HOLD_MAX_S = 1.0


class Lister(LoopHold):
    def __init__(self, make_fs: Callable[[], Cgroupfs], domain_path: str, jobs: tuple[str, ...],
                 keep_out: tuple[str, ...], clock_usec: Callable[[], int],
                 on_done: Callable[[], None] | None = None,
                 finish: Callable[[list[Job], int], Any] | None = None) -> None:
        self._fs = make_fs()
        self._fs.between_jobs = self.between_jobs
        self._args = (domain_path, tuple(jobs), tuple(keep_out))
        self._clock = clock_usec
        self._on_done = on_done     # called from this thread when a listing is ready
        # what the loop would make of a listing when it takes it, made here
        # (the daemon's ranking of it): given the jobs and when they were
        # listed; its failure costs only that (the loop makes it then)
        self._finish = finish
        # the loop's hold: a listing under way waits before its next job, at
        # most HOLD_MAX_S a job
        LoopHold.__init__(self)
        self._want = threading.Event()
        self._finished = threading.Event()
        self._lock = threading.Lock()
        # (started, finished, jobs, the listing kept for them, what
        # ``finish`` made of them), not taken yet
        self._done: tuple[int, int, list[Job], object, Any] | None = None
        self._stop = False
        self._failed_at = 0.0
        self.busy = False
        self._finished.set()        # none under way
        self.counts = {"listed": 0, "failed": 0}
        self._thread = threading.Thread(target=self._run, name="oomkiller-lister", daemon=True)
        self._thread.start()

    def between_jobs(self) -> None:
        """Called by this thread between jobs (the listing's reads, the
        ranking made of it): waits while the loop holds it."""
        self._go.wait(HOLD_MAX_S)

    def request(self) -> None:
        """Ask for a listing (one at a time: asked again while it lists,
        it lists once more after)."""
        self._want.set()

    def take(self) -> tuple[int, int, list[Job], object, Any] | None:
        """The listing finished since the last take, if any: (when it
        started, when it finished, its jobs, the ``Cgroupfs`` listing kept
        for them, for ``listing_unchanged``, what ``finish`` made of them or
        None)."""
        with self._lock:
            done, self._done = self._done, None
        return done

    @property
    def fs(self) -> Cgroupfs:
        """Its own reads, for ``listing_unchanged`` of what it listed."""
        return self._fs

    def wait(self, timeout_s: float) -> bool:
        """Wait for the listing under way to end, at most ``timeout_s``;
        whether one ended (True at once if none is under way)."""
        return self._finished.wait(timeout_s)

    def close(self) -> None:
        self._stop = True
        self._want.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            self._want.wait()
            self._want.clear()
            if self._stop:
                return
            self.busy = True
            self._finished.clear()
            started = self._clock()
            try:
                kept: list = []
                jobs = self._fs.jobs(*self._args, kept)
                finished = self._clock()
                made = None
                if self._finish is not None:
                    try:
                        made = self._finish(jobs, finished)
                    except Exception as e:  # noqa: BLE001 - the loop makes it itself then
                        log.debug("OOM: a listing's ranking in the background failed: %s: %s",
                                  type(e).__name__, e)
            except Exception as e:  # noqa: BLE001 - the loop lists itself then; say why, seldom
                self.counts["failed"] += 1
                if time.monotonic() - self._failed_at >= FAILURE_LOG_S:
                    self._failed_at = time.monotonic()
                    log.warning("OOM: listing jobs in the background failed (%s: %s); the loop lists them",
                                type(e).__name__, e)
                self._finished.set()
                continue
            finally:
                self.busy = False
            self.counts["listed"] += 1
            with self._lock:
                self._done = (started, finished, jobs, kept[0] if kept else None, made)
            self._finished.set()
            if self._on_done is not None:
                self._on_done()
