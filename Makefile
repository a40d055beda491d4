# oomkiller. Every target sets up what it needs first (as root, on Debian).
PY := .venv/bin/python

.PHONY: setup run test test-unit test-kernel clean

setup:
	bash deploy/setup-host.sh

# The daemon on the host domain, on its defaults (redline 5% of MemTotal,
# 1 s timer, jobs = top-level cgroups, never itself, PID 1 or a protected job).
run: setup
	$(PY) -m oomkiller run

# The whole suite: plain tests on fixtures, then the tier that needs root,
# cgroups and BPF on the real kernel.
test: setup
	$(PY) -m pytest -q -ra tests

test-unit: setup
	$(PY) -m pytest -q -ra tests --ignore=tests/kernel

test-kernel: setup
	$(PY) -m pytest -q -ra tests/kernel

clean:
	rm -rf .venv build *.egg-info .pytest_cache
