"""The one reader of kernel files, on temporary files shaped as the kernel's."""
from __future__ import annotations

import errno
import os

import pytest

import oomkiller.files as files_mod
from oomkiller.files import (GONE_ERRNOS, HeldFile, Vanished, parse_kb_fields, parse_keyed, parse_psi_totals,
                             pick_keyed, read_int, read_kb_fields, read_keyed, read_pids, read_psi_totals, read_text,
                             vanishing)

from trees import Unreadable

MEMINFO = """\
MemTotal:        8265625 kB
MemFree:            5123 kB
MemAvailable:    6057779 kB
HugePages_Total:       7
Hugepagesize:       2048 kB
"""

STATUS = """\
Name:\tpython3 x
Umask:\t0022
State:\tS (sleeping)
Pid:\t4157
Uid:\t0\t0\t0\t0
VmRSS:\t   36500 kB
RssAnon:\t   25100 kB
RssShmem:\t       0 kB
VmSwap:\t      37 kB
Threads:\t4
voluntary_ctxt_switches:\t150
"""

MEMORY_STAT_V1 = """\
cache 4096
rss 8192
hierarchical_memory_limit 9223372036854771712
total_rss 8192
total_inactive_file 4096
"""

MEMORY_OOM_CONTROL = """\
oom_kill_disable 0
under_oom 0
oom_kill 3
"""

PRESSURE = """\
some avg10=0.00 avg60=0.12 avg300=0.05 total=123456
full avg10=0.00 avg60=0.01 avg300=0.00 total=7890
"""


def _file(tmp_path, name: str, data: str | bytes) -> str:
    path = tmp_path / name
    (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)
    return str(path)


def test_read_text_and_its_limit(tmp_path):
    path = _file(tmp_path, "cmdline", b"quiet oomkiller.sleep_ms=250\n")
    assert read_text(path) == "quiet oomkiller.sleep_ms=250\n"
    assert read_text(path, max_bytes=5) == "quiet"


def test_odd_bytes_are_replaced_not_an_error(tmp_path):
    path = _file(tmp_path, "stat", b"78 (\xff\xfeq) S 1\n")
    assert read_text(path) == "78 (\ufffd\ufffdq) S 1\n"
    assert read_text(path, max_bytes=1 << 16) == "78 (\ufffd\ufffdq) S 1\n"
    # a name of odd bytes in a status file does not hide the fields around it
    status = _file(tmp_path, "status", b"Name:\t\xc3(\n" + STATUS.split("\n", 1)[1].encode())
    assert read_kb_fields(status, ("RssAnon", "VmSwap")) == {"RssAnon": 25100 * 1024, "VmSwap": 37 * 1024}


def test_read_int(tmp_path):
    assert read_int(_file(tmp_path, "oom_score_adj", "-1000\n")) == -1000
    assert read_int(_file(tmp_path, "memory.current", "4096\n")) == 4096
    assert read_int(_file(tmp_path, "memory.max", "max\n")) is None
    with pytest.raises(ValueError):
        read_int(_file(tmp_path, "memory.high", "\n"))


def test_read_kb_fields_in_bytes_or_kb(tmp_path):
    meminfo = _file(tmp_path, "meminfo", MEMINFO)
    assert read_kb_fields(meminfo) == {"MemTotal": 8265625 * 1024, "MemFree": 5123 * 1024,
                                       "MemAvailable": 6057779 * 1024,
                                       "HugePages_Total": 7,         # a count: no unit, as it is
                                       "Hugepagesize": 2048 * 1024}
    assert read_kb_fields(meminfo, ("MemTotal",), kb=True) == {"MemTotal": 8265625}
    status = _file(tmp_path, "status", STATUS)
    assert read_kb_fields(status, ("VmRSS", "RssAnon", "RssShmem", "VmSwap", "VmLck")) == {
        "VmRSS": 36500 * 1024, "RssAnon": 25100 * 1024, "RssShmem": 0, "VmSwap": 37 * 1024}
    assert read_kb_fields(status, ("Threads", "Name", "Uid", "State")) == {"Threads": 4}
    assert parse_kb_fields(MEMINFO, ("MemAvailable",)) == {"MemAvailable": 6057779 * 1024}
    assert parse_kb_fields("") == {}


def test_read_keyed(tmp_path):
    assert read_keyed(_file(tmp_path, "memory.stat", MEMORY_STAT_V1))["hierarchical_memory_limit"] == (1 << 63) - 4096
    assert read_keyed(_file(tmp_path, "memory.oom_control", MEMORY_OOM_CONTROL)) == {
        "oom_kill_disable": 0, "under_oom": 0, "oom_kill": 3}
    assert read_keyed(_file(tmp_path, "odd", "a -5\nb 1 2\nc x\n\nd 7\n")) == {"a": -5, "d": 7}
    assert parse_keyed("populated 1\nfrozen 0\n") == {"populated": 1, "frozen": 0}


VMSTAT = """\
nr_free_pages 4101
workingset_refault_anon 7
workingset_refault_file 93
workingset_refault 1200
pgfault -3
odd 1 2
nr_dirty x
"""


def test_pick_keyed_is_parse_keyed_of_the_keys_it_is_given():
    everything = parse_keyed(VMSTAT)
    for key in ["nr_free_pages", "workingset_refault_anon", "workingset_refault_file", "workingset_refault",
                "pgfault", "odd", "nr_dirty", "nr_free", "workingset", "refault", "absent", "", "x", " ",
                "odd 1", "nr_free_pages\n"]:
        assert pick_keyed(VMSTAT, [key]) == {k: v for k, v in everything.items() if k == key}, key
    # a key is a whole word at a line's start, first line and last included
    assert pick_keyed(VMSTAT, ("workingset_refault", "nr_free_pages")) == {"workingset_refault": 1200,
                                                                          "nr_free_pages": 4101}
    assert pick_keyed("a 1", ["a"]) == {"a": 1}
    assert pick_keyed("xa 1\nb a 2\n", ["a"]) == {}
    assert pick_keyed("", ["a"]) == {}


def test_the_kb_fields_asked_for_are_those_of_every_line():
    for text in (MEMINFO, STATUS, "Name:\tx\x1cVmSwap: 9 kB\nVmRSS:\t4 kB\n", "VmRSS:\t4 kB", "", ":\n"):
        everything = parse_kb_fields(text)
        keys = [*everything, "Name", "Uid", "State", "VmSwap", "VmLck", "Mem", "MemTotal:", "", "x\nVmRSS", ":"]
        for key in keys:
            assert parse_kb_fields(text, [key]) == {k: v for k, v in everything.items() if k == key}, (text, key)
        assert parse_kb_fields(text, keys, kb=True) == parse_kb_fields(text, kb=True)


def test_a_held_file_is_opened_once_and_read_from_its_start_each_time(tmp_path, monkeypatch):
    path = _file(tmp_path, "memory.pressure", PRESSURE)
    opened = []
    real_open = open

    def counting(p, *a, **kw):
        opened.append(p)
        return real_open(p, *a, **kw)
    monkeypatch.setattr(files_mod, "open", counting, raising=False)
    held = HeldFile(path)
    assert parse_psi_totals(held.read()) == {"some": 123456, "full": 7890}
    with real_open(path, "w") as f:      # rewritten in place, as the kernel's files change
        f.write(PRESSURE.replace("123456", "99"))
    assert parse_psi_totals(held.read()) == {"some": 99, "full": 7890}
    assert opened == [path]
    held.close()
    held.close()
    assert held.read() == PRESSURE.replace("123456", "99") and opened == [path, path]


def test_a_held_file_longer_than_a_read_is_read_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(files_mod, "READ_CHUNK_BYTES", 8)
    for text in (VMSTAT, VMSTAT[:16], VMSTAT[:8], ""):
        assert HeldFile(_file(tmp_path, "vmstat", text)).read() == text


@pytest.mark.parametrize("err", [errno.ENODEV, errno.ESRCH])
def test_a_held_file_whose_cgroup_went_is_opened_again_and_vanished_if_gone(tmp_path, monkeypatch, err):
    path = _file(tmp_path, "memory.pressure", PRESSURE)
    held = HeldFile(path)
    assert held.read() == PRESSURE
    real_pread = os.pread
    failing = []

    def pread(fd, n, off):
        if failing:
            failing.pop()
            raise OSError(err, os.strerror(err))
        return real_pread(fd, n, off)
    monkeypatch.setattr(files_mod.os, "pread", pread)
    # A cgroup removed and made anew at the same path: the held descriptor
    # fails once, and the path opened again reads the new one.
    os.unlink(path)
    _file(tmp_path, "memory.pressure", "some avg10=0.00 avg60=0.00 avg300=0.00 total=5\n")
    failing.append(1)
    assert parse_psi_totals(held.read()) == {"some": 5}
    # Gone for good: the path is not there to open again.
    os.unlink(path)
    failing.append(1)
    with pytest.raises(Vanished) as info:
        held.read()
    assert info.value.errno == errno.ENOENT and info.value.filename == path and not failing
    # There, but failing as a removed cgroup's file does, held and opened
    # again: vanished.
    _file(tmp_path, "memory.pressure", PRESSURE)
    assert held.read() == PRESSURE
    failing[:] = [1, 1]
    with pytest.raises(Vanished) as info:
        held.read()
    assert info.value.errno == err and info.value.filename == path
    assert held.read() == PRESSURE


def test_read_pids(tmp_path):
    assert read_pids(_file(tmp_path, "cgroup.procs", "101\n7\n")) == [101, 7]
    assert read_pids(_file(tmp_path, "empty", "")) == []


def test_read_psi_totals(tmp_path):
    assert read_psi_totals(_file(tmp_path, "memory.pressure", PRESSURE)) == {"some": 123456, "full": 7890}
    assert read_psi_totals(_file(tmp_path, "some_only", PRESSURE.splitlines()[0] + "\n\n")) == {"some": 123456}


def test_gone_errnos_become_vanished(tmp_path):
    f = tmp_path / "x"
    f.write_text("1\n")
    assert read_text(str(f)) == "1\n"
    assert {errno.ENOENT, errno.ENODEV, errno.ESRCH, errno.EINVAL, errno.ENOTDIR} == GONE_ERRNOS
    for e in sorted(GONE_ERRNOS):
        with pytest.raises(Vanished) as info, vanishing("/p"):
            raise OSError(e, os.strerror(e))
        assert info.value.errno == e and info.value.filename == "/p"
        assert isinstance(info.value, FileNotFoundError)    # what callers already pass over
    with pytest.raises(PermissionError), vanishing("/p"):
        raise PermissionError(errno.EACCES, "denied")       # not "gone": still an error
    with pytest.raises(Vanished):
        read_text(str(f / "below-a-file"))                  # ENOTDIR


READERS = [read_text, read_int, read_kb_fields, read_keyed, read_pids, read_psi_totals,
           lambda p: read_text(p, max_bytes=16)]


@pytest.mark.parametrize("reader", READERS)
def test_a_missing_file_is_vanished(tmp_path, reader):
    with pytest.raises(Vanished) as info:
        reader(str(tmp_path / "gone"))
    assert info.value.errno == errno.ENOENT and info.value.filename == str(tmp_path / "gone")


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("err", [errno.ENODEV, errno.ESRCH])
def test_a_read_that_fails_as_a_removed_cgroup_or_exited_process_is_vanished(tmp_path, monkeypatch, reader, err):
    path = _file(tmp_path, "memory.stat", MEMORY_STAT_V1)
    monkeypatch.setattr(files_mod, "open", lambda p, *a, **kw: Unreadable(p, err), raising=False)
    with pytest.raises(Vanished) as info:
        reader(path)
    assert info.value.errno == err and info.value.filename == path


@pytest.mark.parametrize("err, gone", [(errno.ENODEV, True), (errno.ESRCH, True), (errno.EACCES, False),
                                       (errno.EIO, False)])
def test_an_open_that_fails_is_vanished_only_when_gone(tmp_path, monkeypatch, err, gone):
    path = _file(tmp_path, "cgroup.procs", "1\n")

    def failing(p, *a, **kw):
        raise OSError(err, os.strerror(err), p)
    monkeypatch.setattr(files_mod, "open", failing, raising=False)
    with pytest.raises(OSError) as info:
        read_pids(path)
    assert info.value.errno == err and isinstance(info.value, Vanished) == gone


def test_text_is_as_the_kernel_wrote_it(tmp_path):
    """No universal newlines: a ``\\r`` in a name is not a line end."""
    f = tmp_path / "cgroup"
    f.write_bytes("0::/a\rb\r\n1:x:/c\x85d\n".encode())
    assert files_mod.read_text(str(f)) == "0::/a\rb\r\n1:x:/c\x85d\n"
    assert files_mod.lines(files_mod.read_text(str(f))) == ["0::/a\rb\r", "1:x:/c\x85d"]
    assert files_mod.parse_kb_fields("Name:\tx\x1cVmSwap: 9 kB\nVmRSS:\t4 kB\n") == {"VmRSS": 4096}
