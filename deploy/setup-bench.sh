#!/usr/bin/env bash
# Installs what the benchmark and its tests run beside oomkiller: the other
# OOM killers and load tools (earlyoom, nohang, lxcfs, stress-ng). The
# benchmark starts each itself, against one arena at a time, so none of them
# may run as a service: Debian's packages would enable and start
# earlyoom.service, nohang.service, nohang-desktop.service and lxcfs.service,
# three OOM killers racing the one being measured, and on a real host racing
# oomkiller itself. They are installed with service starts refused, then
# stopped (if systemd runs), disabled and masked. Idempotent: a second run
# only checks. Undo with: systemctl unmask <unit>.
set -euo pipefail

PACKAGES=(earlyoom nohang lxcfs stress-ng)
UNITS=(earlyoom.service nohang.service nohang-desktop.service lxcfs.service)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup-bench: installing ${missing[*]}, with service starts refused"
  made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# made by oomkiller deploy/setup-bench.sh for one install\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  trap 'if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi' EXIT
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if command -v systemctl >/dev/null 2>&1; then
  for u in "${UNITS[@]}"; do
    [ "$(systemctl is-enabled "$u" 2>/dev/null || true)" = "masked" ] && continue
    if [ -d /run/systemd/system ]; then
      systemctl stop "$u" >/dev/null 2>&1 || true
    fi
    systemctl disable "$u" >/dev/null 2>&1 || true
    systemctl mask "$u" >/dev/null 2>&1 && echo "setup-bench: masked $u (the benchmark runs it itself)"
  done
fi
echo "setup-bench: ready"
