import argparse
import io
import os

import pytest

import oomkiller.files as files_mod
from oomkiller import cli
from oomkiller import config as cfg
from oomkiller import control

MiB = 1 << 20


def test_parse_size_units():
    assert cfg.parse_size("50M") == 52428800
    assert cfg.parse_size("3k") == 3072
    assert cfg.parse_size("2G") == 2 << 30
    assert cfg.parse_size("1.5M") == 1572864
    assert cfg.parse_size("4096") == 4096
    assert cfg.parse_size(7) == 7
    for bad in ("", "M", "-3M", "5X", "1.2.3"):
        with pytest.raises(ValueError):
            cfg.parse_size(bad)


def test_redline_bytes_and_percent():
    assert cfg.Redline.parse("50M").resolve_bytes(1 << 30) == 50 << 20
    assert cfg.Redline.parse("5%").resolve_bytes(10000) == 500
    assert cfg.Redline.parse("2.5%").permyriad == 250
    with pytest.raises(ValueError):
        cfg.Redline.parse("100%")


def test_defaults():
    c = cfg.load()
    assert c.sleep_ms == 1000 and c.autostart and not c.dry_run
    assert c.redline.resolve_bytes(20000) == 1000
    assert c.jobs == ("auto",)


def test_precedence_cmdline_file_env_cli(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('redline = "70M"\nsleep_ms = 300\nprotect = ["a", "b/*"]\n')
    cmdline = "quiet oomkiller.redline=10M oomkiller.sleep-ms=900 oomkiller.autostart=0 -- oomkiller.redline=1M"
    c = cfg.load(cmdline=cmdline)
    assert (c.redline.bytes_, c.sleep_ms, c.autostart) == (10 << 20, 900, False)
    c = cfg.load(cmdline=cmdline, config_file=str(f))
    assert (c.redline.bytes_, c.sleep_ms, c.autostart, c.protect) == (70 << 20, 300, False, ("a", "b/*"))
    env = {"OOMKILLER_SLEEP_MS": "250", "OOMKILLER_AVOID": "x.service, y.scope"}
    c = cfg.load(cmdline=cmdline, config_file=str(f), environ=env)
    assert (c.sleep_ms, c.avoid) == (250, ("x.service", "y.scope"))
    c = cfg.load(cmdline=cmdline, config_file=str(f), environ=env, cli={"sleep_ms": 125, "redline": "3%"})
    assert (c.sleep_ms, c.redline.permyriad, c.protect) == (125, 300, ("a", "b/*"))


def test_config_file_from_environment(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("dry_run = true\n")
    assert cfg.load(environ={"OOMKILLER_CONFIG": str(f)}).dry_run


@pytest.mark.parametrize("text, needle", [
    ('sleep_ms = "soon"\n', "'sleep_ms'"),
    ("sleep_ms = 0\n", "'sleep_ms'"),
    ('redline = "lots"\n', "'redline'"),
    ("protect = [1, 2]\n", "'protect'"),
    ("dry_run = 3\n", "'dry_run'"),
    ("redline = 0.05\n", "'redline'"),
    ("sleep_ms = 1.9\n", "'sleep_ms'"),
    ("psi_window_ms = 20000\n", "'psi_window_ms'"),
    ("bogus = 1\n", "unknown key 'bogus'"),
    ("redline = \n", "not valid TOML"),
])
def test_bad_file_values_name_the_key(tmp_path, text, needle):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(cfg.ConfigError) as e:
        cfg.load(config_file=str(f))
    assert needle in str(e.value) and str(f) in str(e.value)


def test_bad_env_and_cmdline_values():
    with pytest.raises(cfg.ConfigError, match="environment: bad value for 'OOMKILLER_SLEEP_MS'"):
        cfg.load(environ={"OOMKILLER_SLEEP_MS": "x"})
    with pytest.raises(cfg.ConfigError, match="bad value for 'psi_stall_ms': 900 must be less than psi_window_ms"):
        cfg.load(cli={"psi_stall_ms": 900, "psi_window_ms": 800})
    with pytest.raises(cfg.ConfigError, match="kernel command line: bad value for 'oomkiller.sleep_ms'"):
        cfg.load(cmdline="oomkiller.sleep_ms=soon")
    with pytest.raises(cfg.ConfigError, match="no such config file"):
        cfg.load(config_file="/nonexistent/oomkiller.toml")


def test_shipped_example_lists_every_default():
    import os
    from oomkiller.config import tomllib   # tomli on Python < 3.11
    path = os.path.join(os.path.dirname(__file__), "..", "deploy", "oomkiller.toml")
    with open(path, "rb") as f:
        keys = set(tomllib.load(f))
    assert keys == set(cfg._KEYS)
    assert cfg.load(config_file=path) == cfg.Config()


def test_shipped_example_says_who_may_rank():
    # the daemon answers `info` to anyone and everything else, `rank` too, to root only
    assert control.ANYONE == frozenset({"info"})
    with open(os.path.join(os.path.dirname(__file__), "..", "deploy", "oomkiller.toml")) as f:
        words = " ".join(f.read().replace("#", " ").split())
    assert "anyone may ask for `info`; `rank` and every change are for root only" in words
    assert "anyone may `info` and `rank`" not in words


def one_line_error(**kw) -> str:
    with pytest.raises(cfg.ConfigError) as e:
        cfg.load(**kw)
    msg = str(e.value)
    assert msg and "\n" not in msg and msg.isprintable()
    return msg


# -- 1: sizes are read exactly and capped ------------------------------------
def test_sizes_are_exact_above_2_to_the_53():
    n = (1 << 53) + 1
    assert cfg.parse_size(str(n)) == n
    assert cfg.parse_size(f"{(1 << 49) + 1}K") == ((1 << 49) + 1) << 10
    assert cfg.parse_size("8388607.75M") == 8388607 * MiB + 3 * MiB // 4
    assert cfg.parse_size("0.1K") == 102        # a fraction of a byte is dropped
    assert cfg.parse_size("  12 GiB ") == 12 << 30 and cfg.parse_size("5kb") == 5 << 10
    assert cfg.Redline.parse("33.335%").permyriad == 3334
    assert cfg.load(cli={"redline": str(n)}).redline.bytes_ == n


@pytest.mark.parametrize("text", ["1" + "0" * 400, "1" + "0" * 400 + "M", "9" * 5000, "1." + "0" * 400 + "1",
                                  str((1 << 60) + 1), "1025P", "1048577T", "٣"])
def test_huge_or_odd_sizes_are_value_errors(text):
    with pytest.raises(ValueError):
        cfg.parse_size(text)
    with pytest.raises(ValueError):
        cfg.Redline.parse(text)


def test_sizes_are_capped_at_one_exbibyte():
    assert cfg.parse_size(1 << 60) == cfg.parse_size("1048576T") == 1 << 60
    msg = one_line_error(cli={"redline": str((1 << 60) + 1)})
    assert "command line: bad value for 'redline': too large" in msg and "1 EiB" in msg
    for bad in ("9" * 400 + "%", "1" + "0" * 330 + ".5%", "1e400%"):
        with pytest.raises(ValueError):
            cfg.Redline.parse(bad)
        assert "'pressure_limit'" in one_line_error(cli={"pressure_limit": bad})


def test_huge_toml_integers_name_the_key(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text(f"redline = {(1 << 63) - 1}\n")
    assert f"{f}: bad value for 'redline': too large" in one_line_error(config_file=str(f))
    f.write_text(f"sleep_ms = {10 ** 30}\n")
    assert f"{f}: bad value for 'sleep_ms'" in one_line_error(config_file=str(f))
    f.write_text("sleep_ms = 1" + "0" * 5000 + "\n")
    assert "not valid TOML: a number with too many digits" in one_line_error(config_file=str(f))


# -- 2: the config file is a regular UTF-8 file of at most 1 MiB ----------------
@pytest.mark.parametrize("content, needle", [
    (b"\x00\x01\xff\xfe binary", "not UTF-8 text: byte 0xff at offset 2"),
    ("sleep_ms = 5\n".encode("utf-16"), "(UTF-16? save it as UTF-8)"),
    (b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
    (b"x = {" * 3000, "not valid TOML"),
    (b"#" * (cfg.MAX_CONFIG_FILE_BYTES + 1), "larger than 1 MiB"),
])
def test_bad_config_files_are_one_line(tmp_path, content, needle):
    f = tmp_path / "bad.toml"
    f.write_bytes(content)
    msg = one_line_error(config_file=str(f))
    assert msg.startswith(f"{f}: ") and needle in msg


def test_a_utf8_bom_is_fine(tmp_path):
    f = tmp_path / "c.toml"
    f.write_bytes(b"\xef\xbb\xbfsleep_ms = 5\n")
    assert cfg.load(config_file=str(f)).sleep_ms == 5


def test_config_paths_that_are_not_regular_files(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)     # opened blocking, this would wait for a writer forever
    assert one_line_error(config_file=str(fifo)) == f"{fifo}: a FIFO, not a config file"
    assert one_line_error(config_file=str(tmp_path)) == f"{tmp_path}: a directory, not a config file"
    assert one_line_error(config_file="/dev/zero") == "/dev/zero: a character device, not a config file"
    assert one_line_error(config_file="/x\0y") == "/x\\x00y: a path cannot hold a NUL byte"
    assert one_line_error(config_file="") == "config file: an empty path"
    assert "cannot read it: Not a directory" in one_line_error(config_file="/dev/null/x")
    assert one_line_error(environ={"OOMKILLER_CONFIG": "/nonexistent"}) == \
        "/nonexistent (named by OOMKILLER_CONFIG): no such config file"
    assert cfg.load(environ={"OOMKILLER_CONFIG": ""}) == cfg.Config()


def test_unreadable_config_file(tmp_path, monkeypatch):
    f = tmp_path / "c.toml"
    f.write_text("")

    def denied(*_args):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(cfg.os, "open", denied)     # root reads any file: pretend
    assert one_line_error(config_file=str(f)) == f"{f}: permission denied"


# -- 3: text: the kernel command line's bytes, NUL and control characters, paths -----
def fake_proc_cmdline(monkeypatch, data: bytes) -> None:
    real_open = open

    def fake_open(path, mode="r", *a, **kw):
        if path == "/proc/cmdline":
            assert "b" in mode
            return io.BytesIO(data)
        return real_open(path, mode, *a, **kw)
    monkeypatch.setattr(files_mod, "open", fake_open, raising=False)


def cli_args(*argv: str) -> argparse.Namespace:
    return cli.parser().parse_args(["rank", *argv])


def test_proc_cmdline_that_is_not_utf8(monkeypatch):
    for k in [k for k in os.environ if k.startswith("OOMKILLER_")]:
        monkeypatch.delenv(k)
    fake_proc_cmdline(monkeypatch, b"quiet root=/dev/\xff\xfe oomkiller.sleep_ms=250 \xc3\n")
    assert cli.load_config(cli_args()).sleep_ms == 250
    fake_proc_cmdline(monkeypatch, b"quiet oomkiller.redline=5\xff% oomkiller.sleep_ms=250\n")
    with pytest.raises(cfg.ConfigError, match=r"^kernel command line: bad value for 'oomkiller.redline'"):
        cli.load_config(cli_args())
    for text in ("oomkiller.redline=\udcff", "oomkiller.sleep-ms=\ufffd", "oomkiller.autostart=\x00"):
        msg = one_line_error(cmdline=text)
        assert msg.startswith("kernel command line: bad value for 'oomkiller.")


@pytest.mark.parametrize("key", ["control_socket", "json_log", "cgroup_root", "proc_root", "domain"])
@pytest.mark.parametrize("bad, needle", [
    ("/run/a\0b", "holds a NUL byte"),
    ("/run/a\nb", "holds a control character"),
    ("/run/a\x1bb", "holds a control character"),
    ("/run/\udcffb", "holds a byte that is not UTF-8"),
    ("", "not a non-empty string"),
])
def test_strings_with_odd_characters_name_the_key(key, bad, needle):
    msg = one_line_error(cli={key: bad})
    assert msg.startswith(f"command line: bad value for '{key}': ") and needle in msg
    env_name = "OOMKILLER_" + key.upper()
    assert one_line_error(environ={env_name: bad}).startswith(f"environment: bad value for '{env_name}'")


def test_globs_with_odd_characters_name_the_key(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('protect = ["a\\u0000b"]\n')
    assert "bad value for 'protect'" in one_line_error(config_file=str(f))
    assert "not a glob: '.'" in one_line_error(cli={"avoid": ["."]})


@pytest.mark.parametrize("key", ["control_socket", "cgroup_root", "proc_root"])
def test_paths_must_be_absolute(key):
    assert "'run/x' is not an absolute path" in one_line_error(cli={key: "run/x"})


def test_socket_path_fits_sun_path():
    ok = "/" + "s" * 106
    assert cfg.load(cli={"control_socket": ok}).control_socket == ok
    msg = one_line_error(cli={"control_socket": ok + "s"})
    assert msg.startswith("command line: bad value for 'control_socket'") and "is 108 bytes long" in msg
    # bytes, not characters
    assert "bad value for 'OOMKILLER_CONTROL_SOCKET'" in one_line_error(
        environ={"OOMKILLER_CONTROL_SOCKET": "/" + "é" * 54})


def test_json_log_is_dash_or_a_path():
    assert cfg.load(cli={"json_log": "-"}).json_log == "-"
    assert cfg.load(cli={"json_log": "decisions.jsonl"}).json_log == "decisions.jsonl"


# -- 4: a domain that cannot be read names the key at fault ---------------------
def domain_conf(proc_tree, tree, **kw) -> cfg.Config:
    return cfg.load(cli={"proc_root": str(proc_tree.root), "cgroup_root": str(tree.root), **kw})


def test_domain_errors_name_the_key_at_fault(proc_tree, v2_tree, tmp_path):
    with pytest.raises(cfg.ConfigError, match=r"^command line: bad value for 'proc_root': .*no meminfo there"):
        cli._domain(domain_conf(proc_tree, v2_tree))
    proc_tree.meminfo(total_kb=256 << 10, available_kb=200 << 10)
    with pytest.raises(cfg.ConfigError, match=r"^command line: bad value for 'cgroup_root': .*: not a folder"):
        cli._domain(cfg.load(cli={"proc_root": str(proc_tree.root), "cgroup_root": str(tmp_path / "none")}))
    with pytest.raises(cfg.ConfigError, match=r"^command line: bad value for 'domain': /nope: not a cgroup folder$"):
        cli._domain(domain_conf(proc_tree, v2_tree, domain="/nope"))
    (proc_tree.root / "meminfo").write_text("MemFree: 1 kB\n")
    with pytest.raises(cfg.ConfigError, match=r"^command line: bad value for 'proc_root': .*no MemTotal"):
        cli._domain(domain_conf(proc_tree, v2_tree))
    (proc_tree.root / "meminfo").unlink()
    os.mkfifo(proc_tree.root / "meminfo")
    with pytest.raises(cfg.ConfigError, match=r"'proc_root'"):
        cli._domain(domain_conf(proc_tree, v2_tree))


@pytest.mark.parametrize("err", [RecursionError("maximum recursion depth exceeded"), RuntimeError("odd")])
def test_a_domain_tree_that_cannot_be_walked_is_one_line_naming_the_domain(proc_tree, v2_tree, monkeypatch, err):
    """A tree a user shaped (a thousand nested cgroups) that a read of the
    domain did not expect: a config error about 'domain', not a traceback."""
    from oomkiller.domain import Domain
    proc_tree.meminfo(total_kb=256 << 10, available_kb=200 << 10)
    v2_tree.cgroup("j")

    def fail(self):
        raise err
    monkeypatch.setattr(Domain, "find_pressure", fail)
    with pytest.raises(cfg.ConfigError, match=rf"^command line: bad value for 'domain': j: cannot read its cgroup "
                                              rf"tree \({type(err).__name__}: "):
        cli._domain(domain_conf(proc_tree, v2_tree, domain="j"))


def test_a_good_domain_reads(proc_tree, v2_tree):
    proc_tree.meminfo(total_kb=256 << 10, available_kb=200 << 10)
    assert cli._domain(domain_conf(proc_tree, v2_tree)).is_host


# -- 5: values that do harm are refused, saying why -----------------------------
@pytest.mark.parametrize("kw, needle", [
    ({"cli": {"jobs": []}}, "command line: bad value for 'jobs': no globs: no job could ever be killed"),
    ({"cli": {"jobs": ""}}, "command line: bad value for 'jobs': no globs"),
    ({"environ": {"OOMKILLER_JOBS": ""}}, "environment: bad value for 'OOMKILLER_JOBS': no globs"),
    ({"environ": {"OOMKILLER_JOBS": " , "}}, "environment: bad value for 'OOMKILLER_JOBS': no globs"),
    ({"cli": {"kill_timeout_ms": 0}}, "'kill_timeout_ms': 0 is outside 1..600000"),
    ({"cli": {"redline": "0%"}}, "'redline': percent out of range"),
    ({"cli": {"redline": "100%"}}, "'redline': percent out of range"),
])
def test_harmful_values(kw, needle):
    assert needle in one_line_error(**kw)


def test_empty_jobs_in_the_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("jobs = []\nprotect = []\n")
    assert f"{f}: bad value for 'jobs': no globs" in one_line_error(config_file=str(f))


def test_redline_must_stay_below_a_chosen_arm_line(tmp_path):
    msg = one_line_error(cli={"redline": "30%", "arm_redline": "25%"})
    assert msg.startswith("command line: bad value for 'arm_redline': 25% is at or below redline (30%, "
                          "command line): prearm would never arm")
    f = tmp_path / "c.toml"
    f.write_text('arm_redline = "4%"\n')
    assert one_line_error(config_file=str(f)).startswith(
        f"{f}: bad value for 'arm_redline': 4% is at or below redline (5%, the default)")
    msg = one_line_error(config_file=str(f), environ={"OOMKILLER_REDLINE": "64M", "OOMKILLER_ARM_REDLINE": "64M"})
    assert msg.startswith("environment: bad value for 'OOMKILLER_ARM_REDLINE': 64M is at or below")
    msg = one_line_error(config_file=str(f), cli={"redline": "6%"})
    assert msg.startswith(f"command line: bad value for 'redline': 6% is at or above arm_redline (4%, {f})")
    # without prearm there is no arm line to keep below
    assert cfg.load(cli={"redline": "30%", "arm_redline": "25%", "sources": "ebpf,psi"}).redline.permyriad == 3000
    # redline 0 turns the redline off (prearm and pressure still act)
    assert cfg.load(cli={"redline": "0"}).redline == cfg.Redline()


def test_at_the_default_arm_redline_the_arm_line_follows_the_redline():
    warnings: list[str] = []
    c = cfg.load(environ={"OOMKILLER_REDLINE": "25%"}, warn=warnings.append)
    assert c.redline.permyriad == 2500 and warnings == []
    assert c.arm_line_bytes(1000 * MiB) == 350 * MiB        # 25% + the 10% band
    # the shipped example sets every key to its default: that is no choice of arm line
    shipped = os.path.join(os.path.dirname(__file__), "..", "deploy", "oomkiller.toml")
    c = cfg.load(config_file=shipped, cli={"redline": "64M"})
    c.check_domain(256 * MiB)
    assert c.arm_line_bytes(256 * MiB) == 64 * MiB + 256 * MiB // 10
    # the defaults keep their 20% (5% + 10% is below it); a chosen one is kept as chosen
    assert cfg.Config().arm_line_bytes(1000 * MiB) == 200 * MiB
    assert cfg.load(cli={"redline": "25%"}, environ={"OOMKILLER_ARM_REDLINE": "30%"}).arm_line_bytes(
        1000 * MiB) == 300 * MiB
    # never at or above the domain's size
    assert cfg.load(cli={"redline": "95%"}).arm_line_bytes(1000 * MiB) == 1000 * MiB - 1


def test_check_domain():
    total = 256 * MiB
    cfg.Config().check_domain(total)
    cfg.load(cli={"redline": "200M", "sources": "timer"}).check_domain(total)
    for kw, needle in [
        ({"redline": "200G"}, "command line: bad value for 'redline': 200G is at or above the domain's size "
                              "(256M): every job would be killed with no memory pressure at all"),
        ({"redline": "256M", "sources": "timer"}, "'redline': 256M is at or above the domain's size"),
        ({"arm_redline": "300M"}, "'arm_redline': 300M is at or above the domain's size (256M): the top job "
                                  "would be armed all the time"),
        ({"redline": "100M", "arm_redline": "30%"}, "'arm_redline': 30% is at or below redline (100M"),
        ({"redline": "30%", "arm_redline": "64M"}, "'arm_redline': 64M is at or below redline (30%"),
    ]:
        c = cfg.load(cli=kw)
        with pytest.raises(cfg.ConfigError) as e:
            c.check_domain(total)
        assert needle in str(e.value)
    cfg.load(cli={"redline": "64M"}).check_domain(total)      # the arm line follows it
    with pytest.raises(cfg.ConfigError, match="at or above the domain's size"):
        cfg.Config().check_domain(0)
    # built directly, with no origins (as the daemon's tests do)
    with pytest.raises(cfg.ConfigError, match="^default: bad value for 'arm_redline': 40% is at or below redline"):
        cfg.Config(redline=cfg.Redline(permyriad=5000), arm_redline=cfg.Redline(permyriad=4000)).check()


def test_rank_refuses_a_redline_above_the_domain(proc_tree, v2_tree):
    proc_tree.meminfo(total_kb=256 << 10, available_kb=200 << 10)
    with pytest.raises(cfg.ConfigError, match="^command line: bad value for 'redline': 200G is at or above"):
        cli._domain(domain_conf(proc_tree, v2_tree, redline="200G"))


# -- 6: foreign OOMKILLER_* variables and oomkiller.* kernel words are warnings ------
KUBERNETES_ENV = {
    "OOMKILLER_SERVICE_HOST": "10.0.0.7", "OOMKILLER_SERVICE_PORT": "8080", "OOMKILLER_PORT": "tcp://10.0.0.7:8080",
    "OOMKILLER_PORT_8080_TCP": "tcp://10.0.0.7:8080", "OOMKILLER_PORT_8080_TCP_PROTO": "tcp",
    "OOMKILLER_PORT_8080_TCP_PORT": "8080", "OOMKILLER_PORT_8080_TCP_ADDR": "10.0.0.7",
}


def test_kubernetes_service_variables_only_warn():
    warnings: list[str] = []
    c = cfg.load(environ={**KUBERNETES_ENV, "OOMKILLER_SLEEP_MS": "250", "PATH": "/bin"}, warn=warnings.append)
    assert c.sleep_ms == 250
    assert sorted(warnings) == sorted(f"environment: ignoring unknown variable '{k}'" for k in KUBERNETES_ENV)
    assert cfg.load(environ=KUBERNETES_ENV) == cfg.Config()     # no warn: dropped


def test_a_misspelt_variable_warns_with_the_likely_name():
    warnings: list[str] = []
    cfg.load(environ={"OOMKILLER_REDLIEN": "5%"}, warn=warnings.append)
    assert warnings == ["environment: ignoring unknown variable 'OOMKILLER_REDLIEN' (did you mean "
                        "'OOMKILLER_REDLINE'?)"]


def test_the_config_and_control_socket_variables_still_count(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("dry_run = true\n")
    warnings: list[str] = []
    c = cfg.load(environ={"OOMKILLER_CONFIG": str(f), "OOMKILLER_CONTROL_SOCKET": "/run/o.sock"},
                 warn=warnings.append)
    assert (c.dry_run, c.control_socket, warnings) == (True, "/run/o.sock", [])


def test_unknown_kernel_words_only_warn():
    warnings: list[str] = []
    c = cfg.load(cmdline="oomkiller.domain=/x oomkiller.bogus=1 oomkiller.autostart oomkiller.sleep_ms=5 "
                         "oomkiller.sleep-ms=7", warn=warnings.append)
    assert c.sleep_ms == 7      # given twice: the last wins, as in the kernel
    known = "(read here: oomkiller.redline, oomkiller.sleep_ms, oomkiller.autostart)"
    assert warnings == [
        f"kernel command line: ignoring 'oomkiller.domain': a key read only from the config file, environment "
        f"or flags {known}",
        f"kernel command line: ignoring 'oomkiller.bogus': unknown {known}",
        "kernel command line: ignoring 'oomkiller.autostart': no value (write oomkiller.autostart=VALUE)",
    ]


def test_unknown_keys_in_the_file_and_flags_stay_errors(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("sleep_mss = 5\n")
    msg = one_line_error(config_file=str(f))
    assert msg.startswith(f"{f}: unknown key 'sleep_mss' (did you mean 'sleep_ms'?) (known: ")
    assert one_line_error(cli={"bogus": 1}).startswith("command line: unknown key 'bogus'")
    f.write_text("sleep-ms = 5\nsleep_ms = 6\n")
    assert one_line_error(config_file=str(f)) == f"{f}: 'sleep-ms' and 'sleep_ms' are the same key"
    f.write_text('"a\\nb" = 5\n')
    assert one_line_error(config_file=str(f)).startswith(f"{f}: unknown key 'a\\nb'")


# -- 7: values of the wrong type ----------------------------------------------
@pytest.mark.parametrize("line, key", [
    ('domain = { a = 1 }', "domain"),
    ('[domain]\na = 1', "domain"),
    ("protect = [1, 2]", "protect"),
    ("jobs = [[\"a\"]]", "jobs"),
    ("sleep_ms = true", "sleep_ms"),
    ("sleep_ms = 1979-05-27T07:32:00Z", "sleep_ms"),
    ("redline = 1979-05-27", "redline"),
    ("redline = 07:32:00", "redline"),
    ("redline = nan", "redline"),
    ("redline = inf", "redline"),
    ("sleep_ms = -inf", "sleep_ms"),
    ("pressure_limit = nan", "pressure_limit"),
    ("pressure_limit = true", "pressure_limit"),
    ("autostart = 2", "autostart"),
    ("autostart = []", "autostart"),
    (f"sleep_ms = {(1 << 63) - 1}", "sleep_ms"),
    (f"kill_timeout_ms = {-(1 << 63)}", "kill_timeout_ms"),
    ("sources = [\"ebpf\", 3]", "sources"),
    ("sources = \"ebpf,bogus\"", "sources"),
    ("control_socket = 5", "control_socket"),
    ("json_log = false", "json_log"),
])
def test_toml_values_of_the_wrong_type(tmp_path, line, key):
    f = tmp_path / "c.toml"
    f.write_text(line + "\n")
    assert one_line_error(config_file=str(f)).startswith(f"{f}: bad value for '{key}': ")


def test_booleans_from_words():
    for yes in ("1", "true", "Yes", " on "):
        assert cfg.load(environ={"OOMKILLER_DRY_RUN": yes}).dry_run
    for no in ("0", "false", "NO", "off"):
        assert not cfg.load(environ={"OOMKILLER_AUTOSTART": no}).autostart
    assert "not a boolean: 'maybe'" in one_line_error(environ={"OOMKILLER_DRY_RUN": "maybe"})
