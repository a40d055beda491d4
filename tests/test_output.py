"""Record and log output: never blocks, never follows someone else's link."""
import os
import time

import pytest

from trees import wait_until

from oomkiller.output import LineWriter, OutputPathError, open_record_file


def test_records_are_appended(tmp_path):
    path = tmp_path / "rec.jsonl"
    path.write_text("old\n")
    w = open_record_file(str(path))
    w.write("new\n")
    w.close()
    assert path.read_text() == "old\nnew\n" and w.stats()["written"] == 1
    assert oct(path.stat().st_mode & 0o777) in ("0o644", "0o640")


def test_a_new_record_file_is_not_world_readable(tmp_path):
    w = open_record_file(str(tmp_path / "new.jsonl"))
    w.close()
    assert (tmp_path / "new.jsonl").stat().st_mode & 0o007 == 0


def test_a_symlink_is_refused_and_its_target_untouched(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("root only\n")
    link = tmp_path / "rec.jsonl"
    link.symlink_to(secret)
    with pytest.raises(OutputPathError, match="is a symlink"):
        open_record_file(str(link))
    assert secret.read_text() == "root only\n"


def test_a_hard_link_and_another_owners_file_are_refused(tmp_path):
    f = tmp_path / "f"
    f.write_text("")
    os.link(f, tmp_path / "g")
    with pytest.raises(OutputPathError, match="2 links"):
        open_record_file(str(f))
    other = tmp_path / "other"
    other.write_text("")
    os.chown(other, 65534, 65534)
    if os.geteuid() == 0:
        with pytest.raises(OutputPathError, match="owned by uid 65534"):
            open_record_file(str(other))


@pytest.mark.parametrize("make", ["folder", "missing folder"])
def test_paths_that_cannot_be_written_are_one_clear_error(tmp_path, make):
    path = tmp_path / "d"
    if make == "folder":
        path.mkdir()
        with pytest.raises(OutputPathError, match="not a regular file or a FIFO"):
            open_record_file(str(path))
    else:
        with pytest.raises(OutputPathError, match="No such file or directory"):
            open_record_file(str(path / "rec.jsonl"))


def test_a_fifo_with_no_reader_does_not_block_and_drops_when_full(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    t = time.monotonic()
    w = open_record_file(str(fifo))
    for i in range(5000):
        w.write(f"record {i}\n")
    assert time.monotonic() - t < 1.0
    assert w.stats()["dropped"] > 0
    # a reader comes: what was queued flows
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    got = b""
    assert wait_until(lambda: w.stats()["written"] > 0)
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            if w.stats()["queued"] == 0:
                break
            time.sleep(0.01)
            continue
        if not chunk:
            break
        got += chunk
    os.close(fd)
    assert got.startswith(b"record 0\n")


def test_a_stalled_reader_does_not_block_the_writer(tmp_path):
    r, wfd = os.pipe()
    w = LineWriter("test", fd=wfd, max_lines=16)
    t = time.monotonic()
    for i in range(10000):
        w.write("x" * 200 + "\n")      # far more than the pipe holds
    assert time.monotonic() - t < 1.0
    assert w.stats()["dropped"] > 0
    os.close(r)
    w.write("one more\n")
    assert wait_until(lambda: w.stats()["errors"] > 0)     # EPIPE, counted
    os.close(wfd)


def test_write_errors_are_counted(tmp_path):
    w = LineWriter("test", fd=os.open("/dev/full", os.O_WRONLY))
    w.write("x\n")
    assert wait_until(lambda: w.stats()["errors"] == 1)
    assert "No space left" in w.stats()["last_error"]


def test_a_folder_on_the_way_that_another_user_owns_is_refused(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    with pytest.raises(OutputPathError, match="owned by uid 65534"):
        open_record_file(str(theirs / "rec.jsonl"))
    # their symlink to a folder of ours: the records would land in our folder
    ours = tmp_path / "ours"
    ours.mkdir()
    link = tmp_path / "link"
    link.symlink_to(ours)
    os.lchown(link, 65534, 65534)
    with pytest.raises(OutputPathError, match="owned by uid 65534"):
        open_record_file(str(link / "rec.jsonl"))
    assert not (ours / "rec.jsonl").exists()
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(OutputPathError, match="may be written by other users"):
        open_record_file(str(shared / "rec.jsonl"))
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)            # like /tmp: others cannot rename our names
    open_record_file(str(sticky / "rec.jsonl")).close()
