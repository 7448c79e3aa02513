#!/usr/bin/env bash
# Bind an IOAT or DSA PCI function to vfio-pci for rvhost's user-space drivers, and give it back.
#
# Usage: scripts/vfio-bind.sh BDF            bind BDF (e.g. 0000:00:04.0) to vfio-pci
#        scripts/vfio-bind.sh --unbind BDF   give BDF back to the driver it had before
#        scripts/vfio-bind.sh --help
#
# Binding uses the function's driver_override (the kernel's way to pick a driver for one
# function): the current driver is saved in $RVHOST_VFIO_STATE/BDF (default
# /run/rvhost-vfio), the function is unbound from it and probed again with vfio-pci as its
# only allowed driver. --unbind clears the override, unbinds it from vfio-pci and probes it
# again, so the kernel gives it back to its own driver (the saved one is checked).
#
# Needs root, the IOMMU on (intel_iommu=on) and the vfio-pci module. `rvhost dma list` shows
# the functions, their driver and IOMMU group. Only IOAT and DSA functions are bound (the ids
# `rvhost dma list` knows), so that a mistyped address cannot take a NIC or a disk away from
# its driver; VFIO_BIND_ANY=1 lifts that. Exit status: 0 done (or nothing to do), 1 usage,
# 2 no such device, 3 no IOMMU group, 4 not permitted, 5 vfio-pci not available, 6 the kernel
# did not bind as asked, 7 not an IOAT or DSA function.
#
# For tests: SYSFS (default /sys) is where sysfs is, MODPROBE (default modprobe) what loads a
# module.
set -u

sysfs=${SYSFS:-/sys}
state=${RVHOST_VFIO_STATE:-/run/rvhost-vfio}
modprobe=${MODPROBE:-modprobe}

usage() {
  sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
}

die() {
  local code=$1
  shift
  echo "vfio-bind: $*" >&2
  exit "$code"
}

# The driver bound to the function at $1 (a sysfs device directory), or "none".
driver_of() {
  if [ -L "$1/driver" ]; then
    basename "$(readlink "$1/driver")"
  else
    echo none
  fi
}

# Writes $1 to the sysfs file $2, failing with a clear message.
put() {
  if ! printf '%s\n' "$1" 2>/dev/null > "$2"; then
    die 4 "cannot write '$1' to $2 (run as root)"
  fi
}

# The sysfs directory of BDF $1, after checking the address and that the device exists.
device_dir() {
  local bdf=$1
  if ! [[ $bdf =~ ^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$ ]]; then
    die 1 "'$bdf' is not a PCI address (domain:bus:device.function, e.g. 0000:00:04.0)"
  fi
  local dev=$sysfs/bus/pci/devices/$bdf
  if [ ! -e "$dev" ]; then
    die 2 "no such PCI device: $bdf (rvhost dma list shows the IOAT and DSA functions)"
  fi
  echo "$dev"
}

# Whether the function at $1 is an IOAT or DSA one (Intel, ids as in `rvhost dma list`).
is_copy_engine() {
  local vendor device
  vendor=$(cat "$1/vendor" 2>/dev/null)
  device=$(cat "$1/device" 2>/dev/null)
  [ "$vendor" = 0x8086 ] || return 1
  case "$device" in
    0x2021|0x6f2[0-7]|0x6f2e|0x6f2f|0x0b00|0x0b25|0x11fb|0x1212) return 0 ;;
    *) return 1 ;;
  esac
}

bind() {
  local bdf=$1 dev drv group
  dev=$(device_dir "$bdf") || exit $?
  if [ "${VFIO_BIND_ANY:-0}" != 1 ] && ! is_copy_engine "$dev"; then
    die 7 "$bdf ($(cat "$dev/vendor" 2>/dev/null):$(cat "$dev/device" 2>/dev/null), driver $(driver_of "$dev")) is not an IOAT or DSA function: not binding it (VFIO_BIND_ANY=1 to bind it anyway)"
  fi
  if [ ! -L "$dev/iommu_group" ]; then
    die 3 "$bdf has no IOMMU group: enable the IOMMU (intel_iommu=on on the kernel command line, VT-d on in the firmware) and reboot"
  fi
  group=$(basename "$(readlink "$dev/iommu_group")")
  drv=$(driver_of "$dev")
  if [ "$drv" = vfio-pci ]; then
    echo "vfio-bind: $bdf is already bound to vfio-pci (IOMMU group $group)"
    return 0
  fi
  if [ ! -w "$dev/driver_override" ]; then
    die 4 "cannot write $dev/driver_override (run as root)"
  fi
  if [ ! -d "$sysfs/bus/pci/drivers/vfio-pci" ]; then
    if ! "$modprobe" vfio-pci >/dev/null 2>&1 || [ ! -d "$sysfs/bus/pci/drivers/vfio-pci" ]; then
      die 5 "the vfio-pci module is not loaded and could not be loaded ($modprobe vfio-pci): install the kernel's vfio modules (e.g. linux-modules-extra) or build with CONFIG_VFIO_PCI"
    fi
  fi
  mkdir -p "$state" 2>/dev/null || die 4 "cannot create $state (run as root, or set RVHOST_VFIO_STATE)"
  printf '%s\n' "$drv" > "$state/$bdf" || die 4 "cannot write $state/$bdf"
  put vfio-pci "$dev/driver_override"
  if [ "$drv" != none ]; then
    put "$bdf" "$dev/driver/unbind"
  fi
  put "$bdf" "$sysfs/bus/pci/drivers_probe"
  if [ "$(driver_of "$dev")" != vfio-pci ]; then
    # Undo: no override, and the previous driver back if the kernel takes it.
    printf '\n' > "$dev/driver_override" 2>/dev/null
    printf '%s\n' "$bdf" > "$sysfs/bus/pci/drivers_probe" 2>/dev/null
    rm -f "$state/$bdf"
    die 6 "the kernel did not bind $bdf to vfio-pci (now: $(driver_of "$dev")); see dmesg"
  fi
  echo "vfio-bind: $bdf bound to vfio-pci (was: $drv), IOMMU group $group: /dev/vfio/$group"
  local other odrv
  for other in "$sysfs/kernel/iommu_groups/$group/devices/"*; do
    [ -e "$other" ] || continue
    [ "$(basename "$other")" = "$bdf" ] && continue
    odrv=$(driver_of "$other")
    if [ "$odrv" != vfio-pci ] && [ "$odrv" != none ] && [ "$odrv" != pcieport ]; then
      echo "vfio-bind: warning: $(basename "$other") shares IOMMU group $group and is bound to $odrv: VFIO cannot open the group until it is bound to vfio-pci or to no driver" >&2
    fi
  done
}

unbind() {
  local bdf=$1 dev drv saved=""
  dev=$(device_dir "$bdf") || exit $?
  drv=$(driver_of "$dev")
  if [ "$drv" != vfio-pci ]; then
    echo "vfio-bind: $bdf is not bound to vfio-pci (driver: $drv): nothing to undo"
    return 0
  fi
  if [ -r "$state/$bdf" ]; then
    saved=$(cat "$state/$bdf")
  fi
  put "" "$dev/driver_override"
  put "$bdf" "$dev/driver/unbind"
  put "$bdf" "$sysfs/bus/pci/drivers_probe"
  rm -f "$state/$bdf" 2>/dev/null
  drv=$(driver_of "$dev")
  if [ -n "$saved" ] && [ "$saved" != none ] && [ "$drv" != "$saved" ]; then
    die 6 "$bdf was bound to $saved before; the kernel gave it to: $drv (modprobe $saved, then echo $bdf > $sysfs/bus/pci/drivers_probe)"
  fi
  echo "vfio-bind: $bdf unbound from vfio-pci, now bound to: $drv"
}

case "${1:-}" in
  -h|--help)
    usage
    exit 0
    ;;
  --unbind)
    [ $# -eq 2 ] || { usage >&2; exit 1; }
    unbind "$2"
    ;;
  ""|-*)
    usage >&2
    exit 1
    ;;
  *)
    [ $# -eq 1 ] || { usage >&2; exit 1; }
    bind "$1"
    ;;
esac
