#!/usr/bin/env bash
# Installs oomkiller as a host service, or removes exactly what it installed.
#
#   deploy/install.sh install      (make install)
#   deploy/install.sh uninstall    (make uninstall)
#
# What install puts in place (each line says whether it changed):
#
#   OPTDIR (/opt/oomkiller)   a venv of Debian's /usr/bin/python3 with the
#                             system site-packages visible, holding the package.
#                             Not pip into the system: Debian 12 refuses that
#                             (PEP 668, its python3 is "externally managed"),
#                             and a package in /usr/local/lib/python3* would
#                             shadow or be shadowed by apt's. Not only apt's
#                             Python either: bcc is apt's (python3-bpfcc) and
#                             is seen through the system site-packages, the
#                             daemon needs nothing from PyPI.
#   PREFIX/sbin/oomkiller     a link to OPTDIR/bin/oomkiller, for the control
#                             commands (PREFIX is /usr/local: what an operator
#                             installs by hand goes there, apt's in /usr)
#   PREFIX/lib/systemd/system/oomkiller.service
#                             deploy/oomkiller.service, run from OPTDIR; systemd
#                             reads that folder for local units and /etc stays
#                             the operator's for overrides. Not enabled: say
#                             `systemctl enable --now oomkiller`.
#   SYSCONFDIR/oomkiller/oomkiller.toml
#                             deploy/oomkiller.toml, only if there is none: an
#                             operator's file is never overwritten
#   PREFIX/share/man/man8/oomkiller.8
#                             the man page
#   PREFIX/share/oomkiller/hooks/notify-desktop, restart-unit
#                             the example hooks (deploy/hooks/), root's and
#                             mode 755 as a hook must be; not configured
#
# OPTDIR/installed records every file and folder install made, with the
# config's checksum as installed; uninstall removes exactly those, keeps a
# config the operator edited (and says so), and stops and disables the unit
# first. Both are idempotent. DESTDIR stages everything below it (the venv's
# scripts then name the staged path: staging is for tests and packaging
# checks), and then systemd is not touched.
set -euo pipefail

action=${1:-}
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
SYSCONFDIR=${SYSCONFDIR:-/etc}
OPTDIR=${OPTDIR:-/opt/oomkiller}
UNITDIR=${UNITDIR:-$PREFIX/lib/systemd/system}
MANDIR=${MANDIR:-$PREFIX/share/man}
PYTHON=${PYTHON:-/usr/bin/python3}
CHECKOUT=$(cd "$(dirname "$0")/.." && pwd)

# Paths as the running system sees them; on disk each is below DESTDIR.
link_path="$PREFIX/sbin/oomkiller"
unit_path="$UNITDIR/oomkiller.service"
conf_path="$SYSCONFDIR/oomkiller/oomkiller.toml"
man_path="$MANDIR/man8/oomkiller.8"
hooks_path="$PREFIX/share/oomkiller/hooks"
HOOKS=(notify-desktop restart-unit)
venv="$DESTDIR$OPTDIR"
state="$venv/installed"
link="$DESTDIR$link_path"
unit="$DESTDIR$unit_path"
conf="$DESTDIR$conf_path"
man="$DESTDIR$man_path"
tmp=""
trap 'if [ -n "$tmp" ]; then rm -rf "$tmp"; fi' EXIT

say() { echo "${action}: $*"; }
die() { echo "${action:-install.sh}: $*" >&2; exit 1; }
checksum() { sha256sum "$1" | cut -d' ' -f1; }
for path in "$OPTDIR" "$PREFIX" "$SYSCONFDIR" "$UNITDIR" "$MANDIR"; do
  case "$path" in /*) ;; *) die "paths must be absolute: $path" ;; esac
done
systemd_here() { [ -z "$DESTDIR" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

# Folders made here, outermost first, for the record.
made_dirs=()
make_dir() {
  local d=$1 missing=()
  while [ ! -d "$d" ]; do missing=("$d" "${missing[@]}"); d=$(dirname "$d"); done
  for d in "${missing[@]}"; do mkdir -m 0755 "$d"; made_dirs+=("${d#"$DESTDIR"}"); done
}

# The package's sources, hashed: a second install with the same sources
# leaves the venv alone.
source_sum() {
  (cd "$CHECKOUT" && find pyproject.toml README.md LICENSE oomkiller -type f \
     \( -name '*.py' -o -name '*.c' -o -name '*.h' -o -name '*.toml' -o -name '*.md' -o -name LICENSE \) \
     -not -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -d' ' -f1
}

# The shipped unit, run from OPTDIR with the installed config.
render_unit() {
  sed -e "s|^ExecStart=.*|ExecStart=$OPTDIR/bin/oomkiller run --config $SYSCONFDIR/oomkiller/oomkiller.toml|" \
      -e "s|^Documentation=.*|Documentation=man:oomkiller(8)|" \
      -e "s|^# Install: .*|# Installed by make install (deploy/install.sh) from the checkout's|" \
      -e "s|^# this file at /etc/systemd/system/.*|# deploy/oomkiller.service; make uninstall removes it.|" \
      "$CHECKOUT/deploy/oomkiller.service"
}

# put FILE SOURCE MODE: install SOURCE at FILE if it differs, saying so.
put() {
  local file=$1 src=$2 mode=$3
  if [ -f "$file" ] && [ ! -L "$file" ] && cmp -s "$src" "$file"; then
    return 0
  fi
  local verb=installed
  [ -e "$file" ] && verb=updated
  make_dir "$(dirname "$file")"
  install -m "$mode" "$src" "$file"
  say "$verb $file"
}

install_all() {
  [ -e "$CHECKOUT/pyproject.toml" ] || die "run from a checkout: no $CHECKOUT/pyproject.toml"
  if [ -e "$venv/pyproject.toml" ] || [ "$(realpath -m "$venv")" = "$CHECKOUT" ]; then
    die "$venv holds a checkout: choose another OPTDIR"
  fi
  if [ -e "$venv" ] && [ ! -e "$state" ] && [ -n "$(ls -A "$venv" 2>/dev/null)" ]; then
    die "$venv exists and was not made by this script: remove it or choose another OPTDIR"
  fi
  "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null ||
    die "$PYTHON cannot make a venv: install python3-venv (make setup does)"
  [ "$(id -u)" = 0 ] || [ -n "$DESTDIR" ] || die "needs root (or a DESTDIR to stage into)"

  if [ -n "$DESTDIR" ]; then mkdir -p "$DESTDIR"; fi
  local old_source="" old_conf_sum="" old_dirs=()
  if [ -e "$state" ]; then
    old_source=$(sed -n 's/^source //p' "$state")
    old_conf_sum=$(sed -n 's/^config //p' "$state")
    mapfile -t old_dirs < <(sed -n 's/^dir //p' "$state")
  fi

  if [ ! -x "$venv/bin/python" ]; then
    make_dir "$(dirname "$venv")"
    [ -d "$venv" ] || made_dirs+=("$OPTDIR")
    "$PYTHON" -m venv --system-site-packages "$venv"
    say "made the venv $venv ($("$venv/bin/python" -V 2>&1), system site-packages visible)"
  fi
  local now_source
  now_source=$(source_sum)
  if [ "$now_source" != "$old_source" ] || ! "$venv/bin/python" -c 'import oomkiller' 2>/dev/null; then
    tmp=$(mktemp -d)
    # Built from a copy: setuptools keeps build/ in the tree it builds, and
    # an earlier build's modules would ship again.
    cp -r "$CHECKOUT/pyproject.toml" "$CHECKOUT/README.md" "$CHECKOUT/LICENSE" "$CHECKOUT/oomkiller" "$tmp/"
    "$venv/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation \
      -w "$tmp/dist" "$tmp" >/dev/null
    # dependencies: none on Python 3.11+; tomli before (pip takes the system's if it has one)
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall \
      "$tmp"/dist/oomkiller-*.whl >/dev/null
    say "installed oomkiller $("$venv/bin/oomkiller" --version | cut -d' ' -f2) into $venv"
    rm -rf "$tmp"
    tmp=""
  fi

  if [ "$(readlink "$link" 2>/dev/null)" != "$OPTDIR/bin/oomkiller" ]; then
    if [ -e "$link" ] || [ -L "$link" ]; then
      [ -L "$link" ] || die "$link exists and is not a link: not replacing it"
      die "$link links to $(readlink "$link"), not ours: not replacing it"
    fi
    make_dir "$(dirname "$link")"
    ln -s "$OPTDIR/bin/oomkiller" "$link"
    say "linked $link -> $OPTDIR/bin/oomkiller"
  fi

  local tmpunit
  tmpunit=$(mktemp)
  render_unit > "$tmpunit"
  put "$unit" "$tmpunit" 0644
  rm -f "$tmpunit"
  put "$man" "$CHECKOUT/deploy/oomkiller.8" 0644
  local hook
  for hook in "${HOOKS[@]}"; do
    put "$DESTDIR$hooks_path/$hook" "$CHECKOUT/deploy/hooks/$hook" 0755
  done

  local conf_sum=$old_conf_sum
  if [ ! -e "$conf" ]; then
    put "$conf" "$CHECKOUT/deploy/oomkiller.toml" 0644
    conf_sum=$(checksum "$conf")
  elif ! cmp -s "$conf" "$CHECKOUT/deploy/oomkiller.toml"; then
    say "kept $conf: it differs from the shipped deploy/oomkiller.toml (an operator's edits are never overwritten)"
  fi

  {
    echo "# made by deploy/install.sh; deploy/install.sh uninstall removes what it lists"
    echo "source $now_source"
    if [ -n "$conf_sum" ]; then echo "config $conf_sum"; fi
    echo "file $link_path"
    echo "file $unit_path"
    echo "file $man_path"
    for hook in "${HOOKS[@]}"; do echo "file $hooks_path/$hook"; done
    if [ -n "$conf_sum" ]; then echo "file $conf_path"; fi
    for d in "${old_dirs[@]}" "${made_dirs[@]}"; do echo "dir $d"; done | awk '!seen[$0]++'
  } > "$state.new"
  mv "$state.new" "$state"

  if systemd_here; then
    systemctl daemon-reload
    if systemctl is-active --quiet oomkiller.service; then
      say "oomkiller.service is running the old code: systemctl restart oomkiller"
    else
      say "start it at boot and now with: systemctl enable --now oomkiller"
    fi
  fi
  say "done"
}

uninstall_all() {
  if [ ! -e "$state" ]; then
    say "nothing to remove: no $state (not installed here)"
    return 0
  fi
  [ "$(id -u)" = 0 ] || [ -n "$DESTDIR" ] || die "needs root (or the DESTDIR it was staged into)"
  if systemd_here; then
    if systemctl is-enabled --quiet oomkiller.service 2>/dev/null || systemctl is-active --quiet oomkiller.service; then
      systemctl disable --now oomkiller.service >/dev/null 2>&1 || true
      say "stopped and disabled oomkiller.service"
    fi
  fi
  local conf_sum
  conf_sum=$(sed -n 's/^config //p' "$state")
  local kind path f
  while read -r kind path; do
    [ "$kind" = file ] || continue
    f="$DESTDIR$path"
    if [ "$f" = "$conf" ] && [ -e "$f" ] && [ "$(checksum "$f")" != "$conf_sum" ]; then
      say "kept $f: edited since it was installed (remove it yourself if it is not wanted)"
      continue
    fi
    if [ -e "$f" ] || [ -L "$f" ]; then
      rm -f "$f"
      say "removed $f"
    fi
  done < "$state"
  mapfile -t dirs < <(sed -n 's/^dir //p' "$state")
  rm -rf "$venv"
  say "removed $venv"
  local i
  for ((i = ${#dirs[@]} - 1; i >= 0; i--)); do
    # innermost first; a folder that now holds something else stays
    if [ -d "$DESTDIR${dirs[i]}" ] && rmdir "$DESTDIR${dirs[i]}" 2>/dev/null; then
      say "removed $DESTDIR${dirs[i]}/"
    fi
  done
  if systemd_here; then
    systemctl daemon-reload
  fi
  say "done"
}

case "$action" in
  install) install_all ;;
  uninstall) uninstall_all ;;
  *) echo "usage: deploy/install.sh install|uninstall (DESTDIR, PREFIX, SYSCONFDIR, OPTDIR, UNITDIR, MANDIR, PYTHON)" >&2
     exit 2 ;;
esac
