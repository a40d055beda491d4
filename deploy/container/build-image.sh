#!/bin/sh
# Builds the oomkiller image from the checkout with nothing but Debian's
# package archive: a minimal bookworm base made by mmdebstrap and imported
# into podman, then the Containerfile on top of it.
#
#   sudo deploy/container/build-image.sh [TAG]      (default oomkiller:0.1.0)
#
# Needs mmdebstrap and podman (Debian: apt-get install mmdebstrap podman).
# --isolation chroot runs the build's steps without an OCI runtime, so it
# also works where crun and runc cannot start a container (crun refuses
# hybrid cgroup hosts).
set -eu
tag=${1:-oomkiller:0.1.0}
here=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d /var/tmp/oomkiller-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
mmdebstrap --variant=minbase \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
  bookworm "$work/base.tar"
podman import --change 'CMD ["/bin/bash"]' "$work/base.tar" localhost/oomkiller-base:bookworm
podman build --isolation chroot --network host --build-arg BASE=localhost/oomkiller-base:bookworm \
  -f "$here/deploy/container/Containerfile" -t "$tag" "$here"
podman image inspect "$tag" --format "$tag: {{.Size}} bytes"
