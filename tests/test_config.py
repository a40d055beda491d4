import pytest

from oomkiller import config as cfg


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
    assert c.jobs == ("*",)


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
    with pytest.raises(cfg.ConfigError, match="kernel command line: unknown key 'oomkiller.domain'"):
        cfg.load(cmdline="oomkiller.domain=/x")
    with pytest.raises(cfg.ConfigError, match="bad value for 'psi_stall_ms': 900 must be less than psi_window_ms"):
        cfg.load(cli={"psi_stall_ms": 900, "psi_window_ms": 800})
    with pytest.raises(cfg.ConfigError, match="kernel command line: bad value for 'oomkiller.sleep_ms'"):
        cfg.load(cmdline="oomkiller.sleep_ms=soon")
    with pytest.raises(cfg.ConfigError, match="no such config file"):
        cfg.load(config_file="/nonexistent/oomkiller.toml")


def test_shipped_example_lists_every_default():
    import os
    import tomllib
    path = os.path.join(os.path.dirname(__file__), "..", "deploy", "oomkiller.toml")
    with open(path, "rb") as f:
        keys = set(tomllib.load(f))
    assert keys == set(cfg._KEYS)
    assert cfg.load(config_file=path) == cfg.Config()
