#!/usr/bin/env bash
# Installs what oomkiller and its tests need on a Debian host, and makes the
# project's virtualenv. Idempotent: a second run only checks. It changes:
#
#   - Debian's python3-bpfcc (the `bcc` module; the PyPI package named bcc is
#     an unrelated project), python3-venv, python3-pip;
#   - kernel headers bcc can compile against: the running kernel's
#     linux-headers package, or, when Debian ships none for it, Debian's
#     current ones (linux-headers-<arch>). Nothing is written into
#     /lib/modules: the daemon points bcc at /usr/src itself;
#   - tracefs mounted at /sys/kernel/tracing, if it is not;
#   - .venv: Debian's /usr/bin/python3 (bcc is built for it) with the system
#     site-packages visible, plus from PyPI what the tests and the benchmark
#     need (pyproject's `test`, `bench` and `man` extras: pytest, hypothesis,
#     psutil, matplotlib, argparse-manpage, kubernetes-validate, promql-parser); the daemon
#     itself needs none.
#
# --no-venv: only the host's part, for `make install` (which makes its own
# venv in /opt/oomkiller).
set -euo pipefail
cd "$(dirname "$0")/.."
with_venv=1
if [ "${1:-}" = "--no-venv" ]; then with_venv=""; fi

# The benchmark's contenders (earlyoom, nohang, lxcfs, stress-ng) are not the
# daemon's: deploy/setup-bench.sh installs them, never enabled or running.
APT_PACKAGES=(python3-bpfcc python3-venv python3-pip)
kver=$(uname -r)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
# Kernel headers for bcc: the running kernel's own, else any Debian header
# tree under /usr/src. The daemon points bcc at the latter itself
# (BCC_KERNEL_SOURCE; oomkiller/sources/bpf.py), so nothing is written into
# /lib/modules. This project's VMs run a kernel Debian does not ship: there
# Debian's current headers are installed, and the BPF C, which reads only
# tracepoint arguments and helpers, compiles against them.
have_headers() {
  [ -e "/lib/modules/$kver/build/include" ] || [ -e /sys/kernel/kheaders.tar.xz ] ||
    compgen -G "/usr/src/linux-headers-*/include/generated/autoconf.h" >/dev/null
}
if ! have_headers; then
  if apt-cache show "linux-headers-$kver" >/dev/null 2>&1 || { apt-get update -qq && apt-cache show "linux-headers-$kver" >/dev/null 2>&1; }; then
    missing+=("linux-headers-$kver")
  else
    missing+=("linux-headers-$(dpkg --print-architecture)")
  fi
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! have_headers; then
  echo "setup: no kernel headers under /lib/modules/$kver or /usr/src: eBPF sources will be unavailable" >&2
fi

if ! mountpoint -q /sys/kernel/tracing 2>/dev/null; then
  mount -t tracefs tracefs /sys/kernel/tracing && echo "setup: mounted tracefs"
fi

if [ -z "$with_venv" ]; then
  /usr/bin/python3 -c "import bcc" 2>/dev/null || echo "setup: bcc does not import: eBPF sources will be unavailable" >&2
  echo "setup: host ready"
  exit 0
fi

# The tests' own tool from Debian: shellcheck for the example hooks.
if ! command -v shellcheck >/dev/null 2>&1; then
  echo "setup: installing shellcheck (the tests check deploy/hooks/ with it)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
if ! .venv/bin/python -c "import oomkiller, psutil, pytest, matplotlib, hypothesis, argparse_manpage, prometheus_client, kubernetes_validate, promql_parser" 2>/dev/null; then
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test,bench,man,metrics]'
fi
.venv/bin/python -c "import bcc" 2>/dev/null || echo "setup: bcc does not import in .venv: eBPF sources will be unavailable" >&2
echo "setup: ready"
