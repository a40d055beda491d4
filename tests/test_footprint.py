from oomkiller import footprint


def test_mappings_and_compiler_libraries(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text(
        "55d0c0000000-55d0c0021000 r--p 00000000 fe:00 1312  /usr/bin/python3.11\n"
        "7f00a0000000-7f00a3400000 r-xp 00400000 fe:00 7777  /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1\n"
        "7f00b0000000-7f00b0100000 rw-p 00000000 00:00 0 \n"
        "7f00c0000000-7f00c1b00000 r-xp 00000000 fe:00 8888  /usr/lib/x86_64-linux-gnu/libclang-cpp.so.14\n"
        "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0  [vsyscall]\n")
    got = footprint.mappings(str(maps))
    assert got[0] == (0x55d0c0000000, 0x55d0c0021000, "/usr/bin/python3.11")
    assert got[2] == (0x7f00b0000000, 0x7f00b0100000, "")
    assert [footprint.is_compiler(n) for _, _, n in got] == [False, True, False, True, False]
    assert not footprint.is_compiler("/usr/lib/x86_64-linux-gnu/libbcc.so.0.26.0")


def test_status_bytes(tmp_path):
    st = tmp_path / "status"
    st.write_text("Name:\tpython3\nVmLck:\t    1234 kB\nVmRSS:\t   40960 kB\nRssAnon:\t   30000 kB\n"
                  "RssFile:\t   10960 kB\nThreads:\t1\n")
    assert footprint.status_bytes(path=str(st)) == {"VmLck": 1234 * 1024, "VmRSS": 40960 * 1024,
                                                    "RssAnon": 30000 * 1024, "RssFile": 10960 * 1024}
