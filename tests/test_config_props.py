"""Properties of the config loader: whatever comes in, out comes a Config or
one ConfigError line, never another exception."""
from __future__ import annotations

import datetime
import math
import os
import tempfile
from fractions import Fraction

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from oomkiller import config as cfg

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEYS = sorted(cfg._KEYS)

# Words the parsers look for, mixed into arbitrary text so the examples get past the first check.
_WORDS = ["", " ", "0", "1", "5", "50", "1.5", "99.99", ".", "%", "K", "M", "G", "T", "B", "iB", "KiB", "-", "/",
          "*", ",", "true", "off", "nan", "inf", "e3", "_", "\x00", "\n", "é", "١", "9" * 30, "ebpf", "prearm",
          "psi", "memcg", "timer", "host", "parent"]
# "\udcff" is how a byte that is not UTF-8 arrives from argv, the environment or
# surrogateescape; it cannot be written to a UTF-8 file.
WORDS = st.sampled_from(_WORDS + ["\udcff"])
UTF8_WORDS = st.sampled_from(_WORDS)
TEXT = st.one_of(st.text(max_size=40), st.lists(WORDS, max_size=6).map("".join))
UTF8_TEXT = st.one_of(st.text(max_size=40), st.lists(UTF8_WORDS, max_size=6).map("".join))


def is_one_line(msg: str) -> bool:
    return bool(msg) and "\n" not in msg and msg.isprintable()


def total(fn, *args, **kwargs):
    """Call a loader: a Config, or a ConfigError of one printable line."""
    try:
        return fn(*args, **kwargs)
    except cfg.ConfigError as e:
        assert is_one_line(str(e)), repr(str(e))
        return e


# -- parse_size and Redline.parse -------------------------------------------------

SCALARS = st.one_of(TEXT, st.integers(), st.integers(min_value=-(1 << 70), max_value=1 << 70), st.floats(),
                    st.booleans(), st.none(), st.binary(max_size=8))


@SETTINGS
@given(SCALARS)
@example("1" + "0" * 400)
@example("9" * 5000 + "M")
@example("1e400")
def test_parse_size_is_total(v):
    try:
        n = cfg.parse_size(v)
    except ValueError as e:
        assert is_one_line(str(e))
    else:
        assert isinstance(n, int) and 0 <= n <= cfg.MAX_SIZE


@SETTINGS
@given(st.integers(min_value=0, max_value=cfg.MAX_SIZE))
def test_parse_size_reads_integers_exactly(n):
    assert cfg.parse_size(str(n)) == n
    assert cfg.parse_size(f" {n:0>30} B ") == n
    assert cfg.parse_size(f"{n >> 10}K") == n >> 10 << 10


@SETTINGS
@given(st.integers(min_value=0, max_value=1 << 40), st.text("0123456789", min_size=1, max_size=20),
       st.sampled_from(["", "K", "M", "G", "T"]))
def test_parse_size_reads_decimals_exactly(whole, frac, unit):
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit]
    exact = math.floor(Fraction(f"{whole}.{frac}") * scale)
    try:
        assert cfg.parse_size(f"{whole}.{frac}{unit}") == exact
    except ValueError:
        assert exact > cfg.MAX_SIZE


@SETTINGS
@given(SCALARS)
@example("9" * 400 + "%")
@example("0.004%")
@example("99.996%")
def test_redline_parse_is_total(v):
    try:
        r = cfg.Redline.parse(v)
    except ValueError as e:
        assert is_one_line(str(e))
    else:
        assert 0 <= r.bytes_ <= cfg.MAX_SIZE and 0 <= r.permyriad < 10000
        assert not (r.bytes_ and r.permyriad)
        assert cfg.Redline.parse(str(r)) == r


# -- config.load with arbitrary values from every origin ------------------------------

def toml_dicts(text, words):
    """Tables as tomllib returns them: nested tables and lists of anything TOML
    holds, under known keys (both spellings) and arbitrary ones."""
    scalars = st.one_of(
        text, st.booleans(), st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1), st.integers(),
        st.floats(), st.datetimes(), st.datetimes(timezones=st.just(datetime.timezone.utc)),
        st.dates(), st.times())
    values = st.recursive(
        scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
        max_leaves=12)
    keys = st.one_of(st.sampled_from(KEYS), st.sampled_from(KEYS).map(lambda k: k.replace("_", "-")),
                     st.text(max_size=12))
    return st.dictionaries(keys, st.one_of(values, words), max_size=6)


def toml_string(s: str) -> str:
    out = []
    for c in s:
        if c in '"\\' or ord(c) < 0x20 or ord(c) == 0x7f:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, (datetime.datetime, datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_string(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def toml_text(d: dict) -> str:
    return "".join(f"{toml_string(k)} = {toml_value(v)}\n" for k, v in d.items())


def assert_result(r, warnings=()):
    assert isinstance(r, (cfg.Config, cfg.ConfigError))
    for w in warnings:
        assert is_one_line(w), repr(w)


@SETTINGS
@given(toml_dicts(UTF8_TEXT, UTF8_WORDS))
@example({"redline": "9" * 400})
@example({"jobs": []})
@example({"domain": {"a": {"b": [1, 2.5, True]}}})
def test_load_of_any_toml_file(d):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "c.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(toml_text(d))
        assert_result(total(cfg.load, config_file=path))


@SETTINGS
@given(toml_dicts(TEXT, WORDS))
def test_load_of_any_command_line_values(d):
    assert_result(total(cfg.load, cli=d))


ENV_NAMES = st.one_of(st.sampled_from(KEYS).map(lambda k: "OOMKILLER_" + k.upper()),
                      st.text(max_size=20).map(lambda s: "OOMKILLER_" + s), st.text(max_size=10))


@SETTINGS
@given(st.dictionaries(ENV_NAMES, TEXT, max_size=8))
@example({"OOMKILLER_SERVICE_HOST": "10.0.0.1", "OOMKILLER_PORT": "tcp://10.0.0.1:80"})
@example({"OOMKILLER_JOBS": ""})
@example({"OOMKILLER_CONFIG": "/dev/zero"})
@example({"OOMKILLER_CONFIG": "\x00"})
def test_load_of_any_environment(env):
    warnings: list[str] = []
    assert_result(total(cfg.load, environ=env, warn=warnings.append), warnings)


CMDLINE_WORDS = st.one_of(
    st.tuples(st.sampled_from(KEYS + ["sleep-ms", "", "bogus"]), st.sampled_from(["=", ""]), TEXT).map(
        lambda t: f"oomkiller.{t[0]}{t[1]}{t[2]}"),
    st.text(max_size=12), st.just("--"))


@SETTINGS
@given(st.one_of(st.lists(CMDLINE_WORDS, max_size=8).map(" ".join), st.text(),
                 st.binary().map(lambda b: b.decode("utf-8", "replace")),
                 st.binary().map(lambda b: b.decode("utf-8", "surrogateescape")),
                 st.binary().map(lambda b: ("oomkiller.redline=" + b.decode("utf-8", "surrogateescape")))))
def test_load_of_any_kernel_command_line(cmdline):
    warnings: list[str] = []
    assert_result(total(cfg.load, cmdline=cmdline, warn=warnings.append), warnings)


VALID_START = st.sampled_from([b"", b"sleep_ms = ", b"redline = \"", b"jobs = [", b"[domain]\n", b"a = {",
                               b"\xef\xbb\xbf", b"\xff\xfe"])


@SETTINGS
@given(VALID_START, st.binary(max_size=200))
@example(b"", b"a = " + b"[" * 3000)
@example(b"", "sleep_ms = 5\n".encode("utf-16"))
def test_load_of_any_bytes_as_the_config_file(start, data):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "c.toml")
        with open(path, "wb") as f:
            f.write(start + data)
        assert_result(total(cfg.load, config_file=path))


@SETTINGS
@given(TEXT)
def test_load_of_any_config_path(path):
    assert_result(total(cfg.load, config_file=path))


@SETTINGS
@given(st.dictionaries(st.sampled_from(["redline", "arm_redline", "sources", "jobs"]),
                       st.one_of(WORDS, TEXT, st.integers(min_value=0, max_value=1 << 62)), max_size=4),
       st.integers(min_value=0, max_value=1 << 62))
def test_check_domain_is_total(d, size):
    conf = total(cfg.load, cli=d)
    if isinstance(conf, cfg.Config):
        checked = total(conf.check_domain, size)
        assert checked is None or isinstance(checked, cfg.ConfigError)
