"""Decoding perf-buffer payloads of the eBPF source, and the header mirror.

Payloads are raw bytes in the layout of ``struct oom_event`` (bpf/oomkiller.h),
written out field by field. Two were recorded from the kernel of this project's
machines (Linux 6.18); the others are built by hand so that every field holds a
different value and a decoder that swaps two fields fails.
"""
import ctypes
import os
import re

import pytest

from oomkiller.model import PressureEvent
from oomkiller.sources import bpf

PAGE = 4096


def payload(*hex_fields: str) -> bytes:
    return bytes.fromhex("".join(hex_fields))


# Recorded: a python hog OOM-killed by the kernel in a 64 MiB arena job (cgroup
# v2 id 348). The hog itself ran the OOM killer, so invoker pid == victim pid.
# perf hands over 124 bytes: the 120-byte event and 4 bytes of record padding.
RECORDED_KERNEL_OOM_VICTIM = payload(
    "02f422d97e000000",  # timestamp_ns 544808825858
    "5c01000000000000",  # cgroup_id 348
    "0000000000000000",  # stall_ns
    "0000000000000000",  # gfp_flags
    "00ff000000000000",  # val[0] anon_rss 65280 kB
    "3415000000000000",  # val[1] file_rss 5428 kB
    "0000000000000000",  # val[2] shmem_rss
    "bc2c010000000000",  # val[3] total_vm 76988 kB
    "bc00000000000000",  # val[4] pgtables 188 kB
    "07000000",          # kind KERNEL_OOM_VICTIM
    "c50e0000",          # pid 3781 (victim)
    "c50e0000",          # tid 3781
    "00000000",          # order
    "c50e0000",          # arg[0] invoker tgid 3781
    "00000000",          # arg[1] uid 0
    "00000000",          # arg[2] oom_score_adj 0
    "00000000",          # arg[3]
    "707974686f6e00000000000000000000",  # comm "python"
    "00000000",          # perf record padding
)

# Recorded: the first memcg reclaim of the same hog, 1.05 ms before the kill.
RECORDED_MEMCG_RECLAIM = payload(
    "e3ee12d97e000000",  # timestamp_ns 544807775971
    "5c01000000000000",  # cgroup_id 348
    "0000000000000000",  # stall_ns
    "ca0c100000000000",  # gfp_flags 0x100cca (GFP_HIGHUSER_MOVABLE)
    "0000000000000000" * 5,  # val[]
    "01000000",          # kind MEMCG_RECLAIM
    "c50e0000",          # pid 3781
    "c50e0000",          # tid 3781
    "00000000",          # order 0
    "00000000" * 4,      # arg[]
    "707974686f6e00000000000000000000",  # comm "python"
    "00000000",          # perf record padding
)

STALL = payload(
    "153ddfd75d060000",  # timestamp_ns 7000123456789
    "9210000000000000",  # cgroup_id 4242
    "15bf340000000000",  # stall_ns 3456789
    "0000000000000000",  # gfp_flags
    "0903000000000000",  # val[0] reclaimed 777 pages
    "505ba60300000000",  # val[1] window 61234000 ns
    "0000000000000000",  # val[2]
    "0000000000000000",  # val[3]
    "0000000000000000",  # val[4]
    "03000000",          # kind STALL
    "e9030000",          # pid 1001
    "ea030000",          # tid 1002
    "00000000",          # order
    "01000000",          # arg[0] reclaim kind MEMCG_RECLAIM
    "1d000000",          # arg[1] 29 reclaims
    "00000000",          # arg[2]
    "00000000",          # arg[3]
    "77726974657200000000000000000000",  # comm "writer"
)

RECLAIM_RETRY = payload(
    "040a69b246070000",  # timestamp_ns 8000222333444
    "1f14000000000000",  # cgroup_id 5151
    "0000000000000000",  # stall_ns
    "0000000000000000",  # gfp_flags
    "d204000000000000",  # val[0] reclaimable 1234 pages
    "2e16000000000000",  # val[1] available 5678 pages
    "5b00000000000000",  # val[2] min_wmark 91 pages
    "0000000000000000",  # val[3]
    "0000000000000000",  # val[4]
    "05000000",          # kind RECLAIM_RETRY
    "d1070000",          # pid 2001
    "d2070000",          # tid 2002
    "03000000",          # order 3
    "04000000",          # arg[0] node 4
    "02000000",          # arg[1] zone 2
    "07000000",          # arg[2] no_progress_loops 7
    "01000000",          # arg[3] wmark_check 1
    "616c6c6f630000000000000000000000",  # comm "alloc"
)

KERNEL_OOM_VICTIM = payload(
    "b1c8bc3675050000",  # timestamp_ns 6000987654321
    "031c000000000000",  # cgroup_id 7171
    "0000000000000000",  # stall_ns
    "0000000000000000",  # gfp_flags
    "5704000000000000",  # val[0] anon_rss 1111 kB
    "ae08000000000000",  # val[1] file_rss 2222 kB
    "050d000000000000",  # val[2] shmem_rss 3333 kB
    "5c11000000000000",  # val[3] total_vm 4444 kB
    "3700000000000000",  # val[4] pgtables 55 kB
    "07000000",          # kind KERNEL_OOM_VICTIM
    "a20f0000",          # pid 4002 (victim)
    "a30f0000",          # tid 4003
    "00000000",          # order
    "a10f0000",          # arg[0] invoker tgid 4001
    "e8030000",          # arg[1] uid 1000
    "f4010000",          # arg[2] oom_score_adj 500
    "00000000",          # arg[3]
    "6c65616b657200000000000000000000",  # comm "leaker"
)

ARMED_KILL = payload(
    "3dae6e802f080000",  # timestamp_ns 9000111222333
    "1118000000000000",  # cgroup_id 6161
    "0000000000000000",  # stall_ns
    "ca0c100000000000",  # gfp_flags 0x100cca
    "0300000000000000",  # val[0] nr_reclaimed 3 pages
    "1018000000000000",  # val[1] armed cgroup id 6160 (the task's own, 6161, is below it)
    "0000000000000000" * 3,  # val[2..4]
    "08000000",          # kind ARMED_KILL
    "b90b0000",          # pid 3001
    "ba0b0000",          # tid 3002
    "02000000",          # order 2
    "01000000",          # arg[0] reclaim kind MEMCG_RECLAIM
    "fdffffff",          # arg[1] bpf_send_signal() -3
    "00000000" * 2,      # arg[2], arg[3]
    "76696374696d00000000000000000000",  # comm "victim"
)

CASES = [
    (RECORDED_KERNEL_OOM_VICTIM, PressureEvent(
        source="ebpf", kind="kernel_oom_victim", cgroup_id=348, pid=3781, stall_usec=0,
        timestamp_usec=544808825,
        detail="comm=python oom_invoker_pid=3781 uid=0 oom_score_adj=0 anon_rss_bytes=66846720 "
               "file_rss_bytes=5558272 shmem_rss_bytes=0 total_vm_bytes=78835712 pgtables_bytes=192512")),
    (RECORDED_MEMCG_RECLAIM, PressureEvent(
        source="ebpf", kind="memcg_reclaim", cgroup_id=348, pid=3781, stall_usec=0,
        timestamp_usec=544807775, detail="comm=python tid=3781 order=0 gfp=0x100cca")),
    (STALL, PressureEvent(
        source="ebpf", kind="stall", cgroup_id=4242, pid=1001, stall_usec=3456,
        timestamp_usec=7000123456,
        detail="comm=writer tid=1002 reclaim=memcg_reclaim reclaimed_bytes=3182592 window_usec=61234 reclaims=29")),
    (RECLAIM_RETRY, PressureEvent(
        source="ebpf", kind="reclaim_retry", cgroup_id=5151, pid=2001, stall_usec=0,
        timestamp_usec=8000222333,
        detail="comm=alloc tid=2002 node=4 zone=2 order=3 reclaimable_bytes=5054464 available_bytes=23257088 "
               "min_wmark_bytes=372736 no_progress_loops=7 wmark_check=1")),
    (KERNEL_OOM_VICTIM, PressureEvent(
        source="ebpf", kind="kernel_oom_victim", cgroup_id=7171, pid=4002, stall_usec=0,
        timestamp_usec=6000987654,
        detail="comm=leaker oom_invoker_pid=4001 uid=1000 oom_score_adj=500 anon_rss_bytes=1137664 "
               "file_rss_bytes=2275328 shmem_rss_bytes=3412992 total_vm_bytes=4550656 pgtables_bytes=56320")),
    (ARMED_KILL, PressureEvent(
        source="ebpf", kind="armed_kill", cgroup_id=6161, pid=3001, stall_usec=0,
        timestamp_usec=9000111222,
        detail="comm=victim tid=3002 reclaim=memcg_reclaim signal_rc=-3 reclaimed_bytes=12288 "
               "armed_cgroup_id=6160 order=2 gfp=0x100cca")),
]


@pytest.mark.parametrize("raw,expected", CASES, ids=[c[1].kind + str(i) for i, c in enumerate(CASES)])
def test_decode(raw, expected):
    assert bpf.decode(raw, page_size_bytes=PAGE) == expected


def test_decode_short_payload_raises():
    with pytest.raises(ValueError, match="expected 120"):
        bpf.decode(STALL[:100])


def test_decode_unknown_kind_keeps_the_number():
    raw = bytearray(STALL)
    raw[Event_offset("kind"):Event_offset("kind") + 4] = (99).to_bytes(4, "little")
    assert bpf.decode(bytes(raw)).kind == "unknown_99"


def Event_offset(name: str) -> int:
    return getattr(bpf.Event, name).offset


# -- the Python mirror against the header text --------------------------------

HEADER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "oomkiller", "bpf", "oomkiller.h")
C_TYPES = {"__u64": ctypes.c_uint64, "__u32": ctypes.c_uint32, "__s32": ctypes.c_int32, "char": ctypes.c_char}


def header_text() -> str:
    with open(HEADER) as f:
        return f.read()


def header_struct_fields(text: str) -> list[tuple[str, type, int]]:
    body = re.search(r"struct oom_event \{(.*?)\};", text, re.S).group(1)
    defines = header_defines(text)
    fields = []
    for m in re.finditer(r"^\s*(\w+)\s+(\w+)(?:\[(\w+)\])?;", body, re.M):
        ctype, name, count = m.groups()
        n = 1 if count is None else int(defines.get(count, count))
        fields.append((name, C_TYPES[ctype], n))
    return fields


def header_defines(text: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"^#define (OOMK_\w+)\s+(\d+)", text, re.M)}


def test_event_mirrors_header_fields_in_order():
    mirror = []
    for name, ctype in bpf.Event._fields_:
        if hasattr(ctype, "_length_"):
            mirror.append((name, ctype._type_, ctype._length_))
        else:
            mirror.append((name, ctype, 1))
    assert mirror == header_struct_fields(header_text())


def test_event_has_no_padding():
    total = sum(ctypes.sizeof(ctype) for _name, ctype in bpf.Event._fields_)
    assert bpf.EVENT_SIZE == ctypes.sizeof(bpf.Event) == total == 120


def test_kind_and_counter_constants_match_header():
    defines = header_defines(header_text())
    kinds = {k: v for k, v in defines.items() if k.startswith("OOMK_KIND_")}
    assert kinds == bpf._HEADER_KINDS
    assert set(bpf.KIND_NAMES) == set(kinds.values())
    counters = {k: v for k, v in defines.items() if k.startswith("OOMK_COUNTER")}
    assert counters == bpf._HEADER_COUNTERS
    assert defines["OOMK_COMM_LEN"] == bpf.COMM_LEN


def test_layout_check_source_asserts_every_field():
    text = bpf.layout_check_source()
    for name, _ctype in bpf.Event._fields_:
        assert f"__builtin_offsetof(struct oom_event, {name}) == {getattr(bpf.Event, name).offset}" in text
    assert "sizeof(struct oom_event) == 120" in text


def test_cflags_carry_parameters_in_ns(tmp_path):
    src = bpf.BpfSource(stall_threshold_usec=1500, window_usec=80_000, rate_limit_usec=20_000,
                        quiet_usec=30_000, bpf_dir=str(tmp_path), tracefs=str(tmp_path),
                        arm_min_reclaimed_pages=7)
    flags = src.cflags()
    assert "-DWITH_PREARM" in flags and "-DARM_MIN_RECLAIMED=7ULL" in flags
    # no tracefs format to read the gfp bits from: Linux 6.x values
    assert "-DGFP_NO_OOM=0x14000ULL" in flags and "-DARM_RECLAIM_KIND=OOMK_KIND_MEMCG_RECLAIM" in flags
    assert not [f for f in bpf.BpfSource(bpf_dir=str(tmp_path), tracefs=str(tmp_path), prearm=False).cflags()
                if "ARM" in f]
    assert f"-I{tmp_path}" in flags
    assert "-DSTALL_THRESHOLD_NS=1500000ULL" in flags
    assert "-DWINDOW_NS=80000000ULL" in flags
    assert "-DQUIET_NS=30000000ULL" in flags
    assert "-DRATE_LIMIT_NS=20000000ULL" in flags
    assert "-DEVENT_SIZE=120" in flags
    # An empty tracefs: no tracepoint is there, so no probe is compiled in.
    assert not [f for f in flags if f.startswith("-DHAVE_TP_")]


def test_tracepoint_flags_from_a_fixture_tracefs(tmp_path):
    for tp in ("vmscan/mm_vmscan_memcg_reclaim_begin", "vmscan/mm_vmscan_memcg_reclaim_end",
               "vmscan/mm_vmscan_direct_reclaim_begin", "oom/mark_victim"):
        os.makedirs(tmp_path / "events" / tp)
        (tmp_path / "events" / tp / "format").write_text("name: x\n")
    (tmp_path / "events/oom/mark_victim/format").write_text(
        "name: mark_victim\n\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;\n")
    flags = bpf.tracepoint_flags(str(tmp_path))
    assert flags == {
        "HAVE_TP_MEMCG_RECLAIM": True,
        "HAVE_TP_DIRECT_RECLAIM": False,     # the end tracepoint is missing
        "HAVE_TP_WAKEUP_KSWAPD": False,
        "HAVE_TP_RECLAIM_RETRY_ZONE": False,
        "HAVE_TP_COMPACT_RETRY": False,
        "HAVE_TP_MARK_VICTIM": True,
        "MARK_VICTIM_RSS": False,            # an older kernel: pid only
        "MARK_VICTIM_COMM": False,
    }


def test_arm_before_start_is_an_error():
    with pytest.raises(RuntimeError):
        bpf.PreArm(bpf.BpfSource()).arm("/sys/fs/cgroup/unified", 1234)
    assert bpf.PreArm(bpf.BpfSource()).armed == 0


def test_gfp_bits_are_read_from_the_tracepoint_format(tmp_path):
    d = tmp_path / "events" / "vmscan" / "mm_vmscan_direct_reclaim_begin"
    d.mkdir(parents=True)
    (d / "format").write_text(
        'print fmt: "order=%d gfp_flags=%s", REC->order, (REC->gfp_flags) ? __print_flags(REC->gfp_flags, "|", '
        '{( unsigned long)(( gfp_t)((((1UL))) << (13))), "__GFP_NOWARN"}, '
        '{( unsigned long)(( gfp_t)((((1UL))) << (12))), "__GFP_RETRY_MAYFAIL"}, '
        '{(unsigned long)0x800u, "__GFP_NORETRY"}, { 0, ((void *)0) } ) : "none"\n')
    assert bpf.gfp_bit(str(tmp_path), "__GFP_RETRY_MAYFAIL", 1) == 1 << 12
    assert bpf.gfp_bit(str(tmp_path), "__GFP_NORETRY", 1) == 0x800
    assert bpf.gfp_bit(str(tmp_path), "__GFP_NOFAIL", 77) == 77
