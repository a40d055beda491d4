#!/usr/bin/env bash
# The guest image of the VM test tier: Debian bookworm with systemd, Debian's
# cloud kernel and its headers, python3-bpfcc, the project's dependencies and
# the contenders, on pure cgroup v2.
#
#   mmdebstrap --variant=minbase (deploy/vm/packages.txt) -> a folder
#   -> an ext4 image made with `mke2fs -d`, and the kernel and initrd taken
#   out of it for QEMU's -kernel / -initrd.
#
# The result is cached in $OOMKILLER_VM_CACHE/<key>/ (default
# /var/cache/oomkiller-vm), <key> being a hash of everything that goes in:
# this script, the package list and the files baked in (deploy/vm/guest/).
# The checkout itself is not baked in: the driver (tests/vm/run.py) passes it
# at boot time, so editing the project needs no new image. The image has an
# empty venv at /opt/oomkiller/.venv (Debian's python3, system site-packages)
# that puts /opt/oomkiller on sys.path, where the checkout lands at boot.
#
# Usage: deploy/vm/build-image.sh [--force]
# Prints the cache entry's folder (rootfs.ext4, vmlinuz, initrd.img,
# build.json, packages.lock) as its last line. Needs root. Installs its own
# host tools (mmdebstrap, e2fsprogs, QEMU) when they are missing.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${OOMKILLER_VM_CACHE:-/var/cache/oomkiller-vm}
mirror=${OOMKILLER_VM_MIRROR:-http://deb.debian.org/debian}
security_mirror=${OOMKILLER_VM_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
suite=bookworm
force=0
[ "${1:-}" = "--force" ] && force=1

log() { echo "build-image: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
  log "needs root (mmdebstrap, chroot)"
  exit 2
fi

need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v mke2fs >/dev/null || need+=(e2fsprogs)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v qemu-img >/dev/null || need+=(qemu-utils)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

key=$( { echo "$suite $mirror $security_mirror"
         cat "$here/build-image.sh" "$here/packages.txt"
         for f in $(cd "$here/guest" && ls | sort); do echo "== $f"; cat "$here/guest/$f"; done
       } | sha256sum | cut -c1-16)
entry=$cache/$key
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9         # one build at a time; a second caller then finds the entry

if [ "$force" = 0 ] && [ -s "$entry/build.json" ]; then
  log "cached: $entry"
  echo "$entry"
  exit 0
fi

tmp=$(mktemp -d "$cache/.build-$key.XXXXXX")
# --one-file-system: should mmdebstrap fail with /proc, /sys or /dev still
# mounted in the folder, the host's own are not touched.
trap 'rm -rf --one-file-system "$tmp"' EXIT
rootfs=$tmp/rootfs
packages=$(grep -v '^[[:space:]]*\(#\|$\)' "$here/packages.txt" | tr -s ' \n' ',' | sed 's/,$//')
started=$(date +%s.%N)

# Before any package is installed: a small initrd. The cloud kernel has
# virtio_pci and virtio_blk as modules and ext4 built in, so those two are all
# the initrd needs to find /dev/vda ("most" would pack ~30 MB of drivers that
# TCG then has to decompress at every boot).
setup_initramfs='mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/etc/initramfs-tools/hooks"
printf "MODULES=list\nCOMPRESS=gzip\n" > "$1/etc/initramfs-tools/conf.d/oomkiller-vm"
printf "#!/bin/sh\n[ \"\$1\" = prereqs ] && exit 0\n. /usr/share/initramfs-tools/hook-functions\nmanual_add_modules virtio_pci virtio_blk\n" > "$1/etc/initramfs-tools/hooks/oomkiller-vm"
chmod 0755 "$1/etc/initramfs-tools/hooks/oomkiller-vm"'

log "mmdebstrap $suite: $packages"
mmdebstrap --mode=root --variant=minbase --quiet \
  --include="$packages" \
  --aptopt='APT::Install-Recommends "false"' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --setup-hook="$setup_initramfs" \
  "$suite" "$rootfs" \
  "deb $mirror $suite main" "deb $mirror $suite-updates main" "deb $security_mirror $suite-security main"
debootstrapped=$(date +%s.%N)

# -- customize the folder ------------------------------------------------------
echo oomk-vm > "$rootfs/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 oomk-vm\n' > "$rootfs/etc/hosts"
echo '/dev/vda / ext4 rw,relatime 0 0' > "$rootfs/etc/fstab"
# A fixed machine id: every boot of the (copy-on-write) image is then not a
# "first boot", which would run presets and generate state on every run.
echo "${key}${key}" > "$rootfs/etc/machine-id"

install -m 0755 "$here/guest/oomkiller-vm-boot" "$rootfs/usr/local/sbin/oomkiller-vm-boot"
install -m 0644 "$here/guest/oomkiller-vm.service" "$rootfs/etc/systemd/system/oomkiller-vm.service"
systemctl --root="$rootfs" enable oomkiller-vm.service >/dev/null 2>&1
# The contenders stay installed but stopped: a test or the benchmark starts
# the one it measures. Periodic maintenance would only add noise.
for unit in earlyoom.service nohang.service nohang-desktop.service oomd.service systemd-oomd.service \
            systemd-oomd.socket apt-daily.timer apt-daily-upgrade.timer man-db.timer \
            e2scrub_all.timer e2scrub_reap.service fstrim.timer; do
  systemctl --root="$rootfs" disable "$unit" >/dev/null 2>&1 || true
done

# The project's venv, as deploy/oomkiller.service expects it: Debian's python3
# (bcc is built for it) with the system site-packages, and the checkout,
# which arrives at boot, on sys.path.
chroot "$rootfs" /usr/bin/python3 -m venv --system-site-packages --without-pip /opt/oomkiller/.venv
for site in "$rootfs"/opt/oomkiller/.venv/lib/python3*/site-packages; do
  echo /opt/oomkiller > "$site/oomkiller.pth"
done
printf '#!/bin/sh\nexec /opt/oomkiller/.venv/bin/python -m oomkiller "$@"\n' > "$rootfs/usr/local/bin/oomkiller"
chmod 0755 "$rootfs/usr/local/bin/oomkiller"

kver=$(basename "$(ls -d "$rootfs"/lib/modules/*-cloud-amd64 | sort -V | tail -n 1)")
for f in "/lib/modules/$kver/build/include" "/lib/modules/$kver/source" "/boot/vmlinuz-$kver" "/boot/initrd.img-$kver"; do
  chroot "$rootfs" test -e "$f" || { log "missing $f in the image"; exit 1; }
done
cp "$rootfs/boot/vmlinuz-$kver" "$tmp/vmlinuz"
cp "$rootfs/boot/initrd.img-$kver" "$tmp/initrd.img"
dpkg-query --admindir="$rootfs/var/lib/dpkg" -W > "$tmp/packages.lock"
rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/*

# -- the ext4 image --------------------------------------------------------------
# Room to spare for what the guest writes (its overlay takes the writes, but
# the file system must have the free blocks): the checkout, journal, results.
used_mib=$(( $(du -sm "$rootfs" | cut -f1) ))
size_mib=$(( used_mib * 5 / 4 + 1024 ))
mke2fs -q -t ext4 -m 0 -L oomk-root -d "$rootfs" "$tmp/rootfs.ext4" "${size_mib}M"
finished=$(date +%s.%N)

python3 - "$tmp/build.json" <<EOF
import json, sys
json.dump({"key": "$key", "suite": "$suite", "kernel": "$kver", "rootfs_used_mib": $used_mib,
           "image_mib": $size_mib, "mmdebstrap_s": round($debootstrapped - $started, 1),
           "total_s": round($finished - $started, 1)}, open(sys.argv[1], "w"), indent=2)
EOF
rm -rf --one-file-system "$rootfs"

# Keep only this entry: an image is a few GB of (sparse) disk.
for old in "$cache"/*; do
  [ -d "$old" ] && [ "$old" != "$entry" ] && rm -rf "$old"
done
rm -rf "$entry"
mv "$tmp" "$entry"
trap - EXIT
log "built $entry in $(python3 -c "print(round($finished - $started, 1))") s (kernel $kver, ${used_mib} MiB used, ${size_mib} MiB image)"
echo "$entry"
