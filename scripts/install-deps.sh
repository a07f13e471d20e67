#!/usr/bin/env bash
# Installs what `make test` needs on a fresh Debian 12 box: the guest kernel and
# QEMU from Debian's packages, a C toolchain for `go test -race` (the race
# detector needs cgo), and the Go modules. Idempotent and quiet when
# everything is already there.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
command -v qemu-storage-daemon >/dev/null 2>&1 || need+=(qemu-system-x86)
command -v qemu-img >/dev/null 2>&1 || need+=(qemu-utils)
ls /boot/vmlinuz-* >/dev/null 2>&1 && ls -d /lib/modules/*/kernel >/dev/null 2>&1 || need+=(linux-image-amd64)
command -v mkfs.ext4 >/dev/null 2>&1 || need+=(e2fsprogs)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd) # verifies contrib/systemd units
command -v ndctl >/dev/null 2>&1 || need+=(ndctl) # qemu-tests/pmem makes devdax and fsdax namespaces in its guests
# qemu-tests/libvirt runs Debian's libvirtd and virtlogd (in /usr/sbin, which
# a non-root PATH may lack); libvirt-daemon-system also makes the
# libvirt-qemu user and group libvirt runs QEMU as.
{ command -v libvirtd >/dev/null 2>&1 || [ -x /usr/sbin/libvirtd ]; } && getent passwd libvirt-qemu >/dev/null 2>&1 || need+=(libvirt-daemon-system)
command -v virsh >/dev/null 2>&1 || need+=(libvirt-clients)
# -race needs cgo, and cgo a C compiler and the C library's headers; without
# them go test -race fails with "-race requires cgo".
command -v "$(go env CC)" >/dev/null 2>&1 || need+=(gcc)
[ -e /usr/include/stdlib.h ] || need+=(libc6-dev)

if [ ${#need[@]} -gt 0 ]; then
	echo "install-deps: installing ${need[*]}"
	$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
	$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The guest kernel image is mode 0600 on Debian; QEMU, run as a normal user,
# has to read it.
for k in /boot/vmlinuz-*; do
	[ -r "$k" ] || $SUDO chmod a+r "$k"
done

# CGO_ENABLED=0 in the environment (or go env -w) turns cgo off whatever is
# installed: say so rather than let -race fail later.
if [ "$(go env CGO_ENABLED)" != 1 ]; then
	echo "install-deps: go env CGO_ENABLED is not 1, and go test -race needs cgo: unset CGO_ENABLED (or go env -u CGO_ENABLED)" >&2
	exit 1
fi

go mod download
