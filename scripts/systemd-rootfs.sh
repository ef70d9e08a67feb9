#!/usr/bin/env bash
# Makes, once, the Debian 12 root filesystem that the "systemd host in a box" tests boot
# with systemd as PID 1 (tests/harness/systemd), and prints its path on stdout.
#
# The tree is cached under $BENTO_TEST_CACHE (default /var/cache/bento-tests) and never
# written to by a test (each test boots an overlay of it). Two marker files say how far a
# run got: `base` (debootstrap finished, with its recipe) and `complete` (configured, with
# the whole recipe). A tree without `base` (an interrupted run) or made by another recipe
# is made again; one whose configuration changed is only configured again. Several tests
# starting at once wait on one lock; one of them builds.
#
# The Debian mirror is the one of this machine's apt sources (the suite `bookworm`, deb822
# or one-line format), or $BENTO_DEBIAN_MIRROR. `--mirror` only prints it (reading the
# sources under $BENTO_APT_ETC, default /etc/apt). Needs root and debootstrap
# (scripts/setup.sh installs it).
set -euo pipefail

cache=${BENTO_TEST_CACHE:-/var/cache/bento-tests}
name=debian-bookworm-systemd
dir=$cache/$name
suite=bookworm
# nix-bin: the box runs Debian's own Nix 2.8, as this machine does (same package, same
# mirror), on a store of its own that each test binds on /nix. libdbi-perl provides the
# virtual perl-dbdabi-94 that nix-bin needs and that debootstrap cannot resolve alone.
packages=systemd,systemd-sysv,dbus,iproute2,nix-bin,libdbi-perl
base_recipe="debootstrap --variant=minbase --include=$packages $suite"
# Bump when configure() changes: cached trees are then configured again (not rebuilt).
recipe="$base_recipe; configure 2"

apt_etc=${BENTO_APT_ETC:-/etc/apt}

die() { echo "systemd-rootfs: $*" >&2; exit 1; }

# The first URI of an enabled `deb` source for $suite in the apt sources.
apt_mirror() {
  local f
  for f in "$apt_etc/sources.list" "$apt_etc"/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    # deb [options] URI suite components...
    awk -v suite="$suite" '
      $1 == "deb" {
        i = 2
        if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
        if ($(i + 1) == suite) { print $i; exit }
      }' "$f"
  done
  for f in "$apt_etc"/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # deb822: stanzas separated by blank lines, `Field: value` lines, `#` comments,
    # continuation lines (a key block) starting with white space.
    awk -v suite="$suite" '
      BEGIN { RS = ""; FS = "\n" }
      {
        delete v
        for (l = 1; l <= NF; l++) {
          if ($l ~ /^[ \t]/ || $l ~ /^#/ || $l !~ /:/) continue
          k = tolower(substr($l, 1, index($l, ":") - 1))
          v[k] = substr($l, index($l, ":") + 1)
        }
        if (tolower(v["enabled"]) ~ /no/) next
        if ((" " v["types"] " ") !~ /[ \t]deb[ \t]/) next
        if ((" " v["suites"] " ") !~ ("[ \t]" suite "[ \t]")) next
        split(v["uris"], u, /[ \t]+/)
        for (j in u) if (u[j] != "") { print u[j]; exit }
      }' "$f"
  done
}

mirror() {
  local m=${BENTO_DEBIAN_MIRROR:-$(apt_mirror | head -n 1)}
  [ -n "$m" ] || die "no enabled 'deb' source for $suite in $apt_etc/sources.list{,.d/}; set BENTO_DEBIAN_MIRROR"
  echo "$m"
}

if [ "${1:-}" = --mirror ]; then
  mirror
  exit 0
fi

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot)"
mkdir -p "$cache"
exec 9>"$cache/$name.lock"
flock 9

# Idempotent: run on a fresh tree and again when its recipe changes.
configure() {
  local root=$1 unit
  # The downloaded packages are not needed once installed.
  rm -f "$root"/var/cache/apt/archives/*.deb
  # Units that only slow down or fail in a box with no console, no hardware and no network
  # configuration of its own (the test gives eth0 its address from outside).
  for unit in console-getty.service getty@.service systemd-networkd-wait-online.service \
    apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit"
  done
  # debootstrap copies this machine's hostname; without one the box keeps the machine
  # name systemd-nspawn gives it. An empty machine id gets a fresh one at each boot.
  rm -f "$root/etc/hostname"
  : >"$root/etc/machine-id"
  # Nix as on this machine (scripts/nix-env.sh): single-user root, offline, no sandbox.
  mkdir -p "$root/nix" "$root/etc/nix"
  printf '%s\n' 'experimental-features = nix-command flakes' 'sandbox = false' \
    'build-users-group =' 'substituters =' 'warn-dirty = false' >"$root/etc/nix/nix.conf"
}

if [ -f "$dir/complete" ] && [ "$(cat "$dir/complete")" = "$recipe" ]; then
  echo "$dir/rootfs"
  exit 0
fi
if [ -f "$dir/base" ] && [ "$(cat "$dir/base")" = "$base_recipe" ]; then
  rm -f "$dir/complete"
  configure "$dir/rootfs"
  echo "$recipe" >"$dir/complete"
  echo "$dir/rootfs"
  exit 0
fi
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] ||
  die "debootstrap is missing; run scripts/setup.sh"
mirror=$(mirror)

# An interrupted debootstrap can leave /proc or /sys mounted inside the tree: unmount
# them before removing it, and never cross into another file system.
if [ -d "$dir" ]; then
  awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
    while read -r m; do umount -l "$m"; done
  rm -rf --one-file-system "$dir"
fi
mkdir -p "$dir"

echo "systemd-rootfs: building $dir/rootfs from $mirror (once; a few minutes)" >&2
start=$(date +%s)
if ! PATH=/usr/sbin:/sbin:$PATH debootstrap --variant=minbase --include="$packages" \
  "$suite" "$dir/rootfs" "$mirror" >"$dir/debootstrap.log" 2>&1; then
  tail -n 20 "$dir/debootstrap.log" >&2
  die "debootstrap failed (log: $dir/debootstrap.log)"
fi

echo "$base_recipe" >"$dir/base"
configure "$dir/rootfs"
echo "$recipe" >"$dir/complete"
echo "systemd-rootfs: built in $(($(date +%s) - start)) s, $(du -sh "$dir/rootfs" | cut -f1)" >&2
echo "$dir/rootfs"
