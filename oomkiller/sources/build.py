"""Start the configured event sources and actuators; each that cannot start
is reported once, with what is missing, and the daemon runs on the rest.

What is built here is closed here (``Built.close``), once: the composition
root (``cli``) builds it, hands it to the daemon, and closes it at the end."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

from ..config import Config
from ..domain import Domain
from . import SourceUnavailable
from .brake import MemoryHighBrake
from .memcg import MemcgSource
from .psi import PsiSource

log = logging.getLogger("oomkiller")


@dataclass
class Built:
    sources: list = field(default_factory=list)             # they wake the core
    unavailable: dict[str, str] = field(default_factory=dict)
    arm: object | None = None                                # PreArm: acts on the core's Arm/Disarm
    brake: MemoryHighBrake | None = None                     # set once, put back at close

    def close(self) -> None:
        """Everything built, once: the brake's memory.high goes back."""
        if self.brake is not None:
            self.brake.close()
            self.brake = None
        for src in self.sources:
            src.close()
        self.sources.clear()
        self.arm = None


def build_sources(conf: Config, domain: Domain) -> Built:
    """The live sources, what is unavailable and why, and the actuators."""
    built = Built()
    sources, unavailable = built.sources, built.unavailable
    wanted = set(conf.sources)
    snap = domain.snapshot(time.monotonic_ns() // 1000)
    redline = conf.redline.resolve_bytes(snap.total_bytes)
    arm_line = conf.arm_line_bytes(snap.total_bytes)

    def start(name: str, make) -> object | None:
        try:
            src = make()
            src.start()
        except (SourceUnavailable, OSError) as e:
            unavailable[name] = str(e)
            log.warning("OOM: source %s unavailable: %s", name, e)
            return None
        sources.append(src)
        return src

    if "psi" in wanted:
        paths = [os.path.join(domain.procfs.root, "pressure", "memory")]
        if not domain.is_host and domain.pressure_path:
            paths.append(domain.pressure_path)
        start("psi", lambda: PsiSource(paths, stall_usec=conf.psi_stall_ms * 1000,
                                       window_usec=conf.psi_window_ms * 1000))
    if "memcg" in wanted:
        if domain.is_host:
            unavailable["memcg"] = "the host domain has no memory cgroup limit to watch (PSI and eBPF cover it)"
        else:
            v1 = domain.cgroupfs.layout.memory_v1
            # usage thresholds at the arm line and the redline (v1 fires on crossing either way)
            # (in memory: usage never passes the limit, whatever swap is counted)
            lines = [snap.ram_total_bytes - arm_line, snap.ram_total_bytes - redline]
            start("memcg", lambda: MemcgSource(domain.path, v1=v1, thresholds_bytes=lines))
    if conf.memory_high_brake:
        if domain.is_host:
            unavailable["brake"] = "the host domain has no memory.high: give a cgroup domain"
        elif domain.cgroupfs.layout.memory_v1:
            unavailable["brake"] = "cgroup v1 has no memory.high"
        else:
            brake = MemoryHighBrake(domain.path, snap.ram_total_bytes - redline // 2)
            try:
                brake.start()
            except SourceUnavailable as e:
                unavailable["brake"] = str(e)
                log.warning("OOM: brake unavailable: %s", e)
            else:
                built.brake = brake
    if "ebpf" in wanted:
        from .bpf import BpfSource, PreArm
        try:
            v2 = None if domain.is_host else domain.cgroupfs.v2_counterpart(domain.path)
            bpf = BpfSource(prearm="prearm" in wanted, arm_reclaim="direct" if domain.is_host else "memcg",
                            domain_v2=v2)
            if not domain.is_host and v2 is None:
                bpf.domain_filter = "off: the domain's cgroup v2 counterpart is not known"
            bpf.start()
        except (SourceUnavailable, OSError) as e:
            unavailable["ebpf"] = str(e)
            log.warning("OOM: source ebpf unavailable: %s", e)
        else:
            sources.append(bpf)
            if bpf.prearm:
                built.arm = PreArm(bpf)
            elif "prearm" in wanted:
                unavailable["prearm"] = f"the kernel refused the armed kill: {bpf.prearm_error}"
    if "prearm" in wanted and built.arm is None:
        unavailable.setdefault("prearm", "needs the ebpf source")
    return built
