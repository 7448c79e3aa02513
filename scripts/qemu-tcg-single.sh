#!/usr/bin/env bash
# qemu-system-x86_64 with single-threaded TCG: every "-accel tcg" argument becomes
# "-accel tcg,thread=single"; everything else is passed through unchanged.
#
# For guests with more than one vCPU on this two-core machine. QEMU 7.2's multi-threaded TCG
# runs one host thread per vCPU; with rvhost polling on one of the two cores, a 4-vCPU guest
# has been seen stuck at boot (soft lockup in cryptomgr_test, no init after 120 s), and
# 2-vCPU guests corrupted their own memory after migration (README, tests/migration.rs).
# Single-threaded TCG runs the vCPUs in turn on one thread and has shown neither.
#
# Use: VHG_QEMU=scripts/qemu-tcg-single.sh ../shared/scripts/qemu_vhost_guest.sh ...
set -euo pipefail
args=()
prev=
for a in "$@"; do
    if [ "$prev" = -accel ] && [ "$a" = tcg ]; then
        a=tcg,thread=single
    fi
    args+=("$a")
    prev=$a
done
exec "${RVHOST_QEMU:-qemu-system-x86_64}" "${args[@]}"
