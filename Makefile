# oomkiller. Every target sets up what it needs first (as root, on Debian).
PY := .venv/bin/python

.PHONY: setup bench-setup run test test-unit test-kernel clean install uninstall

setup:
	bash deploy/setup-host.sh

# The daemon as a host service (deploy/install.sh says what goes where and
# why): the package in a venv at /opt/oomkiller, /usr/local/sbin/oomkiller,
# the unit in /usr/local/lib/systemd/system (not enabled), the config in
# /etc/oomkiller (never overwritten) and oomkiller(8). First the host's
# packages, as setup installs them (bcc, venv, headers), but not the
# project's .venv. DESTDIR=DIR stages it all below DIR and touches nothing else.
install:
ifeq ($(DESTDIR),)
	@bash deploy/setup-host.sh --no-venv
endif
	@bash deploy/install.sh install

# Removes exactly what install made (listed in /opt/oomkiller/installed),
# stopping and disabling the unit first; keeps a config the operator edited.
uninstall:
	@bash deploy/install.sh uninstall

# The benchmark's contenders and load tools (earlyoom, nohang, lxcfs,
# stress-ng), installed masked: the benchmark runs them itself.
bench-setup: setup
	bash deploy/setup-bench.sh

# The daemon on the host domain, on its defaults (redline 5% of MemTotal,
# 1 s timer, jobs = units, scopes and pods (each desktop app a job), never
# itself, PID 1 or a protected job).
run: setup
	$(PY) -m oomkiller run

# The whole suite: plain tests on fixtures, the tier that needs root, cgroups
# and BPF on the real kernel, and the VM tier (a pure cgroup v2 guest with
# systemd under QEMU; about 5 minutes, plus 1 to build its image the first time).
test: bench-setup
	$(PY) -m pytest -q -ra tests

test-unit: setup
	$(PY) -m pytest -q -ra tests --ignore=tests/kernel --ignore=tests/vm

test-kernel: bench-setup
	$(PY) -m pytest -q -ra tests/kernel

# The man page, oomkiller(8), regenerated from the argument parser (argparse-manpage,
# pyproject's `man` extra); tests/test_manpage.py fails when it is stale.
.PHONY: man
man: setup
	$(PY) deploy/manpage.py deploy/oomkiller.8

clean:
	rm -rf .venv build *.egg-info .pytest_cache

# The VM tier: builds the guest image (deploy/vm/build-image.sh, cached in
# /var/cache/oomkiller-vm) or reuses it, boots it once under QEMU and runs the
# guest tier (tests/guest/) inside: systemd on pure cgroup v2. Results, the
# guest's journal and console land in build/vm/.
.PHONY: test-vm
test-vm: bench-setup
	$(PY) -m pytest -q -ra tests/vm

# The benchmark in its short mode (about 12 minutes): every contender on every
# scenario, in arenas, and the freeze and the healthy loads against the
# kernel, oomkiller's shipped defaults, earlyoom and nohang; JSON, Markdown
# and PNGs in bench-out/. `--full` runs the whole matrix: about three hours at
# its 5 runs per cell (the healthy loads alone, a minute each, 1.8 h of it);
# `--runs` and `--scenarios` narrow it.
.PHONY: bench
bench: bench-setup
	$(PY) -m oomkiller_bench --short --out bench-out
