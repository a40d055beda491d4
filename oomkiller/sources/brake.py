"""The memory.high brake (cgroup v2): throttle a runaway job while the core decides.

With ``memory_high_brake = true`` the domain's ``memory.high`` is set to its
limit minus half the redline: past the redline the core is already walking
the ranking, and the kernel now makes every allocation in the domain reclaim
and sleep first, which buys that walk its milliseconds. The original value is
put back when the daemon stops. An actuator, not a source: it wakes no one.
"""
from __future__ import annotations

import os

from ..files import read_text
from . import SourceUnavailable


class MemoryHighBrake:
    name = "brake"

    def __init__(self, cgroup_path: str, high_bytes: int) -> None:
        self.file = os.path.join(cgroup_path, "memory.high")
        self.high_bytes = high_bytes
        self.original: str | None = None

    def start(self) -> None:
        try:
            self.original = read_text(self.file).strip()
            with open(self.file, "w") as f:
                f.write(str(self.high_bytes))
        except OSError as e:
            raise SourceUnavailable(f"cannot set {self.file}: {e.strerror or e}") from None

    def stats(self) -> dict:
        return {"memory_high_bytes": self.high_bytes, "was": self.original}

    def close(self) -> None:
        if self.original is not None:
            try:
                with open(self.file, "w") as f:
                    f.write(self.original)
            except OSError:
                pass        # the cgroup is gone: nothing to restore
            self.original = None
