#!/usr/bin/env bash
# ab-inprocess.sh: measures a change to rvhost's data path inside one run. The build under test
# carries both variants: the changed code asks `rvhost::ab::on(BIT)`, and `rvhost fwd --ab MASK`
# turns MASK's bits on and off at every statistics period (variant B on, A off), tagging each
# period. Neighbouring periods share the host's state, which two runs even seconds apart do
# not (on these shared machines, loopback rates of one build move 10-40% from run to run), so
# the ratio of each B period to the mean of the A periods on both sides of it measures the
# change; the script prints their median and quartiles over the run.
#
# The frontend is DPDK's testpmd with a virtio-user port, as in bench-vs-dpdk.sh (same rows:
# g2h, h2g, loop-lat, loop-tput); the rate is rvhost's own (its receive rate for g2h, its
# transmit rate otherwise). With no bit wired into the code, both variants are the same code:
# an A/A run shows the method's spread.
#
# Needs dpdk-testpmd (apt-get install dpdk-dev), hugepages for one testpmd (--mem MB), and a
# release build of rvhost with the experiment wired in (cargo build --release).

set -uo pipefail
# shellcheck source=scripts/lib/testpmd.sh
source "$(dirname "$0")/lib/testpmd.sh"

usage() {
    cat <<'EOF'
usage: scripts/ab-inprocess.sh [options]

  --mask M           experiments of variant B (bits for rvhost::ab::on; default 1)
  --dir D            g2h, h2g, loop-lat or loop-tput (default loop-lat)
  --ring R           split or packed (default packed)
  --mrg N            mrg_rxbuf of the frontend, 0 or 1 (default 0)
  --size BYTES       frame size (default 64)
  --seconds S        length of the run (default 20)
  --period S         seconds of each variant (default 0.5)
  --drop N           periods dropped at the start (default 4)
EOF
    cat <<EOF
$SHARED_USAGE
  --logs DIR         keep both logs in DIR (default: a temporary dir, removed)
  -h, --help         this text
EOF
}

MASK=1 DIR=loop-lat RING=packed MRG=0 SIZE=64 SECS=20 PERIOD=0.5 DROP=4
RVHOST=target/release/rvhost TESTPMD=dpdk-testpmd BE_CPU=0 FE_CPU=1 MEM=512 LOGDIR=""
die() {
    echo "ab-inprocess: $*" >&2
    exit 1
}
while (($#)); do
    shared_option "$1" "${2-}" && shift 2 && continue
    case $1 in
    --mask) MASK=${2:?} && shift ;;
    --dir) DIR=${2:?} && shift ;;
    --ring) RING=${2:?} && shift ;;
    --mrg) MRG=${2:?} && shift ;;
    --size) SIZE=${2:?} && shift ;;
    --seconds) SECS=${2:?} && shift ;;
    --period) PERIOD=${2:?} && shift ;;
    --drop) DROP=${2:?} && shift ;;
    -h | --help) usage && exit 0 ;;
    *) usage >&2 && exit 2 ;;
    esac
    shift
done
[[ $SECS =~ ^[0-9]+$ ]] || die "--seconds $SECS: a whole number of seconds"
[[ $DROP =~ ^[0-9]+$ ]] || die "--drop $DROP: a number of periods"
[[ $MRG == 0 || $MRG == 1 ]] || die "--mrg $MRG: 0 or 1"
[[ -x $RVHOST ]] || die "$RVHOST: no rvhost binary (cargo build --release)"
command -v "$TESTPMD" >/dev/null || die "$TESTPMD not found (apt-get install dpdk-dev)"

case $DIR in
g2h) be_mode=rxonly fe_args=(--forward-mode=txonly) meter=Rx ;;
h2g) be_mode=txonly fe_args=(--forward-mode=rxonly) meter=Tx ;;
loop-lat) be_mode=io fe_args=(--forward-mode=io --tx-first) meter=Tx ;;
loop-tput) be_mode=io fe_args=(--forward-mode=mac) meter=Tx ;;
*) die "--dir $DIR: g2h, h2g, loop-lat or loop-tput" ;;
esac
packed_be=()
case $RING in
split) ;;
packed) packed_be=(--packed) ;;
*) die "--ring $RING: split or packed" ;;
esac

KEEP=1
if [[ -z $LOGDIR ]]; then
    LOGDIR=$(mktemp -d /tmp/ab-inprocess.XXXXXX) || die "cannot make a temporary directory"
    KEEP=0
fi
mkdir -p "$LOGDIR" || die "cannot make $LOGDIR"
SOCK="$LOGDIR/ab.sock" BE_LOG="$LOGDIR/backend.log" FE_LOG="$LOGDIR/frontend.log"
rm -f "$SOCK"
if [[ $DIR == loop-tput ]]; then
    # Not interactive: testpmd runs the file, whose `start` comes first (as bench-vs-dpdk.sh).
    printf 'start tx_first 32\n' >"$LOGDIR/tx_first_32"
    fe_args+=("--cmdline-file=$LOGDIR/tx_first_32")
fi

BE_PID="" FE_PID=""
cleanup() {
    [[ -n $FE_PID ]] && kill -INT "$FE_PID" 2>/dev/null
    [[ -n $BE_PID ]] && kill -INT "$BE_PID" 2>/dev/null
    wait 2>/dev/null
    ((KEEP)) || rm -rf "$LOGDIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

taskset -c "$BE_CPU" "$RVHOST" fwd --mode "$be_mode" --iface "$SOCK" --lcores "$BE_CPU" \
    --burst 32 --txpkts "$SIZE" "${packed_be[@]}" --stats-period "$PERIOD" --ab "$MASK" \
    >"$BE_LOG" 2>&1 &
BE_PID=$!
wait_socket "$SOCK" 10 "$BE_PID" || {
    KEEP=1
    die "rvhost did not listen on $SOCK (see $BE_LOG)"
}
testpmd_eal "$FE_CPU" "ab-$$"
timeout -s INT "$((SECS + 10))" "$TESTPMD" "${EAL_ARGS[@]}" \
    --vdev "$(virtio_user_vdev "$SOCK" "$MRG" "$RING")" \
    -- "${fe_args[@]}" --txpkts="$SIZE" --auto-start --stats-period 1 "${PORT_ARGS[@]}" \
    >"$FE_LOG" 2>&1 </dev/null &
FE_PID=$!
# The run: SECS seconds from the frontend's first statistics line.
for _ in $(seq 200); do
    grep -q "pps:" "$FE_LOG" 2>/dev/null && break
    kill -0 "$FE_PID" 2>/dev/null || break
    sleep 0.1
done
sleep "$SECS"
kill -INT "$FE_PID" 2>/dev/null
wait "$FE_PID" 2>/dev/null
FE_PID=""
kill -INT "$BE_PID" 2>/dev/null
wait "$BE_PID" 2>/dev/null
BE_PID=""

echo "ab-inprocess: $DIR ${SIZE}B mrg=$MRG $RING, mask $MASK, ${SECS} s in ${PERIOD} s periods" \
    "(rvhost $RVHOST)"
python3 - "$BE_LOG" "$meter" "$DROP" <<'EOF' || {
import re, statistics, sys

log, meter, drop = sys.argv[1], sys.argv[2], int(sys.argv[3])
seq, tag = [], None
for line in open(log):
    if line.startswith("AB "):
        tag = line[3]
        continue
    m = re.match(r"port 0: Rx +([\d.]+) Mpps.*\| Tx +([\d.]+) Mpps", line)
    if m and tag:
        seq.append((tag, float(m.group(1) if meter == "Rx" else m.group(2))))
        tag = None
# Periods before traffic started, then the warm-up.
while seq and seq[0][1] == 0:
    seq.pop(0)
seq = seq[drop:]
ratios = [
    seq[i][1] / ((seq[i - 1][1] + seq[i + 1][1]) / 2)
    for i in range(1, len(seq) - 1)
    if seq[i][0] == "B" and seq[i - 1][0] == "A" == seq[i + 1][0] and seq[i - 1][1] + seq[i + 1][1] > 0
]
if len(ratios) < 3:
    sys.exit(f"ab-inprocess: {len(ratios)} B periods between A periods: too few (see {log})")
a = [r for t, r in seq if t == "A"]
b = [r for t, r in seq if t == "B"]
q = statistics.quantiles(ratios, n=4)
print(f"A {statistics.mean(a):.3f} Mpps, B {statistics.mean(b):.3f} Mpps; B/A per period: "
      f"median {statistics.median(ratios):.4f}, quartiles {q[0]:.4f} {q[2]:.4f}, n {len(ratios)}")
EOF
    KEEP=1
    die "no result (logs kept in $LOGDIR)"
}
