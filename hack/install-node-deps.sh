#!/usr/bin/env bash
# Fetches what the real-node harness (test/nodes) runs besides the binaries
# built in hack/tools, from Debian's packages, without installing any of
# them on this machine (apt-get download + dpkg -x):
#
#   DEST/bin/       containerd, containerd-shim-runc-v2, ctr (containerd) and runc
#   DEST/rootfs/overlayd-base/
#                   the runtime stage of the Dockerfile: bookworm's iptables and
#                   iproute2 with what they depend on, and the few packages of
#                   debian:bookworm-slim the image's scripts use (dash,
#                   coreutils, grep, dpkg's update-alternatives); iptables'
#                   postinst is run in it, as dpkg would, to register the
#                   nft/legacy alternatives the entrypoint switches between
#   DEST/rootfs/busybox/
#                   busybox-static, for test pods (sh, sleep, ping)
#   DEST/packages.txt
#                   the packages and versions taken
#
#   hack/install-node-deps.sh DEST
#
# Replaces DEST as a whole (make runs it when this script changes). Needs root.
set -euo pipefail

dest=${1:?usage: $0 DEST}
if [ "$(id -u)" -ne 0 ]; then
  echo "$0: needs root (dpkg -x keeps ownership, chroot runs iptables' postinst)" >&2
  exit 1
fi

# The packages the image is made of.
image_pkgs=(iptables iproute2 dash coreutils grep dpkg)
node_pkgs=(containerd runc busybox-static)

# A fresh machine may have no package lists yet.
if ! apt-cache show containerd >/dev/null 2>&1; then
  apt-get update -qq
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/overlayd-node-deps.XXXXXX")
trap 'rm -rf "$work"' EXIT
chmod 0755 "$work"
mkdir "$work/debs"
chmod 0777 "$work/debs" # apt-get download drops to the _apt user

# The whole dependency closure of the image's packages, as apt resolves it
# for an empty system (not against this machine's installed packages).
: >"$work/empty-status"
mapfile -t closure < <(apt-get install -s --no-install-recommends \
  -o Dir::State::status="$work/empty-status" "${image_pkgs[@]}" 2>/dev/null |
  awk '/^Inst / {print $2}' | sort -u)
if [ ${#closure[@]} -lt ${#image_pkgs[@]} ]; then
  echo "$0: apt resolved only ${closure[*]} for ${image_pkgs[*]}" >&2
  exit 1
fi

(cd "$work/debs" && apt-get download -qq "${node_pkgs[@]}" "${closure[@]}")

stage=$dest.tmp
rm -rf "$stage"
mkdir -p "$stage/bin" "$stage/rootfs/overlayd-base" "$stage/rootfs/busybox"

# containerd and runc: their binaries only.
for p in containerd runc; do
  mkdir "$work/$p"
  dpkg -x "$work"/debs/"$p"_*.deb "$work/$p"
done
cp "$work"/containerd/usr/bin/{containerd,containerd-shim-runc-v2,ctr} "$stage/bin/"
cp "$work"/runc/usr/sbin/runc "$stage/bin/"

# The overlayd image's Debian part.
base=$stage/rootfs/overlayd-base
for p in "${closure[@]}"; do
  dpkg -x "$work"/debs/"$p"_*.deb "$base"
done
mkdir -p "$base/var/lib/dpkg/alternatives" "$base/etc/alternatives" "$base/tmp" "$base/run" "$base/proc" "$base/sys" "$base/dev"
chmod 1777 "$base/tmp"
dpkg -e "$work"/debs/iptables_*.deb "$work/iptables-control"
cp "$work/iptables-control/postinst" "$base/iptables.postinst"
chroot "$base" /bin/sh /iptables.postinst configure >/dev/null
rm "$base/iptables.postinst"

# busybox: the static binary and the applets test pods use.
bb=$stage/rootfs/busybox
mkdir "$work/busybox"
dpkg -x "$work"/debs/busybox-static_*.deb "$work/busybox"
mkdir -p "$bb/bin" "$bb/tmp" "$bb/proc" "$bb/sys" "$bb/dev" "$bb/etc"
cp "$work/busybox/bin/busybox" "$bb/bin/busybox"
for applet in sh sleep ping ip cat ls wget nc hostname; do
  ln -s busybox "$bb/bin/$applet"
done
chmod 1777 "$bb/tmp"

for deb in "$work"/debs/*.deb; do
  dpkg-deb -f "$deb" Package Version | paste -sd' '
done | sed 's/^Package: //; s/ Version: / /' | sort >"$stage/packages.txt"

rm -rf "$dest"
mv "$stage" "$dest"
echo "node dependencies in $dest: $(wc -l <"$dest/packages.txt") Debian packages"
