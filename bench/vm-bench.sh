#!/usr/bin/env bash
# VM bundle benchmark (a benchmark, not a test). As root, for a small
# busybox VM: time to build the initramfs bundle and each disk bundle (erofs,
# squashfs, ext4) with kiln, time to boot each to its marker under TCG, and,
# as the baseline, the plain mkfs commands on the same unpacked tree.
#
# Usage:  bench/vm-bench.sh          (needs qemu-system-x86, a /boot/vmlinuz-*,
#                                     busybox-static, erofs-utils, squashfs-tools)
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"
KILN=$(kiln_binary "$REPO")
KERNEL=$(ls /boot/vmlinuz-* | sort | tail -1)
WORK=$(mktemp -d /tmp/kiln-vm-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
cp /bin/busybox busybox
export KILN_CACHE=$WORK/cache KILN_NO_PROGRESS=1

recipe() { # name extra-vm-lines
    cat >"$1.toml" <<TOML
name = "$1"
[vm]
kernel = { path = "$KERNEL" }
init = "/init.sh"
cmdline = "console=ttyS0 quiet"
$2
[[layers]]
files = [ { src = "busybox", dest = "/bin/busybox", mode = 0o755 } ]
symlinks = [ { path = "/bin/sh", target = "busybox" } ]
contents = [ { dest = "/init.sh", mode = 0o755, text = """#!/bin/sh
/bin/busybox echo KILN-BENCH-UP
/bin/busybox poweroff -f
""" } ]
TOML
}

secs() { local s=$EPOCHREALTIME; "$@" >/dev/null 2>&1; python3 -c "print(f'{$EPOCHREALTIME - $s:.2f}')"; }

printf '%-10s %10s %10s\n' bundle "build s" "boot s"
recipe initramfs ''
recipe erofs $'outputs = ["raw"]\nroot = "erofs"'
recipe squashfs $'outputs = ["raw"]\nroot = "squashfs"'
recipe ext4 $'outputs = ["raw"]\nroot = "ext4"'
for b in initramfs erofs squashfs ext4; do
    build=$(secs "$KILN" build "$b.toml" --out "out/$b")
    boot=$(secs "$KILN" boot "out/$b" --timeout 120 --marker KILN-BENCH-UP)
    printf '%-10s %10s %10s\n' "$b" "$build" "$boot"
done

# Baseline: the bare mkfs commands on the same tree, unpacked by hand.
mkdir -p tree/bin && cp busybox tree/bin/busybox && ln -s busybox tree/bin/sh && printf '#!/bin/sh\n' >tree/init.sh
printf '\n%-22s %10s\n' baseline "s"
printf '%-22s %10s\n' "mkfs.erofs" "$(secs mkfs.erofs -T0 -Ueeeeeeee-0000-4000-8000-000000000000 -x-1 e.img tree)"
printf '%-22s %10s\n' "mksquashfs" "$(secs mksquashfs tree s.img -noappend -mkfs-time 0 -all-time 0)"
printf '%-22s %10s\n' "mke2fs -d" "$(secs env E2FSPROGS_FAKE_TIME=0 mke2fs -q -t ext4 -d tree x.img 64M)"
printf '(kiln build includes the image build from an empty store, its layers, the initramfs and bundle.json)\n'
