#!/usr/bin/env bash
# Runs a shell command as if the OSTree deployment DEPLOYMENT were booted (root only).
# Usage: tests/fake-booted.sh SYSROOT DEPLOYMENT BIN_DIR 'COMMAND'
#
# libostree 2022.7 counts a deployment as booted when /run/ostree-booted exists, the sysroot
# opened as "/" has the same device and inode as "/", and so has the deployment directory
# (../shared/reference/ostree-on-debian.md section 3). So: a private mount and PID namespace,
# the host's /usr, /etc and /dev bound over the deployment's, the physical sysroot on
# /sysroot, its /boot and the stateroot's var, a tmpfs /run with ostree-booted, BIN_DIR on
# /tmp/bin, then chroot into the deployment and run COMMAND with bash. The deployment tree
# needs the usual top-level directories and the symlinks ostree -> sysroot/ostree,
# lib -> usr/lib, lib64 -> usr/lib64, bin -> usr/bin.
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "fake-booted.sh: needs root (mount and PID namespaces)" >&2; exit 1; }
sysroot=$(realpath "$1")
deployment=$(realpath "$2")
bin=$(realpath "$3")
command=$4
# .../ostree/deploy/OS/deploy/CSUM.SERIAL
os=$(basename "$(dirname "$(dirname "$deployment")")")
export SYSROOT=$sysroot D=$deployment BIN=$bin OS=$os COMMAND=$command
exec unshare -m -p -f --propagation private bash -c '
    set -euo pipefail
    mount --bind /usr "$D/usr"
    mount --bind /etc "$D/etc"
    mount --bind /dev "$D/dev"
    mount -t proc proc "$D/proc"
    mount -t tmpfs tmpfs "$D/run"
    touch "$D/run/ostree-booted"
    mount --bind "$SYSROOT" "$D/sysroot"
    mount --bind "$SYSROOT/boot" "$D/boot"
    mount --bind "$SYSROOT/ostree/deploy/$OS/var" "$D/var"
    mkdir -p "$D/tmp/bin"
    mount --bind "$BIN" "$D/tmp/bin"
    exec chroot "$D" /bin/bash -c "$COMMAND"'
