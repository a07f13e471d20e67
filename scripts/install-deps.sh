#!/usr/bin/env bash
# Installs what `make test` needs on a fresh Debian 12 box: the guest kernel and
# QEMU from Debian's packages, and the Go modules. Idempotent and quiet when
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

go mod download
