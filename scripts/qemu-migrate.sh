#!/usr/bin/env bash
# qemu-migrate.sh - live migration (precopy, or postcopy with --postcopy) of a QEMU Linux
# guest from one rvhost backend to another, with a ping stream running across the move.
#
# Two QEMU processes on this machine, each with its own `rvhost fwd --mode icmpecho` backend on
# its own vhost-user socket: the source boots the guest, the destination waits with
# `-incoming unix:...`. The guest (the kernel qemu_vhost_guest.sh caches, with an /init of its
# own) brings eth0 up and pings the backend every --interval seconds for --stream seconds;
# while it does, the source is migrated over QMP (migrate-set-capabilities,
# migrate-set-parameters, migrate, query-migrate until completed). The guest ends the stream on
# the destination, pings with 1400-byte frames, and prints a summary on its serial console.
#
# Usage: scripts/qemu-migrate.sh [options]
#   -m, --mode MODE        client: QEMU is the vhost-user client (rvhost listens)
#                          server: QEMU listens (server=on), rvhost connects (--client)
#                          (default: client)
#   -M, --mem MEM          memfd: memory-backend-memfd,share=on
#                          hugepages: memory-backend-file,mem-path=/dev/hugepages,share=on
#                          (default: memfd)
#       --precopy          precopy migration (the default)
#       --postcopy         postcopy: both backends run with `rvhost fwd --postcopy`
#                          (PAGEFAULT offered), postcopy-ram is set on both QEMUs, and
#                          migrate-start-postcopy is sent once the first pass has started
#                          (--postcopy-after); the destination runs the guest while its
#                          memory still arrives, the backend's faults served by QEMU
#       --packed           packed virtqueues: both backends run `rvhost fwd --packed`
#                          (VIRTIO_F_RING_PACKED offered) and both QEMUs' virtio-net-pci get
#                          packed=on; the run fails unless the guest and both backends
#                          negotiated RING_PACKED (bit 34). With any --copy (the async copy
#                          path runs packed rings too)
#       --postcopy-after S seconds between `migrate` and `migrate-start-postcopy` (default:
#                          0: at once, QEMU switches as its first RAM pass runs; a hugepage
#                          guest may finish precopy before a later switch)
#   -b, --rvhost PATH      the rvhost binary (default: $RVHOST_BIN, else rvhost in PATH)
#   -a, --accel A          tcg | tcg,thread=single | tcg,thread=multi | kvm (default: tcg,
#                          which QEMU runs multi-threaded with more than one vCPU)
#       --guest-mem MB     guest memory (default: 256)
#   -i, --interval SECS    ping interval of the stream (default: 0.01)
#   -s, --stream SECS      length of the stream (default: 12)
#   -w, --migrate-after S  seconds between the stream's start and the migration (default: 2)
#   -l, --max-loss N       most stream replies that may be lost (default: 0: with the
#                          backend's writes logged, precopy over loopback loses none)
#       --announce HOW     how the destination announces the guest's MAC after the move:
#                          guest: the guest driver (VIRTIO_NET_F_GUEST_ANNOUNCE, the default)
#                          rarp: virtio-net-pci guest_announce=off, so QEMU sends SEND_RARP
#                          and the destination backend injects a RARP frame on its dequeue
#                          (which icmpecho counts received and does not answer)
#   -q, --queues N         queue pairs (QEMU mq=on and -smp N, rvhost fwd --queues N); the
#                          guest's ping runs on one CPU, so one pair carries the stream
#                          (default: 1)
#       --smp N            guest vCPUs (QEMU -smp; default: the queue pairs), e.g. one
#                          queue pair with 2 vCPUs, to tell a multi-queue problem from a
#                          multi-vCPU one
#       --lcores LIST      CPUs of both backends' lcores (default: 0)
#       --copy MODE        both backends' copy mode (rvhost fwd --copy: cpu, or
#                          soft[,threshold=N] for the async path with the software DMA
#                          engine, whose writes are logged once the engine has done them)
#                          (default: cpu)
#   -t, --timeout SECS     hard limit for the whole run (default: 180)
#   -k, --keep             keep the run's directory when it passes (it is always kept on a
#                          failure)
#   -h, --help
#
# Environment (optional): VHG_CACHE (/tmp/vhost-guest: the kernel and initramfs that
# ../shared/scripts/qemu_vhost_guest.sh caches; that script is run once, as root, to fill the
# cache when it is empty), VHG_SCRIPT (that script's path), VHG_HUGEPAGES_DIR (/dev/hugepages),
# RVHOST_BIN, MIG_KEEP_RUNS (10 failed runs kept).
#
# The run passes when: the migration completes; the guest's stream started on the source and
# ended on the destination; it lost at most --max-loss replies (plus, with --copy soft, one per
# request the source had in its async dequeue channel when QEMU stopped the rings: their
# replies have no ring left to go to) and got no duplicate (a
# receive buffer that reached the destination with old bytes); every 1400-byte ping after the
# move was answered; both backends answered traffic (each `FINAL` line has tx_pkts == rx_pkts
# > 0, no drop; with --announce rarp the destination got SEND_RARP and left 1..N injected RARP
# frames unanswered); QEMU made more than one dirty-sync pass; neither backend found a vring base
# that disagrees with the used index in guest memory (split rings: the rings as migrated must
# match the source's GET_VRING_BASE); every vring's SET_VRING_BASE on the destination equals
# the source's last GET_VRING_BASE (their log lines), a packed base having its used position
# equal to its available one (bits 16-31 = bits 0-15: no chain in flight at the stop); the
# guest driver and both backends negotiated RING_PACKED (bit 34) exactly when --packed asks
# for it; and the source backend set bits in QEMU's dirty log (its "dirty
# log ... released: N pages marked" line, N > 0): a backend that wrote guest memory without
# logging fails here for certain (the guest sees it only when a reply was in flight at the
# switch-over: a lost or duplicate reply).
#
# Output ends with one machine-readable line:
#   MIGRATE result=PASS|FAIL mode=M mem=M queues=N transmitted=N received=N lost=N dups=N
#     lost_ranges=A-B,C|none
#     downtime_ms=N total_ms=N setup_ms=N dirty_syncs=N pages_marked=N big=N/10
#     announce=guest|rarp send_rarp=N rarp_frames=N migration=precopy|postcopy
#     postcopy_requests=N backend_faults=N ring=split|packed guest_packed=0|1
#     in_hand=N (requests in the source's async dequeue channel at its stop: replies that
#     may be lost, beyond --max-loss)
#     guest_resent=N (echo requests the guest's stack sent beyond ping's count: a guest
#     whose own memory went back on the destination; its duplicates fail the run as such)
#     vring_bases=V:0xNUM,...
#
# Exit status: 0 = PASS, 1 = FAIL, 2 = setup error (or an unsupported combination such as
#              --postcopy with --copy other than cpu).
# Each run's files (serial consoles, QEMU and backend logs, QMP answers) are in
# $VHG_CACHE/migrate-runs/<id>/, removed on a pass unless --keep.
set -uo pipefail

CACHE=${VHG_CACHE:-/tmp/vhost-guest}
HERE=$(cd "$(dirname "$0")" && pwd)
SHARED_SCRIPT=${VHG_SCRIPT:-$HERE/../../shared/scripts/qemu_vhost_guest.sh}
HUGEDIR=${VHG_HUGEPAGES_DIR:-/dev/hugepages}
RVHOST=${RVHOST_BIN:-}
MODE=client
MEM=memfd
MIGRATION=precopy
RING="split"
ACCEL=tcg
GUEST_MEM_MB=256
INTERVAL=0.01
STREAM=12
MIGRATE_AFTER=2
POSTCOPY_AFTER=0
MAX_LOSS=0
ANNOUNCE=guest
QUEUES=1
SMP=""
LCORES=0
COPY=cpu
TIMEOUT=180
KEEP=0
KEEP_RUNS=${MIG_KEEP_RUNS:-10}
QEMU=${VHG_QEMU:-qemu-system-x86_64}
GUEST_IP=192.0.2.2/24
PEER_IP=192.0.2.1
MAC=52:54:00:12:34:56
BIG=1400

usage() { sed -n '2,/^set -uo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }
log() { printf '[mig %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "SETUP ERROR: $*"; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        -m|--mode) MODE=${2:-}; shift ;;
        -M|--mem) MEM=${2:-}; shift ;;
        --precopy) MIGRATION=precopy ;;
        --postcopy) MIGRATION=postcopy ;;
        --postcopy-after) POSTCOPY_AFTER=${2:-}; shift ;;
        --packed) RING=packed ;;
        -b|--rvhost) RVHOST=${2:-}; shift ;;
        -a|--accel) ACCEL=${2:-}; shift ;;
        --guest-mem) GUEST_MEM_MB=${2:-}; shift ;;
        -i|--interval) INTERVAL=${2:-}; shift ;;
        -s|--stream) STREAM=${2:-}; shift ;;
        -w|--migrate-after) MIGRATE_AFTER=${2:-}; shift ;;
        -l|--max-loss) MAX_LOSS=${2:-}; shift ;;
        --announce) ANNOUNCE=${2:-}; shift ;;
        -q|--queues) QUEUES=${2:-}; shift ;;
        --smp) SMP=${2:-}; shift ;;
        --lcores) LCORES=${2:-}; shift ;;
        --copy) COPY=${2:-}; shift ;;
        -t|--timeout) TIMEOUT=${2:-}; shift ;;
        -k|--keep) KEEP=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$MODE" in client|server) ;; *) die "bad --mode '$MODE' (client or server)" ;; esac
case "$MEM" in memfd|hugepages) ;; *) die "bad --mem '$MEM' (memfd or hugepages)" ;; esac
case "$ACCEL" in tcg|tcg,thread=single|tcg,thread=multi|kvm) ;; *) die "bad --accel '$ACCEL' (tcg, tcg,thread=single|multi, or kvm)" ;; esac
case "$ANNOUNCE" in guest|rarp) ;; *) die "bad --announce '$ANNOUNCE' (guest or rarp)" ;; esac
case "$MIGRATION" in
    precopy) ;;
    postcopy)
        case "${COPY%%,*}" in cpu) ;; *) die "--postcopy needs --copy cpu (rvhost refuses postcopy on the async copy path: it populates and locks guest memory)" ;; esac
        ;;
esac
SMP=${SMP:-$QUEUES}
for v in GUEST_MEM_MB MAX_LOSS TIMEOUT QUEUES SMP; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
for v in INTERVAL STREAM MIGRATE_AFTER POSTCOPY_AFTER; do
    [[ ${!v} =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "$v must be a number of seconds (got '${!v}')"
done
COUNT=$(awk -v s="$STREAM" -v i="$INTERVAL" 'BEGIN { n = int(s / i + 0.5); print (n < 1 ? 1 : n) }')

[ "$(id -u)" = 0 ] || die "run as root (the guest's initramfs has device nodes; the kernel cache is filled as root)"
if [ -z "$RVHOST" ]; then RVHOST=$(command -v rvhost || true); fi
[ -n "$RVHOST" ] && [ -x "$RVHOST" ] || die "no rvhost binary (give --rvhost PATH or RVHOST_BIN)"
command -v "$QEMU" >/dev/null || die "$QEMU not found (apt-get install qemu-system-x86)"
command -v perl >/dev/null || die "perl not found (the QMP client)"
BUSYBOX=$(dpkg -L busybox-static 2>/dev/null | grep -m1 '/busybox$')
[ -x "${BUSYBOX:-}" ] || die "static busybox not found (apt-get install busybox-static)"

mkdir -p "$CACHE/migrate-runs" || die "cannot create $CACHE/migrate-runs"
RUN_ID=$(date +%Y%m%d-%H%M%S)-$$
W="$CACHE/migrate-runs/$RUN_ID"
mkdir -p "$W" || die "mkdir $W"
ls -d "$CACHE"/migrate-runs/*/ 2>/dev/null | head -n -"$KEEP_RUNS" | xargs -r rm -rf
T0=$(date +%s)
DEADLINE=$((T0 + TIMEOUT))

# ------------------------------------------------------------------ the guest
# The kernel and the base initramfs (busybox, virtio modules, their load order) come from
# qemu_vhost_guest.sh's cache; the script is run once to fill it (it builds both before it
# starts anything, then fails at once on a backend that does nothing).
find_guest() {
    local done_file
    done_file=$(ls -t "$CACHE"/kernel/*/.done 2>/dev/null | head -1)
    KVMLINUZ=""
    [ -n "$done_file" ] && KVMLINUZ=$(ls "${done_file%/.done}"/x/boot/vmlinuz-* 2>/dev/null | head -1)
    BASE_INITRD="$CACHE/initramfs.cpio.gz"
    [ -n "$KVMLINUZ" ] && [ -f "$KVMLINUZ" ] && [ -f "$BASE_INITRD" ]
}
if ! find_guest; then
    [ -f "$SHARED_SCRIPT" ] || die "no cached guest in $CACHE and no $SHARED_SCRIPT to build one"
    log "filling $CACHE with $SHARED_SCRIPT (kernel download, initramfs)"
    VHG_CACHE=$CACHE VHG_MEM=memfd VHG_SOCK="$W/populate.sock" bash "$SHARED_SCRIPT" \
        --accel tcg --mode client --no-reconnect --timeout 30 --backend 'exit 0' \
        >"$W/populate.log" 2>&1
    find_guest || die "$SHARED_SCRIPT did not leave a kernel and initramfs in $CACHE (see $W/populate.log)"
fi
log "guest kernel: $KVMLINUZ"

write_init() {
cat > "$1" <<'GUEST_INIT'
#!/bin/busybox sh
# qemu-migrate.sh's guest: eth0 up, a ping stream across the migration, a 1400-byte ping
# check after it, a summary on the serial console ("VHOST-MIG:" lines), power off.
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
/bin/busybox --install -s /bin
exec </dev/console >/dev/console 2>&1

say() { echo "VHOST-MIG: $*"; }
finish() {
    say "RESULT=$1${2:+ ($2)}"
    sync
    poweroff -f
    sleep 2
    reboot -f
}
fail() { dmesg | tail -n 25; finish FAIL "$*"; }

IP=192.0.2.2/24 PEER=192.0.2.1 COUNT=1200 INTERVAL=0.01 BIG=1400
for w in $(cat /proc/cmdline); do
    case "$w" in
        mig.ip=*) IP=${w#mig.ip=} ;;
        mig.peer=*) PEER=${w#mig.peer=} ;;
        mig.count=*) COUNT=${w#mig.count=} ;;
        mig.interval=*) INTERVAL=${w#mig.interval=} ;;
        mig.big=*) BIG=${w#mig.big=} ;;
    esac
done
say "init started: kernel $(uname -r) uptime $(cut -d' ' -f1 /proc/uptime)s"
for m in $(cat /lib/modules/load.order); do
    insmod /lib/modules/$m.ko || fail "insmod $m"
done
i=0
while [ ! -e /sys/class/net/eth0 ]; do
    i=$((i + 1)); [ $i -gt 100 ] && fail "no eth0 after 10s"
    sleep 0.1
done
if [ -w /proc/sys/net/ipv6/conf/all/disable_ipv6 ]; then
    echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6
    echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6
    echo 1 > /proc/sys/net/ipv6/conf/eth0/disable_ipv6
fi
ip link set lo up
ip link set eth0 up || fail "link up"
ip addr add "$IP" dev eth0 || fail "addr add"
D=/sys/class/net/eth0
say "eth0 mac=$(cat $D/address) virtio_features=$(cat $D/device/features 2>/dev/null)"
n=0
while [ "$(cat $D/carrier 2>/dev/null)" != 1 ]; do
    n=$((n + 1)); [ $n -gt 300 ] && fail "no carrier"
    sleep 0.1
done
arping -c 3 -w 5 -I eth0 "$PEER" > /tmp/arping.out 2>&1
r=$(sed -n 's/^Received \([0-9]*\) response.*/\1/p' /tmp/arping.out)
say "arping sent=3 replies=${r:-0}"
[ "${r:-0}" -gt 0 ] || fail "no ARP reply from $PEER"

# The stream: one echo request every INTERVAL seconds, sequence numbers from 0.
say "STREAM-START count=$COUNT interval=$INTERVAL uptime=$(cut -d' ' -f1 /proc/uptime)"
ping -c "$COUNT" -i "$INTERVAL" -W 2 "$PEER" > /tmp/stream.out 2>&1
say "STREAM-END uptime=$(cut -d' ' -f1 /proc/uptime)"
tx=$(sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p' /tmp/stream.out)
awk -v tx="${tx:-0}" '
    /seq=/ {
        match($0, /seq=[0-9]+/)
        s = substr($0, RSTART + 4, RLENGTH - 4) + 0
        if (s in seen) dup++; else { seen[s] = 1; rx++ }
    }
    END {
        out = ""; lost = 0; i = 0
        while (i < tx) {
            if (i in seen) { i++; continue }
            j = i
            while (j + 1 < tx && !((j + 1) in seen)) j++
            out = out (out == "" ? "" : ",") (i == j ? i : i "-" j)
            lost += j - i + 1
            i = j + 1
        }
        printf "VHOST-MIG: STREAM transmitted=%d received=%d lost=%d dups=%d lost_ranges=%s\n", tx, rx, lost, dup, (out == "" ? "none" : out)
    }' /tmp/stream.out
tail -n 3 /tmp/stream.out
# What the guest's stack counted (a reply the device delivered but the stack dropped, say for
# a bad checksum, shows here), and around each lost reply the round trips of the replies
# before and after it: diagnostics, not checked.
snmp() { # protocol field...: "field=value" from /proc/net/snmp's header and value lines
    awk -v p="$1:" -v want=" $* " '$1 == p { if (!h) { for (i = 2; i <= NF; i++) n[i] = $i; h = 1 } else for (i = 2; i <= NF; i++) if (index(want, " " n[i] " ")) printf "%s_%s=%s ", p, n[i], $i }' /proc/net/snmp | tr -d :
}
say "NETSTAT $(snmp Ip InReceives InHdrErrors InAddrErrors InDiscards)$(snmp Icmp InMsgs InErrors InCsumErrors InEchoReps OutEchos)$(snmp Udp InCsumErrors)eth0 rx_packets=$(cat $D/statistics/rx_packets) rx_dropped=$(cat $D/statistics/rx_dropped) rx_errors=$(cat $D/statistics/rx_errors) tx_packets=$(cat $D/statistics/tx_packets)"
grep -o 'seq=[0-9]* ttl=[0-9]* time=[0-9.]*' /tmp/stream.out | awk '
    { split($1, a, "="); split($3, t, "="); rt[a[2] + 0] = t[2] }
    END {
        for (s in rt) if (s + 0 > max) max = s + 0
        for (s = 1; s <= max; s++)
            if (!(s in rt) && (s - 1) in rt) {
                e = s; while (e < max && !(e in rt)) e++
                printf "VHOST-MIG: AROUND-LOSS seq %d-%d: seq %d time=%s ms, seq %d time=%s ms\n", s, e - 1, s - 1, rt[s - 1], e, (e in rt ? rt[e] : "?")
            }
    }'

# After the move: frames that need more than one small buffer.
ping -c 10 -i 0.1 -W 5 -s "$BIG" "$PEER" > /tmp/big.out 2>&1
cat /tmp/big.out
b=$(sed -n 's/.* \([0-9]*\) packets received.*/\1/p' /tmp/big.out)
say "BIG size=$BIG sent=10 received=${b:-0}"
[ "${b:-0}" = 10 ] || fail "1400-byte pings lost after the migration"
finish PASS
GUEST_INIT
}

build_initrd() {
    local root="$W/initramfs.root"
    mkdir -p "$root" || die "mkdir $root"
    (cd "$root" && gzip -dc "$BASE_INITRD" | "$BUSYBOX" cpio -i -d 2>/dev/null) \
        || die "cannot unpack $BASE_INITRD"
    [ -f "$root/lib/modules/load.order" ] || die "$BASE_INITRD has no lib/modules/load.order"
    write_init "$root/init" && chmod 755 "$root/init"
    (cd "$root" && find . | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc -R 0:0 2>/dev/null | gzip -1) \
        > "$W/initramfs.cpio.gz" || die "cpio failed"
    rm -rf "$root"
    INITRD="$W/initramfs.cpio.gz"
}
build_initrd

# ------------------------------------------------------------------ memory
if [ "$MEM" = hugepages ]; then
    grep -q " $HUGEDIR hugetlbfs " /proc/mounts || die "hugetlbfs is not mounted at $HUGEDIR (scripts/setup-hugepages.sh)"
    HP_KB=$(awk '/^Hugepagesize:/ { print $2 }' /proc/meminfo)
    HP_FREE=$(awk '/^HugePages_Free:/ { print $2 }' /proc/meminfo)
    HP_NEED=$((2 * GUEST_MEM_MB * 1024 / ${HP_KB:-2048}))
    [ "${HP_FREE:-0}" -ge "$HP_NEED" ] || die "two guests need $HP_NEED free hugepages, have ${HP_FREE:-0}"
    MEMOBJ="memory-backend-file,id=mem,size=${GUEST_MEM_MB}M,mem-path=$HUGEDIR,share=on,prealloc=on"
else
    MEMOBJ="memory-backend-memfd,id=mem,size=${GUEST_MEM_MB}M,share=on"
fi

# ------------------------------------------------------------------ processes
declare -A PID=()
alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
wait_gone() { # pid seconds
    local i=0
    while alive "$1"; do
        [ $i -ge $(($2 * 10)) ] && return 1
        sleep 0.1; i=$((i + 1))
    done
    wait "$1" 2>/dev/null
    return 0
}
stop() { # name: QEMU gets SIGTERM, a backend SIGINT (it prints its FINAL lines); then SIGKILL
    local p=${PID[$1]:-} sig=INT
    [ -n "$p" ] || return 0
    case "$1" in qemu-*) sig=TERM ;; esac
    if alive "$p"; then
        kill -"$sig" "$p" 2>/dev/null
        wait_gone "$p" 10 || { kill -KILL "$p" 2>/dev/null; wait_gone "$p" 5; }
    fi
    wait "$p" 2>/dev/null
    PID[$1]=""
}
cleanup() {
    local n
    for n in qemu-src qemu-dst backend-src backend-dst; do stop "$n"; done
}
trap cleanup EXIT
trap 'log "interrupted"; exit 1' INT TERM

start_backend() { # src|dst
    local args=(fwd --mode icmpecho --iface "$W/$1.sock" --lcores "$LCORES" --queues "$QUEUES"
        --copy "$COPY")
    [ "$MODE" = server ] && args+=(--client)
    [ "$MIGRATION" = postcopy ] && args+=(--postcopy)
    [ "$RING" = packed ] && args+=(--packed)
    log "backend-$1: $RVHOST ${args[*]}"
    "$RVHOST" "${args[@]}" </dev/null >"$W/backend-$1.log" 2>&1 &
    PID[backend-$1]=$!
}
start_qemu() { # src|dst
    # vectors=0: QEMU 7.2 under TCG crashes with vhost-user and MSI-X (see qemu_vhost_guest.sh);
    # legacy INTx works under KVM too.
    local chardev args device="virtio-net-pci,netdev=net0,mac=$MAC,romfile=,vectors=0"
    [ "$ANNOUNCE" = rarp ] && device="$device,guest_announce=off"
    [ "$QUEUES" -gt 1 ] && device="$device,mq=on"
    [ "$RING" = packed ] && device="$device,packed=on"
    if [ "$MODE" = server ]; then
        chardev="socket,id=char0,path=$W/$1.sock,server=on,wait=off"
    else
        chardev="socket,id=char0,path=$W/$1.sock,reconnect=1"
    fi
    args=(
        "$QEMU" -machine q35 -accel "$ACCEL" -m "$GUEST_MEM_MB" -smp "$SMP"
        -object "$MEMOBJ" -numa node,memdev=mem
        -chardev "$chardev"
        -netdev "type=vhost-user,id=net0,chardev=char0,queues=$QUEUES"
        -device "$device"
        -kernel "$KVMLINUZ" -initrd "$INITRD"
        -append "console=ttyS0 panic=-1 quiet mig.ip=$GUEST_IP mig.peer=$PEER_IP mig.count=$COUNT mig.interval=$INTERVAL mig.big=$BIG"
        -display none -monitor none -serial "file:$W/serial-$1.log"
        -qmp "unix:$W/qmp-$1.sock,server=on,wait=off"
        -no-reboot
    )
    [ "$1" = dst ] && args+=(-incoming "unix:$W/migrate.sock")
    # QEMU's trace of a fault of the backend's (its userfaultfd, not the guest's) that QEMU
    # matched to a region: counted in the summary ("backend faults").
    [ "$1" = dst ] && [ "$MIGRATION" = postcopy ] && args+=(-trace vhost_user_postcopy_fault_handler_found)
    printf '%q ' "${args[@]}" > "$W/qemu-$1.cmd"
    : > "$W/serial-$1.log"
    "${args[@]}" </dev/null >"$W/qemu-$1.log" 2>&1 &
    PID[qemu-$1]=$!
    log "qemu-$1 pid ${PID[qemu-$1]} ($W/qemu-$1.cmd)"
}
wait_socket() { # path seconds pid
    local i=0
    while [ ! -S "$1" ]; do
        alive "$3" || return 1
        [ $i -ge $(($2 * 10)) ] && return 1
        sleep 0.1; i=$((i + 1))
    done
}
# Waits for an extended regex in a file while the named processes live; 1 on timeout or death.
FAIL_REASON=""
wait_for() { # file regex seconds name...
    local f=$1 re=$2 end=$(($(date +%s) + $3)) n
    shift 3
    while :; do
        grep -aEq -- "$re" "$f" 2>/dev/null && return 0
        for n in "$@"; do
            if ! alive "${PID[$n]:-}"; then
                sleep 0.3
                grep -aEq -- "$re" "$f" 2>/dev/null && return 0
                FAIL_REASON="$n exited while waiting for '$re' in $(basename "$f")"; return 1
            fi
        done
        if [ "$(date +%s)" -ge "$end" ] || [ "$(date +%s)" -ge "$DEADLINE" ]; then
            FAIL_REASON="timeout waiting for '$re' in $(basename "$f")"; return 1
        fi
        sleep 0.1
    done
}

# One QMP command on a fresh connection (greeting, qmp_capabilities, the command); prints the
# answer line ("return" or "error"), skipping events. perl-base is essential on Debian.
qmp() { # name json [timeout]
    perl -e '
        use strict; use IO::Socket::UNIX; use IO::Select;
        my ($path, $cmd, $t) = @ARGV;
        my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM(), Peer => $path)
            or die "connect $path: $!\n";
        my $sel = IO::Select->new($s);
        my $buf = "";
        my $end = time + $t;
        sub line {
            while (1) {
                return $1 if $buf =~ s/^([^\n]*)\n//;
                die "timeout\n" if time > $end;
                next unless $sel->can_read(0.5);
                sysread($s, $buf, 65536, length $buf) or die "connection closed\n";
            }
        }
        sub answer {
            while (1) {
                my $l = line();
                return $l if $l =~ /"(return|error)"/;
            }
        }
        line();
        syswrite($s, qq({"execute": "qmp_capabilities"}\n));
        answer();
        # One command, or several separated by newlines, each sent once the one before is
        # answered, on this one connection (no client start-up between them).
        for my $c (split /\n/, $cmd) {
            syswrite($s, "$c\n");
            print answer(), "\n";
        }
    ' "$W/qmp-$1.sock" "$2" "${3:-10}" 2>>"$W/qmp.log" | tee -a "$W/qmp.log"
}
# Why a QMP command got no answer (the client's last error line).
qmp_error() { tail -n 1 "$W/qmp.log" 2>/dev/null; }
json_num() { sed -n "s/.*\"$1\": \([0-9]*\).*/\1/p" | head -1; }
json_str() { sed -n "s/.*\"$1\": \"\([^\"]*\)\".*/\1/p" | head -1; }

# ------------------------------------------------------------------ the run
MIG_STATUS="" DOWNTIME="" TOTAL="" SETUP="" SYNCS=""
run() {
    if [ "$MODE" = client ]; then
        start_backend src
        start_backend dst
        wait_socket "$W/src.sock" 30 "${PID[backend-src]}" || { FAIL_REASON="backend-src did not listen"; return 1; }
        wait_socket "$W/dst.sock" 30 "${PID[backend-dst]}" || { FAIL_REASON="backend-dst did not listen"; return 1; }
        start_qemu src
        start_qemu dst
    else
        start_qemu src
        start_qemu dst
        wait_socket "$W/src.sock" 30 "${PID[qemu-src]}" || { FAIL_REASON="qemu-src did not listen"; return 1; }
        wait_socket "$W/dst.sock" 30 "${PID[qemu-dst]}" || { FAIL_REASON="qemu-dst did not listen"; return 1; }
        start_backend src
        start_backend dst
    fi
    local all=(qemu-src qemu-dst backend-src backend-dst)
    wait_for "$W/serial-src.log" 'VHOST-MIG: init started' 120 "${all[@]}" || return 1
    wait_for "$W/backend-dst.log" 'new vhost-user connection' 60 "${all[@]}" || return 1
    wait_for "$W/serial-src.log" 'VHOST-MIG: (STREAM-START|RESULT=)' 120 "${all[@]}" || return 1
    grep -aq 'VHOST-MIG: STREAM-START' "$W/serial-src.log" || { FAIL_REASON="the guest failed before its stream"; return 1; }
    log "stream started on the source; migrating in $MIGRATE_AFTER s"
    sleep "$MIGRATE_AFTER"
    if grep -aq 'VHOST-MIG: STREAM-END' "$W/serial-src.log" || ! alive "${PID[qemu-src]}"; then
        FAIL_REASON="the stream ended before the migration started (--stream $STREAM s is too short for --migrate-after $MIGRATE_AFTER s)"
        return 1
    fi

    local ans caps
    caps='{"capability": "events", "state": true}'
    if [ "$MIGRATION" = postcopy ]; then
        # QEMU wants postcopy-ram on the destination too (it opens its userfaultfd and sends
        # POSTCOPY_ADVISE to the destination backend when the source advises).
        caps="$caps, {\"capability\": \"postcopy-ram\", \"state\": true}"
        ans=$(qmp dst '{"execute": "migrate-set-capabilities", "arguments": {"capabilities": [{"capability": "postcopy-ram", "state": true}]}}')
        [[ $ans == *'"return"'* ]] || { FAIL_REASON="migrate-set-capabilities (destination): ${ans:-$(qmp_error)}"; return 1; }
    fi
    ans=$(qmp src "{\"execute\": \"migrate-set-capabilities\", \"arguments\": {\"capabilities\": [$caps]}}")
    [[ $ans == *'"return"'* ]] || { FAIL_REASON="migrate-set-capabilities: ${ans:-$(qmp_error)}"; return 1; }
    ans=$(qmp src '{"execute": "migrate-set-parameters", "arguments": {"max-bandwidth": 4294967296, "downtime-limit": 300}}')
    [[ $ans == *'"return"'* ]] || { FAIL_REASON="migrate-set-parameters: ${ans:-$(qmp_error)}"; return 1; }
    local migrate="{\"execute\": \"migrate\", \"arguments\": {\"uri\": \"unix:$W/migrate.sock\"}}"
    local start_postcopy='{"execute": "migrate-start-postcopy"}'
    if [ "$MIGRATION" = postcopy ] && [ "$POSTCOPY_AFTER" = 0 ]; then
        # Both on one QMP connection, a few milliseconds apart: a guest of mostly zero pages
        # (hugepages, prealloc) finishes its first pass in ~0.2 s, before a second client
        # could ask for the switch, and the migration would end as precopy.
        ans=$(qmp src "$migrate"$'\n'"$start_postcopy")
        [[ $(head -1 <<<"$ans") == *'"return"'* ]] || { FAIL_REASON="migrate: ${ans:-$(qmp_error)}"; return 1; }
        [[ $(sed -n 2p <<<"$ans") == *'"return"'* ]] || { FAIL_REASON="migrate-start-postcopy: ${ans:-$(qmp_error)}"; return 1; }
        log "migration started, postcopy asked for at once"
    else
        ans=$(qmp src "$migrate")
        [[ $ans == *'"return"'* ]] || { FAIL_REASON="migrate: ${ans:-$(qmp_error)}"; return 1; }
        log "migration started"
        if [ "$MIGRATION" = postcopy ]; then
            sleep "$POSTCOPY_AFTER"
            ans=$(qmp src "$start_postcopy")
            [[ $ans == *'"return"'* ]] || { FAIL_REASON="migrate-start-postcopy: ${ans:-$(qmp_error)}"; return 1; }
            log "postcopy asked for"
        fi
    fi
    local end=$(($(date +%s) + 90))
    while :; do
        ans=$(qmp src '{"execute": "query-migrate"}')
        MIG_STATUS=$(json_str status <<<"$ans")
        case "$MIG_STATUS" in
            completed) break ;;
            failed|cancelled|"")
                FAIL_REASON="migration $MIG_STATUS: $ans"; return 1 ;;
        esac
        if [ "$(date +%s)" -ge "$end" ] || [ "$(date +%s)" -ge "$DEADLINE" ]; then
            FAIL_REASON="migration still $MIG_STATUS after 90 s: $ans"; return 1
        fi
        sleep 0.2
    done
    DOWNTIME=$(json_num downtime <<<"$ans")
    TOTAL=$(json_num total-time <<<"$ans")
    SETUP=$(json_num setup-time <<<"$ans")
    SYNCS=$(json_num dirty-sync-count <<<"$ans")
    PC_REQS=$(json_num postcopy-requests <<<"$ans")
    log "migration completed: downtime ${DOWNTIME:-?} ms, total ${TOTAL:-?} ms, ${SYNCS:-?} dirty-sync passes"
    ans=$(qmp dst '{"execute": "query-status"}')
    [ "$(json_str status <<<"$ans")" = running ] || { FAIL_REASON="destination not running: $ans"; return 1; }
    # The source is done: quit it (its backend sees the disconnect and releases the dirty log),
    # then stop its backend for its FINAL line.
    qmp src '{"execute": "quit"}' >/dev/null
    wait_gone "${PID[qemu-src]}" 10 || log "qemu-src did not quit"
    stop qemu-src
    stop backend-src
    wait_for "$W/serial-dst.log" 'VHOST-MIG: RESULT=' 120 qemu-dst backend-dst || return 1
    wait_gone "${PID[qemu-dst]}" 20 || log "qemu-dst did not exit after the guest finished"
    stop qemu-dst
    stop backend-dst
    grep -aq 'VHOST-MIG: RESULT=PASS' "$W/serial-dst.log" || { FAIL_REASON="the guest reported a failure"; return 1; }
    return 0
}

RESULT=FAIL
if run; then RESULT=PASS; fi
cleanup

# ------------------------------------------------------------------ evaluation
fail() { [ "$RESULT" = PASS ] && FAIL_REASON=$1; RESULT=FAIL; }
serial_all() { cat "$W/serial-src.log" "$W/serial-dst.log" 2>/dev/null; }
stream=$(grep -a 'VHOST-MIG: STREAM transmitted=' "$W/serial-dst.log" 2>/dev/null | tail -1)
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$stream"; }
TX=$(field transmitted) RX=$(field received) LOST=$(field lost) DUPS=$(field dups) RANGES=$(field lost_ranges)
BIG_RX=$(grep -a 'VHOST-MIG: BIG ' "$W/serial-dst.log" 2>/dev/null | sed -n 's/.* received=\([0-9]*\).*/\1/p' | tail -1)
# Echo requests the guest's stack sent during the stream beyond those ping counted (its
# Icmp_OutEchos after the stream, less ping's "transmitted"): 0 unless the guest itself sent
# some twice, which happens only when the guest's own memory (ping's counters) went back on
# the destination: a page its vCPU wrote but QEMU did not send again, the QEMU 7.2 TCG
# migration fault whose other face is the kernel crash the test retries. A duplicate reply
# to such a request is the guest's, not a receive buffer that arrived with old bytes.
OUT_ECHOS=$(grep -a 'VHOST-MIG: NETSTAT ' "$W/serial-dst.log" 2>/dev/null | sed -n 's/.* Icmp_OutEchos=\([0-9]*\).*/\1/p' | tail -1)
RESENT=$(( ${OUT_ECHOS:-0} > ${TX:-0} ? ${OUT_ECHOS:-0} - ${TX:-0} : 0 ))
# Requests the source backend had taken from the guest into its async dequeue channel when
# QEMU stopped the rings (drained and handed back by async_clear_queue: "g2h: async: ...
# cleared=N"): their replies have no ring to go to any more, so each may be one lost reply
# (a forwarding application would send them on elsewhere). 0 on the sync path.
IN_HAND=$(sed -n "s/.* g2h: async: .* cleared=\([0-9]*\).*/\1/p" "$W/backend-src.log" 2>/dev/null | awk "{ n += \$1 } END { print n + 0 }")
ALLOWED=$((MAX_LOSS + IN_HAND))
if [ "$RESULT" = PASS ]; then
    grep -aq 'VHOST-MIG: STREAM-START' "$W/serial-src.log" || fail "the stream did not start on the source"
    grep -aq 'VHOST-MIG: STREAM-END' "$W/serial-src.log" && fail "the stream ended before the migration"
    grep -aq 'VHOST-MIG: STREAM-END' "$W/serial-dst.log" || fail "the stream did not end on the destination"
    [ -n "$stream" ] || fail "no stream summary"
    [ -n "$LOST" ] && [ "$LOST" -le "$ALLOWED" ] || fail "the stream lost ${LOST:-?} replies (at most $ALLOWED allowed: --max-loss $MAX_LOSS + $IN_HAND request(s) in the source's async channel at its stop): $RANGES"
    [ "${TX:-0}" -gt 0 ] || fail "the stream sent nothing"
    # A receive buffer the backend filled but did not log arrives with its old bytes: an
    # earlier reply, which ping takes for a duplicate. Duplicates no more than the requests
    # the guest sent twice are the guest's own (see RESENT), and say so.
    if [ "${DUPS:-1}" != 0 ] && [ "${DUPS:-1}" -le "$RESENT" ]; then
        fail "the stream got $DUPS duplicate replies, to echo requests the guest sent twice (its Icmp_OutEchos=$OUT_ECHOS for ping's $TX): guest memory went back on the destination (guest_resent=$RESENT)"
    else
        [ "${DUPS:-1}" = 0 ] || fail "the stream got ${DUPS:-?} duplicate replies (the guest sent ${RESENT} echo request(s) twice)"
    fi
    [ "${SYNCS:-0}" -ge 2 ] || fail "QEMU made ${SYNCS:-?} dirty-sync passes (want at least 2)"
fi
# The source backend's dirty log: bits it set in QEMU's log (released when QEMU quit).
MARKED=$(sed -n "s/.*dirty log .* released: \([0-9]*\) pages marked.*/\1/p" "$W/backend-src.log" 2>/dev/null | awk "{ n += \$1 } END { print n + 0 }")
# In postcopy the source logs only until the switch, which may come before the backend wrote
# anything (migrate-start-postcopy at once): required for precopy only.
if [ "$MIGRATION" = precopy ]; then
    [ "${MARKED:-0}" -gt 0 ] || fail "the source backend marked no page in the dirty log (${MARKED:-no 'dirty log ... released' line})"
fi
if [ "${COPY%%,*}" = soft ]; then
    # The async path really carried the stream: the source's engine copied frames.
    DMA=$(sed -n "s/.* h2g: async: .* dma_copies=\([0-9]*\) .*/\1/p" "$W/backend-src.log" 2>/dev/null | awk "{ n += \$1 } END { print n + 0 }")
    [ "${DMA:-0}" -gt 0 ] || fail "--copy $COPY: the source backend's engine copied nothing to the guest (no 'h2g: async: ... dma_copies=N' line with N > 0)"
fi
grep -aq 'dirty log .* mapped' "$W/backend-src.log" 2>/dev/null || fail "the source backend never mapped a dirty log"
if [ "$MIGRATION" = postcopy ]; then
    # The destination backend went through the whole postcopy sequence.
    PC_ADVISE=$(grep -ac 'POSTCOPY_ADVISE: userfaultfd .* opened' "$W/backend-dst.log" 2>/dev/null)
    PC_REG=$(grep -ac 'postcopy: .* acknowledged; [1-9][0-9]* regions registered' "$W/backend-dst.log" 2>/dev/null)
    PC_END=$(grep -ac 'postcopy: ended' "$W/backend-dst.log" 2>/dev/null)
    PC_FAULTS=$(grep -ac 'vhost_user_postcopy_fault_handler_found' "$W/qemu-dst.log" 2>/dev/null)
    [ "${PC_ADVISE:-0}" -gt 0 ] || fail "the destination backend got no POSTCOPY_ADVISE"
    [ "${PC_REG:-0}" -gt 0 ] || fail "the destination backend registered no memory with its userfaultfd"
    [ "${PC_END:-0}" -gt 0 ] || fail "the destination backend got no POSTCOPY_END"
fi
# The destination's rings, as migrated, must agree with the source's GET_VRING_BASE: a used
# index the source backend wrote but did not log arrives stale, and rvhost then resumes from it
# with this warning (packets resent or lost). Split rings only: nothing in a packed ring's
# memory says where the device stopped (a used descriptor's flags tell only its lap), so rvhost
# takes SET_VRING_BASE as the truth there; a used descriptor the source did not log shows as
# a stalled ring (lost replies) instead.
if grep -a 'disagrees with used.idx' "$W/backend-src.log" "$W/backend-dst.log" 2>/dev/null; then
    fail "a backend found a vring base that disagrees with the used index in guest memory"
fi
# The ring layout asked for is the one negotiated: the guest driver's features (its sysfs
# "features" string, character n being bit n, printed before the stream) and both backends'
# ("is running (features 0x...)") have VIRTIO_F_RING_PACKED (bit 34) with --packed and not
# without (QEMU falls back to split rings silently when a backend does not offer packed ones).
WANT_PACKED=0
[ "$RING" = packed ] && WANT_PACKED=1
GUEST_FEATURES=$(sed -n 's/.*virtio_features=\([01]*\).*/\1/p' "$W/serial-src.log" 2>/dev/null | tail -1)
GUEST_PACKED=${GUEST_FEATURES:34:1}
[ "${GUEST_PACKED:-?}" = "$WANT_PACKED" ] \
    || fail "the guest's RING_PACKED (bit 34 of virtio_features=${GUEST_FEATURES:-none}) is ${GUEST_PACKED:-missing}, want $WANT_PACKED ($RING rings)"
for b in src dst; do
    feats=$(sed -n 's/.* is running (features \(0x[0-9a-f]*\)).*/\1/p' "$W/backend-$b.log" 2>/dev/null | tail -1)
    if [ -z "$feats" ]; then
        fail "backend-$b logged no negotiated features (no 'is running (features 0x...)' line)"
    elif [ $(((feats >> 34) & 1)) != "$WANT_PACKED" ]; then
        fail "backend-$b negotiated features $feats: RING_PACKED (bit 34) is $(((feats >> 34) & 1)), want $WANT_PACKED ($RING rings)"
    fi
done
# Each ring resumes where the source stopped it. The source backend's last GET_VRING_BASE of
# each vring (at the switch-over) and the destination backend's last SET_VRING_BASE must carry
# the same number (QEMU keeps it in the device state it migrates). On a split ring it is the
# next available index (bits 16-31 zero); on a packed ring bits 0-14 the next available slot
# and bit 15 its wrap counter, bits 16-31 the used position the same way, and the two halves
# must be equal: the source answers only once every chain it took is used, and the
# destination resumes its used position at the available one (a used half behind would be
# chains skipped). Every vring of every queue pair is checked.
vring_bases() { # src|dst GET|SET: "vring number" for each vring, its last line
    sed -n "s/.*: vring \([0-9]*\): $2_VRING_BASE \(0x[0-9a-f]*\) .*/\1 \2/p" "$W/backend-$1.log" 2>/dev/null \
        | awk '{ b[$1] = $2 } END { for (v in b) print v, b[v] }' | sort -n
}
DST_BASES=$(vring_bases dst SET)
BASES="" NBASES=0
while read -r v num; do
    [ -n "$v" ] || continue
    NBASES=$((NBASES + 1))
    BASES="$BASES${BASES:+,}$v:$num"
    resumed=$(awk -v v="$v" '$1 == v { print $2 }' <<<"$DST_BASES")
    [ "$resumed" = "$num" ] \
        || fail "vring $v: the source stopped at $num (GET_VRING_BASE), the destination resumed at ${resumed:-nothing} (SET_VRING_BASE)"
    if [ "$RING" = packed ]; then
        [ $((num & 0xffff)) = $((num >> 16)) ] \
            || fail "vring $v: packed base $num: used position $(((num >> 16) & 0x7fff))/$((num >> 31)) is not the available one $((num & 0x7fff))/$(((num >> 15) & 1)) (chains in flight at the stop)"
    else
        [ $((num >> 16)) = 0 ] || fail "vring $v: split base $num has bits above 15"
    fi
done <<<"$(vring_bases src GET)"
[ "$NBASES" = $((2 * QUEUES)) ] \
    || fail "the source backend stopped $NBASES vring(s) (GET_VRING_BASE), want $((2 * QUEUES)) (${BASES:-none})"
# Both backends served the guest, and answered every frame they took but the RARP frames
# the destination injected for SEND_RARP (--announce rarp: at least one; QEMU announces in a
# few rounds, each a SEND_RARP, and frames pending together are injected once).
RARPS=$(grep -ac 'SEND_RARP for ' "$W/backend-dst.log" 2>/dev/null)
if [ "$ANNOUNCE" = rarp ]; then
    [ "${RARPS:-0}" -gt 0 ] || fail "the destination backend got no SEND_RARP"
    grep -aq 'SEND_RARP for ' "$W/backend-src.log" 2>/dev/null && fail "the source backend got a SEND_RARP"
else
    [ "${RARPS:-0}" = 0 ] || fail "SEND_RARP sent although the guest announces itself"
fi
for b in src dst; do
    final=$(grep -a '^FINAL port=0 ' "$W/backend-$b.log" 2>/dev/null | tail -1)
    rx=$(sed -n 's/.* rx_pkts=\([0-9]*\).*/\1/p' <<<"$final")
    tx=$(sed -n 's/.* tx_pkts=\([0-9]*\).*/\1/p' <<<"$final")
    drops=$(sed -n 's/.* tx_drops=\([0-9]*\).*/\1/p' <<<"$final")
    echo "backend-$b: ${final:-no FINAL line}"
    [ -n "$final" ] || { fail "backend-$b printed no FINAL line"; continue; }
    [ "${rx:-0}" -gt 0 ] || fail "backend-$b saw no traffic"
    [ "$drops" = 0 ] || fail "backend-$b dropped replies ($final)"
    unanswered=$((rx - tx))
    if [ "$b" = dst ] && [ "$ANNOUNCE" = rarp ]; then
        [ "$unanswered" -ge 1 ] && [ "$unanswered" -le "$RARPS" ] \
            || fail "backend-dst: $unanswered frames unanswered, want 1..$RARPS injected RARP frames ($final)"
        INJECTED=$unanswered
    else
        [ "$unanswered" = 0 ] || fail "backend-$b did not answer every frame ($final)"
    fi
done

echo "================ rvhost live migration summary ================"
echo "run dir:    $W"
echo "mode:       $MIGRATION, QEMU vhost-user $MODE, mem=$MEM, accel=$ACCEL, guest ${GUEST_MEM_MB} MB, $QUEUES queue pair(s), $SMP vCPU(s), announce=$ANNOUNCE"
echo "announce:   ${RARPS:-0} SEND_RARP to the destination backend, ${INJECTED:-0} RARP frames injected"
echo "migration:  status=${MIG_STATUS:-?} downtime=${DOWNTIME:-?} ms total=${TOTAL:-?} ms setup=${SETUP:-?} ms dirty-sync passes=${SYNCS:-?}"
echo "dirty log:  source backend marked ${MARKED:-?} pages"
echo "rings:      $RING (guest RING_PACKED bit: ${GUEST_PACKED:-?}); vring bases at the switch-over (vring:GET_VRING_BASE, resumed by SET_VRING_BASE): ${BASES:-none}"
[ "$MIGRATION" = postcopy ] && echo "postcopy:   ${PC_REQS:-?} page requests from the destination, ${PC_FAULTS:-0} of them faults of the destination backend; destination backend: ${PC_ADVISE:-0} advise, ${PC_REG:-0} registrations, ${PC_END:-0} end"
echo "in hand:    ${IN_HAND:-0} request(s) in the source's async dequeue channel at its stop"
echo "guest markers:"
serial_all | grep -a 'VHOST-MIG:' | sed 's/^/  /'
echo "MIGRATE result=$RESULT mode=$MODE mem=$MEM queues=$QUEUES transmitted=${TX:-0} received=${RX:-0} lost=${LOST:-?} dups=${DUPS:-?}" \
    "lost_ranges=${RANGES:-?} downtime_ms=${DOWNTIME:-?} total_ms=${TOTAL:-?} setup_ms=${SETUP:-?}" \
    "dirty_syncs=${SYNCS:-?} pages_marked=${MARKED:-?} big=${BIG_RX:-0}/10 announce=$ANNOUNCE" \
    "send_rarp=${RARPS:-0} rarp_frames=${INJECTED:-0} migration=$MIGRATION postcopy_requests=${PC_REQS:--} backend_faults=${PC_FAULTS:--}" \
    "ring=$RING guest_packed=${GUEST_PACKED:-?} vring_bases=${BASES:-none} in_hand=${IN_HAND:-0} guest_resent=${RESENT:-0}"
if [ "$RESULT" = PASS ]; then
    echo "RESULT: PASS ($(( $(date +%s) - T0 )) s)"
    [ "$KEEP" = 1 ] || rm -rf "$W"
    exit 0
fi
echo "RESULT: FAIL: $FAIL_REASON ($(( $(date +%s) - T0 )) s)"
for f in serial-src serial-dst; do
    echo "--- $f.log (tail)"; tail -n 30 "$W/$f.log" 2>/dev/null
done
for f in qemu-src qemu-dst backend-src backend-dst; do
    echo "--- $f.log (tail)"; tail -n 20 "$W/$f.log" 2>/dev/null
done
echo "(logs kept in $W)"
exit 1
