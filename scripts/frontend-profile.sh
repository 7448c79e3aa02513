#!/usr/bin/env bash
# frontend-profile.sh: where the testpmd virtio-user frontend spends its time per packet with
# each backend, rvhost and DPDK's vhost, on the same frontend. For the rows the frontend
# bounds (g2h: its txonly is 100% busy), a backend shows in the frontend's costs, not its own:
# a line the backend keeps, or takes back, while the frontend writes it.
#
# One frontend (a virtio-user server, driven through its command line, as bench-vs-dpdk.sh's
# swap method) and windows of each backend connecting to it in turn (DPDK, rvhost, rvhost,
# DPDK, ...). In each window, after --drop seconds of forwarding, `perf record -e cpu-clock` samples
# the frontend's CPU for --seconds while testpmd measures its rate (this VM has no hardware
# counters: the samples are timer interrupts, landing on the instruction that retires after a
# stall). The samples are mapped to the functions of DPDK's stripped libraries by their
# `.eh_frame` ranges (`readelf --debug-dump=frames`), and each function's share of the samples
# becomes nanoseconds per packet: share x 1e9 / rate. Functions are named by their library and
# start address (e.g. librte_net_virtio.so.23.0+0x14790: find it in the library's disassembly,
# or by its source in DPDK); a function with a symbol keeps its name.
#
# Output: per function (the --top by their largest cost), ns a packet with each backend (the
# mean over its windows) and the difference, rvhost - DPDK; with --function F (a name or
# start address as printed), the same per sampled address inside F.
#
# Needs dpdk-testpmd (apt-get install dpdk-dev), perf (apt-get install linux-perf), hugepages
# for two testpmds (--mem MB each), root, and a release build of rvhost.

set -uo pipefail
# shellcheck source=scripts/lib/testpmd.sh
source "$(dirname "$0")/lib/testpmd.sh"

usage() {
    cat <<'EOF'
usage: scripts/frontend-profile.sh [options]

  --dir D            g2h, h2g, loop-lat or loop-tput (default g2h)
  --ring R           split or packed (default packed)
  --mrg N            mrg_rxbuf of the frontend, 0 or 1 (default 0)
  --size BYTES       frame size (default 64)
  --rounds N         rounds of two windows (DPDK rvhost, rvhost DPDK, ...; default 3)
  --seconds S        sampled seconds of each window (default 3)
  --drop S           seconds of forwarding before sampling (default 2)
  --top N            functions listed (default 12)
  --function F       also list the addresses inside F (a name or start as printed)
  --backend-stats    also run each backend with --record-core-cycles and --record-burst-stats
                     (both have them) and print, per window, its cycles a packet in the
                     receive polls that brought packets and its receive bursts by size (the
                     recording reads the TSC in every poll: the rates are of that run)
EOF
    cat <<EOF
$SHARED_USAGE
  --logs DIR         keep the logs and perf data in DIR (default: a temporary dir, removed)
  -h, --help         this text
EOF
}

DIR=g2h RING=packed MRG=0 SIZE=64 ROUNDS=3 SECS=3 DROP=2 TOP=12 FUNC="" BE_STATS=()
RVHOST=target/release/rvhost TESTPMD=dpdk-testpmd BE_CPU=0 FE_CPU=1 MEM=512 LOGDIR=""
die() {
    echo "frontend-profile: $*" >&2
    exit 1
}
while (($#)); do
    shared_option "$1" "${2-}" && shift 2 && continue
    case $1 in
    --dir) DIR=${2:?} && shift ;;
    --ring) RING=${2:?} && shift ;;
    --mrg) MRG=${2:?} && shift ;;
    --size) SIZE=${2:?} && shift ;;
    --rounds) ROUNDS=${2:?} && shift ;;
    --seconds) SECS=${2:?} && shift ;;
    --drop) DROP=${2:?} && shift ;;
    --top) TOP=${2:?} && shift ;;
    --function) FUNC=${2:?} && shift ;;
    --backend-stats) BE_STATS=(--record-core-cycles --record-burst-stats) ;;
    -h | --help) usage && exit 0 ;;
    *) usage >&2 && die "unknown option $1" ;;
    esac
    shift
done

case $DIR in
g2h) FE_MODE=txonly BE_MODE=rxonly METER=Tx-pps START=start ;;
h2g) FE_MODE=rxonly BE_MODE=txonly METER=Rx-pps START=start ;;
loop-lat) FE_MODE=io BE_MODE=io METER=Rx-pps START="start tx_first" ;;
loop-tput) FE_MODE=mac BE_MODE=io METER=Rx-pps START="start tx_first 32" ;;
*) die "--dir: g2h, h2g, loop-lat or loop-tput, not $DIR" ;;
esac
[[ $RING == split || $RING == packed ]] || die "--ring: split or packed, not $RING"
[[ $MRG == 0 || $MRG == 1 ]] || die "--mrg: 0 or 1, not $MRG"
((ROUNDS >= 1)) || die "--rounds: at least 1"
command -v "$TESTPMD" >/dev/null || die "$TESTPMD not found (apt-get install dpdk-dev)"
command -v perf >/dev/null || die "perf not found (apt-get install linux-perf)"
command -v readelf >/dev/null || die "readelf not found (apt-get install binutils)"
[[ -x $RVHOST ]] || die "$RVHOST not found (cargo build --release)"
RVHOST=$(realpath "$RVHOST")

if [[ -n $LOGDIR ]]; then
    mkdir -p "$LOGDIR" || die "cannot create $LOGDIR"
    KEEP=1
else
    LOGDIR=$(mktemp -d /tmp/frontend-profile.XXXXXX) || die "mktemp failed"
    KEEP=0
fi
SOCK=$LOGDIR/fe.sock FIFO=$LOGDIR/fe.cmd IDLE_FIFO=$LOGDIR/idle FE_LOG=$LOGDIR/frontend.log
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null; done
    sleep 0.5
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
    wait 2>/dev/null
    rm -f "$SOCK" "$FIFO" "$IDLE_FIFO"
    ((KEEP)) || rm -rf "$LOGDIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rm -f "$SOCK" "$FIFO" "$IDLE_FIFO"
mkfifo "$FIFO" || die "mkfifo $FIFO failed"
exec {CMD}<>"$FIFO"
# The DPDK backend's stdin: testpmd without -i quits at the end of its input ("Press enter to
# exit"), so it gets a FIFO nobody writes to.
mkfifo "$IDLE_FIFO" || die "mkfifo $IDLE_FIFO failed"
exec {IDLE}<>"$IDLE_FIFO"
testpmd_eal "$FE_CPU" "fp-fe-$$"
stdbuf -oL -eL "$TESTPMD" "${EAL_ARGS[@]}" --vdev "$(virtio_user_vdev "$SOCK" "$MRG" "$RING" 1)" \
    -- -i --forward-mode="$FE_MODE" --txpkts="$SIZE" "${PORT_ARGS[@]}" <&"$CMD" >"$FE_LOG" 2>&1 &
FE_PID=$!
PIDS+=("$FE_PID")
wait_socket "$SOCK" 30 "$FE_PID" || die "the frontend did not listen on $SOCK (see $FE_LOG)"

# backend_stats LOG: the cycles a packet and receive bursts a backend printed at its exit
# (testpmd: "CPU cycles/packet=..." and "RX-bursts : N [...]"; rvhost fwd: the same per lcore).
backend_stats() {
    local cycles bursts
    cycles=$(grep -o -m1 'cycles/packet=[0-9.]*' "$1" | cut -d= -f2)
    bursts=$(grep -m1 -E 'RX-bursts ?:' "$1" | sed -E 's/.*RX-bursts ?: *//')
    echo "           backend: ${cycles:-?} cycles a packet busy; receive bursts ${bursts:-?}" >&2
}

ORDER=()
for ((k = 1; k <= ROUNDS; k++)); do
    if ((k % 2)); then ORDER+=(dpdk rvhost); else ORDER+=(rvhost dpdk); fi
done
echo "frontend-profile: $DIR ${SIZE}B mrg=$MRG $RING, $ROUNDS rounds of ${SECS} s windows," \
    "frontend on CPU $FE_CPU sampled, backends on CPU $BE_CPU" >&2
WINDOWS=()
w=0
for be in "${ORDER[@]}"; do
    w=$((w + 1))
    be_log=$LOGDIR/w$w.$be.log
    if [[ $be == dpdk ]]; then
        testpmd_eal "$BE_CPU" "fp-be-$$-$w"
        "$TESTPMD" "${EAL_ARGS[@]}" --vdev "net_vhost0,iface=$SOCK,queues=1,client=1" \
            -- --forward-mode="$BE_MODE" --txpkts="$SIZE" --auto-start "${PORT_ARGS[@]}" \
            "${BE_STATS[@]}" <&"$IDLE" >"$be_log" 2>&1 &
    else
        be_opts=(--client)
        [[ $RING == packed ]] && be_opts+=(--packed)
        taskset -c "$BE_CPU" "$RVHOST" fwd --mode "$BE_MODE" --iface "$SOCK" --lcores "$BE_CPU" \
            --burst 32 --txpkts "$SIZE" "${be_opts[@]}" "${BE_STATS[@]}" </dev/null >"$be_log" 2>&1 &
    fi
    be_pid=$!
    PIDS+=("$be_pid")
    wait_connected "$w" "$FE_LOG" "$be_pid" "$FE_PID" ||
        die "window $w: the $be backend did not connect (see $be_log)"
    sleep 0.5
    shown=$(grep -c "$METER:" "$FE_LOG")
    printf '%s\n' "$START" >&"$CMD"
    sleep "$DROP"
    printf 'show port stats 0\n' >&"$CMD"
    perf record -q -e cpu-clock -F 10000 -C "$FE_CPU" -o "$LOGDIR/w$w.$be.data" -- sleep "$SECS" \
        >/dev/null 2>&1 || die "perf record failed"
    printf 'show port stats 0\n' >&"$CMD"
    for ((i = 0; i < 50; i++)); do
        (($(grep -c "$METER:" "$FE_LOG") >= shown + 2)) && break
        sleep 0.1
    done
    printf 'stop\n' >&"$CMD"
    rate=$(awk -v m="$METER:" -v n="$((shown + 2))" '$1 == m && ++k == n { print $2 }' "$FE_LOG")
    [[ -n $rate && $rate != 0 ]] || die "window $w ($be): no rate in $FE_LOG"
    printf '  window %d %-6s %8.3f Mpps\n' "$w" "$be" "$(awk -v r="$rate" 'BEGIN { print r / 1e6 }')" >&2
    WINDOWS+=("$be:$rate:$LOGDIR/w$w.$be.data")
    kill -INT "$be_pid" 2>/dev/null
    wait "$be_pid" 2>/dev/null
    ((${#BE_STATS[@]})) && backend_stats "$be_log"
    sleep 0.5
done
printf 'quit\n' >&"$CMD"

python3 - "$TOP" "$FUNC" "${WINDOWS[@]}" <<'EOF'
import bisect, collections, re, subprocess, sys

top, func, windows = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
paths, fdes = {}, {}

def dso_paths(data):
    """Base name -> full path of each sampled DSO (perf buildid-list)."""
    out = subprocess.run(['perf', 'buildid-list', '-i', data], capture_output=True, text=True).stdout
    for line in out.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2:
            paths.setdefault(parts[1].rsplit('/', 1)[-1], parts[1])

def ranges(dso):
    """Sorted (start, end) of the DSO's functions, from its .eh_frame FDEs."""
    if dso not in fdes:
        r = []
        if dso in paths:
            out = subprocess.run(['readelf', '--debug-dump=frames', paths[dso]],
                                 capture_output=True, text=True).stdout
            r = sorted((int(a, 16), int(b, 16))
                       for a, b in re.findall(r'FDE cie=\S+ pc=([0-9a-f]+)\.\.([0-9a-f]+)', out))
        fdes[dso] = r
    return fdes[dso]

def function_of(dso, sym):
    """(function name, address or None): a symbol stays; an address goes to its FDE's start."""
    if not sym.startswith('0x'):
        return f'{dso}:{sym}', None
    a = int(sym, 16)
    r = ranges(dso)
    i = bisect.bisect_right(r, (a, 1 << 62)) - 1
    if i >= 0 and r[i][0] <= a < r[i][1]:
        return f'{dso}+{r[i][0]:#x}', a
    return f'{dso}+?{a:#x}', a

# per backend: function -> summed ns a packet over its windows; same per (function, address)
fn = collections.defaultdict(lambda: collections.defaultdict(float))
addr = collections.defaultdict(lambda: collections.defaultdict(float))
count = collections.Counter()
total = collections.defaultdict(float)
for w in windows:
    be, rate, data = w.split(':', 2)
    ns_per_pkt = 1e9 / float(rate)
    dso_paths(data)
    out = subprocess.run(['perf', 'report', '-i', data, '--sort', 'dso,sym', '--stdio', '-F',
                          'overhead,dso,sym'], capture_output=True, text=True).stdout
    count[be] += 1
    total[be] += ns_per_pkt
    for line in out.splitlines():
        m = re.match(r'\s*([\d.]+)%\s+(\S+)\s+\[.\]\s+(\S+)', line)
        if not m:
            continue
        ns = float(m.group(1)) / 100 * ns_per_pkt
        name, a = function_of(m.group(2), m.group(3))
        fn[be][name] += ns
        if a is not None:
            addr[be][(name, a)] += ns

def mean(table, be, key):
    return table[be].get(key, 0.0) / max(count[be], 1)

print(f"ns a packet on the frontend's CPU (mean over windows: dpdk {count['dpdk']}, "
      f"rvhost {count['rvhost']}); all: dpdk {total['dpdk'] / max(count['dpdk'], 1):.2f}, "
      f"rvhost {total['rvhost'] / max(count['rvhost'], 1):.2f}")
print(f"{'dpdk':>8} {'rvhost':>8} {'r - d':>8}  function")
names = set(fn['dpdk']) | set(fn['rvhost'])
for n in sorted(names, key=lambda n: -max(mean(fn, 'dpdk', n), mean(fn, 'rvhost', n)))[:top]:
    d, r = mean(fn, 'dpdk', n), mean(fn, 'rvhost', n)
    print(f'{d:8.2f} {r:8.2f} {r - d:+8.2f}  {n}')
if func:
    keys = {k for be in ('dpdk', 'rvhost') for k in addr[be] if k[0] == func or k[0].endswith(func)}
    if not keys:
        print(f'\n{func}: no sampled address (a function with a symbol is not split by address)')
    else:
        print(f'\n{func}, by sampled address (the instruction a stall retired at, or after)')
        print(f"{'dpdk':>8} {'rvhost':>8} {'r - d':>8}  address")
        for k in sorted(keys, key=lambda k: -abs(mean(addr, 'rvhost', k) - mean(addr, 'dpdk', k)))[:top * 2]:
            d, r = mean(addr, 'dpdk', k), mean(addr, 'rvhost', k)
            print(f'{d:8.3f} {r:8.3f} {r - d:+8.3f}  {k[1]:#x}')
EOF
