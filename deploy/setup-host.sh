#!/usr/bin/env bash
# Installs what oomkiller and its tests need on a Debian host, and makes the
# project's virtualenv. Idempotent: a second run only checks. It changes:
#
#   - Debian's python3-bpfcc (the `bcc` module; the PyPI package named bcc is
#     an unrelated project), python3-venv, python3-pip;
#   - kernel headers bcc can compile against, and, when none match the
#     running kernel, links /lib/modules/$(uname -r)/{build,source} to
#     Debian's newest (said when made);
#   - tracefs mounted at /sys/kernel/tracing, if it is not;
#   - .venv: Debian's /usr/bin/python3 (bcc is built for it) with the system
#     site-packages visible, plus from PyPI what the tests and the benchmark
#     need (pyproject's `test` and `bench` extras: pytest, hypothesis, psutil,
#     matplotlib); the daemon itself needs none of them.
set -euo pipefail
cd "$(dirname "$0")/.."

# The benchmark's contenders (earlyoom, nohang, lxcfs, stress-ng) are not the
# daemon's: deploy/setup-bench.sh installs them, never enabled or running.
APT_PACKAGES=(python3-bpfcc python3-venv python3-pip)
kver=$(uname -r)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
headers=""
if [ ! -e "/lib/modules/$kver/build/include" ]; then
  # Prefer headers that match the running kernel; this project's VMs run a
  # kernel Debian does not ship, so fall back to Debian's current headers.
  if apt-cache show "linux-headers-$kver" >/dev/null 2>&1 || { apt-get update -qq && apt-cache show "linux-headers-$kver" >/dev/null 2>&1; }; then
    headers="linux-headers-$kver"
  else
    headers="linux-headers-amd64"
  fi
  missing+=("$headers")
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -e "/lib/modules/$kver/build/include" ]; then
  # bcc looks for headers under /lib/modules/$(uname -r)/{build,source}. The
  # BPF C reads only tracepoint arguments and helpers, so headers of another
  # kernel version compile it correctly (MACHINE.md).
  arch_dir=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
  common_dir=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1)
  if [ -n "$arch_dir" ] && [ -n "$common_dir" ]; then
    mkdir -p "/lib/modules/$kver"
    ln -sfn "$arch_dir" "/lib/modules/$kver/build"
    ln -sfn "$common_dir" "/lib/modules/$kver/source"
    echo "setup: linked $arch_dir as the headers of $kver"
  else
    echo "setup: no kernel headers found under /usr/src: eBPF sources will be unavailable" >&2
  fi
fi

if ! mountpoint -q /sys/kernel/tracing 2>/dev/null; then
  mount -t tracefs tracefs /sys/kernel/tracing && echo "setup: mounted tracefs"
fi

if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
if ! .venv/bin/python -c "import oomkiller, psutil, pytest, matplotlib, hypothesis" 2>/dev/null; then
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test,bench]'
fi
.venv/bin/python -c "import bcc" 2>/dev/null || echo "setup: bcc does not import in .venv: eBPF sources will be unavailable" >&2
echo "setup: ready"
