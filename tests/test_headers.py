"""Which kernel headers bcc is pointed at, on fixture trees shaped like
Debian's /usr/src and /lib/modules (no compiler, no bcc)."""
from __future__ import annotations

import os

import pytest

from oomkiller.sources import SourceUnavailable
from oomkiller.sources import bpf
from oomkiller.sources.bpf import find_kernel_headers

RELEASE = "6.18.44-test"


def debian_pair(usr_src, version, flavour="amd64", arch="x86"):
    """linux-headers-VERSION-common (the source half) and -FLAVOUR (the
    generated half, whose Makefile includes the common one's), as Debian
    lays them out."""
    common = usr_src / f"linux-headers-{version}-common"
    (common / "include" / "linux").mkdir(parents=True)
    (common / "include" / "linux" / "kconfig.h").write_text("#include <generated/autoconf.h>\n")
    (common / "Makefile").write_text("VERSION = 6\n")
    build = usr_src / f"linux-headers-{version}-{flavour}"
    (build / "include" / "generated" / "uapi").mkdir(parents=True)
    (build / "include" / "generated" / "autoconf.h").write_text("#define CONFIG_X86 1\n")
    (build / "arch" / arch / "include" / "generated" / "uapi").mkdir(parents=True)
    (build / "Makefile").write_text(f"include {common}/Makefile\n")
    return common, build


def find(tmp_path, environ=None, release=RELEASE):
    return find_kernel_headers(release, modules_dir=str(tmp_path / "modules"), usr_src=str(tmp_path / "src"),
                               kheaders=str(tmp_path / "kheaders.tar.xz"), environ=environ or {})


def test_a_split_debian_tree_is_its_source_half_plus_the_generated_folders(tmp_path):
    (tmp_path / "src").mkdir()
    common, build = debian_pair(tmp_path / "src", "6.1.0-57")
    h = find(tmp_path)
    assert h.how == "usr-src"
    assert h.source_dir == str(common)
    # kbuild_helper.cc's split-tree order, the build half's folders
    assert h.include_dirs == (str(build / "include"), str(build / "arch/x86/include/generated"),
                              str(build / "arch/x86/include/generated/uapi"),
                              str(build / "include/generated/uapi"))
    assert str(build) in h.note and RELEASE in h.note and "another version" in h.note


def test_the_newest_version_wins_and_the_running_release_beats_it(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    debian_pair(src, "6.1.0-9")
    common_new, _ = debian_pair(src, "6.1.0-57")
    assert find(tmp_path).source_dir == str(common_new)     # 57 > 9: by number, not by text
    common_old, build_old = debian_pair(src, "5.10.0-30", flavour="cloud-amd64")
    h = find(tmp_path, release="5.10.0-30-cloud-amd64")
    assert h.source_dir == str(common_old) and "another version" not in h.note


def test_a_source_half_alone_is_not_headers(tmp_path):
    src = tmp_path / "src"
    common, build = debian_pair(src, "6.1.0-57")
    (build / "include" / "generated" / "autoconf.h").unlink()
    with pytest.raises(SourceUnavailable, match=f"no kernel headers for {RELEASE}.*none under .*linux-headers"):
        find(tmp_path)


def test_a_whole_tree_is_its_own_source(tmp_path):
    tree = tmp_path / "src" / "linux-headers-7.0.0"
    (tree / "include" / "linux").mkdir(parents=True)
    (tree / "include" / "linux" / "kconfig.h").write_text("")
    (tree / "include" / "generated").mkdir()
    (tree / "include" / "generated" / "autoconf.h").write_text("")
    h = find(tmp_path)
    assert (h.how, h.source_dir, h.include_dirs) == ("usr-src", str(tree), ())


def test_lib_modules_and_kheaders_are_left_to_bcc(tmp_path):
    debian_pair(tmp_path / "src", "6.1.0-57")
    (tmp_path / "kheaders.tar.xz").write_bytes(b"")
    assert find(tmp_path).how == "kheaders"
    (tmp_path / "modules" / RELEASE / "build" / "include").mkdir(parents=True)
    h = find(tmp_path)
    assert (h.how, h.source_dir, h.include_dirs) == ("modules", "", ())


def test_the_operators_bcc_kernel_source_comes_first(tmp_path):
    common, build = debian_pair(tmp_path / "src", "6.1.0-57")
    (tmp_path / "modules" / RELEASE / "build" / "include").mkdir(parents=True)
    h = find(tmp_path, environ={"BCC_KERNEL_SOURCE": str(build)})
    # a Debian build half given: bcc is handed its source half and the -I flags
    assert (h.how, h.source_dir) == ("environment", str(common))
    assert str(build / "include") in h.include_dirs
    with pytest.raises(SourceUnavailable, match="BCC_KERNEL_SOURCE=/nowhere is not a kernel header tree"):
        find(tmp_path, environ={"BCC_KERNEL_SOURCE": "/nowhere"})


def test_a_makefile_naming_a_missing_tree_is_not_headers(tmp_path):
    common, build = debian_pair(tmp_path / "src", "6.1.0-57")
    (build / "Makefile").write_text("include /nonexistent/Makefile\n")
    with pytest.raises(SourceUnavailable, match="no kernel headers"):
        find(tmp_path)


def test_the_include_dirs_go_into_the_cflags_and_the_printed_program(tmp_path):
    debian_pair(tmp_path / "src", "6.1.0-57")
    src = bpf.BpfSource(tracefs=str(tmp_path), modules_dir=str(tmp_path / "modules"),
                        usr_src=str(tmp_path / "src"), kheaders=str(tmp_path / "none"))
    before = os.environ.get("BCC_KERNEL_SOURCE")
    text = src.program_text()
    assert f"-I{tmp_path}/src/linux-headers-6.1.0-57-amd64/include " in text.splitlines()[0] + " "
    assert text.splitlines()[1].startswith("// kernel headers from ")
    assert "BCC_KERNEL_SOURCE" not in os.environ or os.environ["BCC_KERNEL_SOURCE"] == before
    none = bpf.BpfSource(tracefs=str(tmp_path), modules_dir=str(tmp_path), usr_src=str(tmp_path / "nothing"),
                         kheaders=str(tmp_path / "none"))
    assert "// no kernel headers for" in none.program_text()
