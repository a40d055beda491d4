"""The loaded program's maps and perf buffer, through the system's libbpf.

The daemon gets the program's map file descriptors from the short-lived
loader (``bpfload``) and never maps bcc's compiler. What it does with them
(look up, update and delete elements; read the ``events`` perf array's
per-CPU rings) goes through libbpf, the kernel's own BPF library, called with
ctypes: about 1 MB mapped, against bcc's 60 MB. libbpf reads the rings with
the memory ordering the kernel's ring protocol asks for, which Python alone
cannot express. Debian's libbpfcc depends on libbpf1, so it is there wherever
bcc is.
"""
from __future__ import annotations

import ctypes
import os
import sys

from . import SourceUnavailable

LIBBPF_NAMES = ("libbpf.so.1", "libbpf.so")
BPF_ANY = 0

# enum bpf_map_type values whose lookups return one value per possible CPU.
PERCPU_MAP_TYPES = {5, 6, 10, 21}   # PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH, PERCPU_CGROUP_STORAGE

SAMPLE_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32)
LOST_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64)

_lib = None


def libbpf() -> ctypes.CDLL:
    """libbpf, loaded once; SourceUnavailable saying what to install if it
    is missing or older than 0.6 (the perf_buffer__new of today's API)."""
    global _lib
    if _lib is not None:
        return _lib
    errors = []
    for name in LIBBPF_NAMES:
        try:
            lib = ctypes.CDLL(name, use_errno=True)
            break
        except OSError as e:
            errors.append(str(e))
    else:
        raise SourceUnavailable(f"libbpf cannot be loaded ({errors[0]}): install libbpf1 "
                                "(Debian's python3-bpfcc brings it)")
    if not hasattr(lib, "libbpf_major_version"):
        raise SourceUnavailable("libbpf is older than 0.6: install libbpf1 (1.0 or later)")
    lib.bpf_map_lookup_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    lib.bpf_map_update_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64]
    lib.bpf_map_delete_elem.argtypes = [ctypes.c_int, ctypes.c_void_p]
    lib.bpf_obj_get_info_by_fd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]
    for fn in (lib.bpf_obj_get_info_by_fd, lib.bpf_map_lookup_elem, lib.bpf_map_update_elem, lib.bpf_map_delete_elem,
               lib.libbpf_num_possible_cpus, lib.perf_buffer__consume, lib.perf_buffer__buffer_fd):
        fn.restype = ctypes.c_int
    lib.perf_buffer__new.restype = ctypes.c_void_p
    lib.perf_buffer__new.argtypes = [ctypes.c_int, ctypes.c_size_t, SAMPLE_FN, LOST_FN,
                                     ctypes.c_void_p, ctypes.c_void_p]
    lib.perf_buffer__free.restype = None
    lib.perf_buffer__free.argtypes = [ctypes.c_void_p]
    lib.perf_buffer__consume.argtypes = [ctypes.c_void_p]
    lib.perf_buffer__buffer_cnt.restype = ctypes.c_size_t
    lib.perf_buffer__buffer_cnt.argtypes = [ctypes.c_void_p]
    lib.perf_buffer__buffer_fd.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    _lib = lib
    return lib


def _errno(rc: int) -> int:
    # libbpf 1.x returns -errno; 0.x returned -1 and set errno
    return -rc if rc < -1 else (ctypes.get_errno() or 1)


def possible_cpus() -> int:
    """CPUs a per-CPU map holds a value for (/sys/devices/system/cpu/possible)."""
    n = libbpf().libbpf_num_possible_cpus()
    if n <= 0:
        raise OSError(_errno(n), "cannot read the possible CPUs: " + os.strerror(_errno(n)))
    return n


class MapInfo(ctypes.Structure):
    """The head of struct bpf_map_info (linux/bpf.h)."""

    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32),
                ("map_flags", ctypes.c_uint32), ("name", ctypes.c_char * 16)]


def map_info(fd: int) -> MapInfo:
    """What the kernel says of the map behind ``fd``."""
    info = MapInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    rc = libbpf().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size))
    if rc < 0:
        err = _errno(rc)
        raise OSError(err, f"descriptor {fd} is not a BPF map: {os.strerror(err)}")
    return info


class Map:
    """One BPF map by its file descriptor, which this object owns.

    Its type and sizes are the kernel's (``map_info``). Keys and values are
    bytes of the map's sizes, or ctypes objects of those sizes; a per-CPU
    map's lookup returns one 8-byte aligned slot per possible CPU."""

    def __init__(self, name: str, fd: int) -> None:
        self.name = name
        self.fd = fd
        info = map_info(fd)
        self.map_type = info.type
        self.key_size = info.key_size
        self.value_size = info.value_size
        self.max_entries = info.max_entries
        self.percpu = self.map_type in PERCPU_MAP_TYPES
        self.lib = libbpf()
        self.ncpus = possible_cpus() if self.percpu else 1

    def check(self, map_type: int, key_size: int, value_size: int) -> None:
        """ValueError unless the map is what its describer said it is."""
        said, kernel = (map_type, key_size, value_size), (self.map_type, self.key_size, self.value_size)
        if said != kernel:
            raise ValueError(f"map {self.name}: described as (type, key, value) {said}, the kernel says {kernel}")

    def _key(self, key) -> bytes:
        # passed as is: the kernel only reads keys (and updated values)
        raw = bytes(key)
        if len(raw) != self.key_size:
            raise ValueError(f"map {self.name}: a key of {len(raw)} bytes, expected {self.key_size}")
        return raw

    @property
    def lookup_size(self) -> int:
        if self.percpu:
            return self.ncpus * ((self.value_size + 7) & ~7)
        return self.value_size

    def lookup(self, key) -> bytes | None:
        """The value at ``key``, None where there is none."""
        k = self._key(key)
        value = ctypes.create_string_buffer(self.lookup_size)
        rc = self.lib.bpf_map_lookup_elem(self.fd, k, value)
        if rc < 0:
            err = _errno(rc)
            if err == 2:        # ENOENT
                return None
            raise OSError(err, f"map {self.name}: lookup: {os.strerror(err)}")
        return value.raw

    def update(self, key, value) -> None:
        k, raw = self._key(key), bytes(value)
        if len(raw) != self.value_size or self.percpu:
            raise ValueError(f"map {self.name}: a value of {len(raw)} bytes, expected {self.value_size}")
        rc = self.lib.bpf_map_update_elem(self.fd, k, raw, BPF_ANY)
        if rc < 0:
            err = _errno(rc)
            raise OSError(err, f"map {self.name}: update: {os.strerror(err)}")

    def delete(self, key) -> bool:
        """Empty the slot at ``key``; False if it was empty already."""
        rc = self.lib.bpf_map_delete_elem(self.fd, self._key(key))
        if rc < 0:
            err = _errno(rc)
            if err == 2:
                return False
            raise OSError(err, f"map {self.name}: delete: {os.strerror(err)}")
        return True

    def percpu_sum_u64(self, key) -> int:
        """The sum over CPUs of a per-CPU map's 64-bit counter at ``key``."""
        raw = self.lookup(key)
        if raw is None:
            return 0
        stride = (self.value_size + 7) & ~7
        return sum(int.from_bytes(raw[i * stride:i * stride + 8], sys.byteorder) for i in range(self.ncpus))

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


class PerfBuffer:
    """The per-CPU rings of a BPF_PERF_OUTPUT map: libbpf opens one
    PERF_COUNT_SW_BPF_OUTPUT event per CPU, maps its ring and puts its fd in
    the map at that CPU's key. ``fds()`` are readable when a ring has data;
    ``consume()`` reads every ring and calls ``on_sample(cpu, bytes)`` and
    ``on_lost(count)`` for each record."""

    def __init__(self, map_fd: int, pages: int, on_sample, on_lost) -> None:
        if pages <= 0 or pages & (pages - 1):
            raise ValueError(f"perf buffer pages must be a power of 2, got {pages}")
        self.lib = libbpf()
        self._on_sample = on_sample
        self._on_lost = on_lost
        # Kept referenced: libbpf holds only the C pointers.
        self._sample_cb = SAMPLE_FN(self._sample)
        self._lost_cb = LOST_FN(self._lost)
        self._error: BaseException | None = None
        ctypes.set_errno(0)
        pb = self.lib.perf_buffer__new(map_fd, pages, self._sample_cb, self._lost_cb, None, None)
        if not pb:
            err = ctypes.get_errno() or 22
            raise OSError(err, f"cannot open the perf buffer: {os.strerror(err)}")
        self._pb = pb

    # An exception cannot cross libbpf's C frames: the first is kept and
    # raised by consume() once libbpf returns.
    def _sample(self, _ctx, cpu, data, size) -> None:
        try:
            self._on_sample(cpu, ctypes.string_at(data, size))
        except Exception as e:      # noqa: BLE001
            self._error = self._error or e

    def _lost(self, _ctx, _cpu, count) -> None:
        try:
            self._on_lost(count)
        except Exception as e:      # noqa: BLE001
            self._error = self._error or e

    def fds(self) -> list[int]:
        if not self._pb:
            return []
        return [self.lib.perf_buffer__buffer_fd(self._pb, i)
                for i in range(self.lib.perf_buffer__buffer_cnt(self._pb))]

    def consume(self) -> None:
        """Read every ring, whatever the kernel's poll state says."""
        if self._pb:
            rc = self.lib.perf_buffer__consume(self._pb)
            error, self._error = self._error, None
            if error is not None:
                raise error
            if rc < 0:
                err = _errno(rc)
                raise OSError(err, f"perf buffer: {os.strerror(err)}")

    def close(self) -> None:
        pb, self._pb = self._pb, None
        if pb:
            self.lib.perf_buffer__free(pb)
