#!/usr/bin/env bash
# bench-vs-dpdk.sh: rvhost's backend (`rvhost fwd`) against DPDK's vhost backend (testpmd with
# net_vhost), both driven by the same DPDK testpmd virtio-user frontend, runs interleaved
# (DPDK, rvhost, rvhost, DPDK, ...: the order alternates per pair) so that each pair is
# measured at the same time: on a shared VM the cache-to-cache latency between the two CPUs
# drifts from minute to minute and moves absolute numbers 2-3x; only same-time ratios mean
# anything.
#
# Rows: {g2h, h2g, loop-lat, loop-tput} x {64, 1518 bytes} x {mrg_rxbuf=1, 0}, in_order=0, on
# split rings (and with --rings, packed ones: frontend packed_vq=1, rvhost --packed; DPDK's
# backend offers packed rings by default).
#   g2h        frontend txonly, backend rxonly            meter: frontend Tx-pps
#   h2g        frontend rxonly, backend txonly            meter: frontend Rx-pps
#   loop-lat   both io, frontend --tx-first: one burst    meter: frontend Rx-pps
#              (32 packets) in flight, so each side mostly waits for the other: a latency
#              test, which the earliest publish of a burst wins
#   loop-tput  frontend mac (rewrites the Ethernet header, as a guest application would),
#              backend io, `start tx_first 32`: 32 bursts (1024 packets) in flight, so both
#              sides stay busy: the throughput-bound loopback (PVP) a loaded VM sees
# (`loopback` selects both loop kinds.) Each run lasts --seconds stats samples of the frontend
# (`--stats-period 1`); its rate is the mean of those samples after dropping the first --drop
# (warm-up). Per row: the median Mpps of each backend and the median of the per-pair ratios
# rvhost/DPDK.
#
# Host: the CPU model (/proc/cpuinfo) is printed first and written to the JSON: the VM may run
# on hosts of different makes from day to day, whose rates and ratios differ.
#
# Host state: before and after every run, `rvhost c2c` measures the one-way cache-line transfer
# latency between the two CPUs (the figure the host changes when it moves the vCPUs, and with
# it every shared-ring rate). Each pair gets the mean of its four probes; pairs whose probes
# spread more than 1.4x are "mixed" (the host moved mid-pair) and measured again, up to
# --retries times per row (a mixed pair left after that is kept and marked). The probes only
# see the edges of a run, so each run is also checked within: a run whose CPUs lost more than
# 3% of their time to steal (/proc/stat: the host ran something else on them), or whose kept
# 1 s samples spread more than 1.3x (max/min), is "unsteady", and its pair counts as mixed.
# When a row's
# unmixed pairs fall in more than one state (clusters 1.4x apart), the row's ratio is also
# given per state.
#
# --swap N measures each row differently: one frontend for the whole row, as a virtio-user
# server, and N windows of each backend connecting to it in turn (see "the swap method"
# below). Its ratios spread far less than those of separate run pairs (A/A, a build against
# itself, Intel host: medians 0.96-1.03, quartiles within about 5%), because the rings stay in
# the same memory for the whole row.
#
# Needs dpdk-testpmd (DPDK 22.11: apt-get install dpdk-dev), 2 MiB hugepages for two testpmd
# instances (2 x --mem MB; echo 1024 > /proc/sys/vm/nr_hugepages) and a release build of
# rvhost (cargo build --release).

set -uo pipefail
# shellcheck source=scripts/lib/testpmd.sh
source "$(dirname "$0")/lib/testpmd.sh"

usage() {
    cat <<'EOF'
usage: scripts/bench-vs-dpdk.sh [options]

  --pairs N          DPDK/rvhost run pairs per row (default 3)
  --seconds S        length of each run: 1 s stats samples of the frontend (default 8)
  --drop N           stats samples dropped at the start of each run (default 2)
  --dirs LIST        directions, from g2h,h2g,loop-lat,loop-tput (default all; loopback =
                     both loop kinds)
  --sizes LIST       frame sizes in bytes (default 64,1518)
  --mrg LIST         mrg_rxbuf values, from 1,0 (default 1,0)
  --rings LIST       ring layouts, from split,packed (default split)
  --quick            smoke run: 1 pair, 3 s, 64 B only (drop 1 sample)
  --rvhost PATH      rvhost binary (default target/release/rvhost)
  --testpmd PATH     dpdk-testpmd binary (default dpdk-testpmd)
  --backend-cpu N    CPU of both backends (default 0)
  --frontend-cpu N   CPU of the frontend (default 1)
  --swap N           the swap method: per row one frontend (virtio-user server) and N
                     windows of each backend connecting to it in turn, instead of --pairs
                     separate run pairs (see "the swap method" in this script)
  --retries N        pairs of a row measured again when the host moved mid-pair or a
                     run was unsteady (MIXED, UNSTEADY; default 2 per row)
  --mem MB           hugepage memory (-m) of each testpmd (default 512: two of them fit in
                     1024 pages with room for others)
  --dpdk-only        run only the DPDK backend (no rvhost; ratios are empty)
  --vs PATH          run another rvhost binary in DPDK's place (A/B of two builds: the
                     ratio is rvhost/PATH; the frontend is the same testpmd)
  --json FILE        also write the results as JSON
  --logs DIR         keep every run's output in DIR (default: a temporary dir, removed
                     unless a run failed)
  -h, --help         this text
EOF
}

PAIRS=3
SECONDS_PER_RUN=8
DROP=2
DIRS="g2h,h2g,loop-lat,loop-tput"
SIZES="64,1518"
MRGS="1,0"
RINGS="split"
RVHOST=""
TESTPMD="dpdk-testpmd"
BE_CPU=0
FE_CPU=1
MEM=512
DPDK_ONLY=0
VS=""
RETRIES=2
JSON=""
LOGDIR=""
QUICK=0
SWAP=0

die() {
    echo "bench-vs-dpdk: $*" >&2
    exit 2
}

while (($#)); do
    shared_option "$1" "${2-}" && shift 2 && continue
    case "$1" in
    --pairs) PAIRS=${2:?}; shift ;;
    --seconds) SECONDS_PER_RUN=${2:?}; shift ;;
    --drop) DROP=${2:?}; shift ;;
    --dirs) DIRS=${2:?}; shift ;;
    --sizes) SIZES=${2:?}; shift ;;
    --mrg) MRGS=${2:?}; shift ;;
    --rings) RINGS=${2:?}; shift ;;
    --quick) QUICK=1 ;;
    --swap) SWAP=${2:?}; shift ;;
    --dpdk-only) DPDK_ONLY=1 ;;
    --vs) VS=${2:?}; shift ;;
    --retries) RETRIES=${2:?}; shift ;;
    --json) JSON=${2:?}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown option $1" ;;
    esac
    shift
done

if [[ -n $VS ]]; then
    [[ -x $VS ]] || die "--vs $VS is not an executable"
    ((DPDK_ONLY)) && die "--vs and --dpdk-only do not go together"
    REF=vs REF_LABEL="base"
else
    REF=dpdk REF_LABEL="DPDK"
fi

((SWAP && DPDK_ONLY)) && die "--swap needs rvhost (not --dpdk-only)"
((SWAP == 0 || SWAP >= 2)) || die "--swap needs at least 2 rounds (its ratios span two)"
if ((QUICK)); then
    PAIRS=1
    SECONDS_PER_RUN=3
    DROP=1
    SIZES=64
fi

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
for v in PAIRS SECONDS_PER_RUN DROP BE_CPU FE_CPU MEM RETRIES SWAP; do
    is_uint "${!v}" || die "$v must be a non-negative integer, not '${!v}'"
done
((PAIRS >= 1)) || die "--pairs must be at least 1"
((SECONDS_PER_RUN > DROP)) || die "--seconds must be larger than --drop (samples are 1 s apart)"
IFS=, read -r -a DIR_LIST <<<"${DIRS//loopback/loop-lat,loop-tput}"
IFS=, read -r -a SIZE_LIST <<<"$SIZES"
IFS=, read -r -a MRG_LIST <<<"$MRGS"
IFS=, read -r -a RING_LIST <<<"$RINGS"
for r in "${RING_LIST[@]}"; do
    [[ $r == split || $r == packed ]] || die "unknown ring layout '$r' (split or packed)"
done
for d in "${DIR_LIST[@]}"; do
    [[ $d == g2h || $d == h2g || $d == loop-lat || $d == loop-tput ]] ||
        die "unknown direction '$d'"
done
for s in "${SIZE_LIST[@]}"; do
    if ! is_uint "$s" || ((s < 42 || s > 9000)); then die "size '$s' is not in 42..9000"; fi
done
for m in "${MRG_LIST[@]}"; do
    [[ $m == 0 || $m == 1 ]] || die "mrg value '$m' is not 0 or 1"
done

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$SCRIPT_DIR")
[[ -n $RVHOST ]] || RVHOST="${CARGO_TARGET_DIR:-$REPO/target}/release/rvhost"

command -v "$TESTPMD" >/dev/null || die "$TESTPMD not found (apt-get install dpdk-dev)"
[[ -x $RVHOST ]] || die "$RVHOST not found (it also runs the c2c probe): cargo build --release, or --rvhost PATH"
if ((!DPDK_ONLY)); then
    command -v taskset >/dev/null || die "taskset not found (apt-get install util-linux)"
    "$RVHOST" fwd --help >/dev/null 2>&1 ||
        die "$RVHOST has no working 'fwd' subcommand (use --dpdk-only to run the DPDK half)"
fi
"$RVHOST" c2c --cpus "$BE_CPU,$FE_CPU" --quiet >/dev/null 2>&1 ||
    die "$RVHOST c2c --cpus $BE_CPU,$FE_CPU failed (an old binary, or CPUs this process may not use)"
free_pages=$(cat /sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages 2>/dev/null || echo 0)
need_pages=$((2 * MEM / 2))
if ((free_pages < need_pages)); then
    echo "bench-vs-dpdk: warning: $free_pages free 2 MiB hugepages, two testpmd need $need_pages" \
        "(--mem $MEM each); runs may fail" >&2
fi

# --- process and file bookkeeping -----------------------------------------------------------

KEEP_LOGS=0
if [[ -n $LOGDIR ]]; then
    mkdir -p "$LOGDIR" || die "cannot create $LOGDIR"
    KEEP_LOGS=1
else
    LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/bench-vs-dpdk.XXXXXX") || die "mktemp failed"
fi
TAG="bvd$$"
SOCK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/bvd-sock.XXXXXX") || die "mktemp failed"
PIDS=()
# Every process's stdin: a FIFO we hold open read-write, so it never reads EOF (testpmd quits
# at EOF on stdin) and no writer process has to outlive anything.
mkfifo "$SOCK_DIR/stdin" || die "mkfifo failed"
exec {STDIN_FD}<>"$SOCK_DIR/stdin"

# Stops a process started by start_bg: SIGINT (testpmd and rvhost fwd print their totals and
# exit), then SIGKILL after 5 s.
stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
    kill -INT "$pid" 2>/dev/null
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 0
}

cleanup() {
    local pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do
        stop_pid "$pid"
    done
    exec {STDIN_FD}<&-
    rm -rf "$SOCK_DIR"
    if ((KEEP_LOGS)); then
        echo "logs kept in $LOGDIR" >&2
    else
        rm -rf "$LOGDIR"
    fi
}
trap cleanup EXIT
trap 'echo "bench-vs-dpdk: interrupted" >&2; exit 130' INT TERM

# Runs "$@" in the background for at most $1 seconds (SIGINT at the end, SIGKILL 5 s later),
# stdin open, output line-buffered into $2. Sets START_PID.
START_PID=
start_bg() {
    local secs=$1 log=$2
    shift 2
    : >"$log"
    timeout -k 5 -s INT "$secs" stdbuf -oL -eL "$@" <&"$STDIN_FD" >"$log" 2>&1 &
    START_PID=$!
    PIDS+=("$START_PID")
}

forget_pid() {
    local pid=$1 i
    for i in "${!PIDS[@]}"; do
        [[ ${PIDS[$i]} == "$pid" ]] && unset 'PIDS[i]'
    done
}

# --- one run ---------------------------------------------------------------------------------

# The frontend's commands for loop-tput: 32 bursts sent before forwarding starts.
printf 'start tx_first 32\n' >"$SOCK_DIR/tx_first_32" || die "cannot write $SOCK_DIR/tx_first_32"

modes() { # dir -> "frontend_mode backend_mode meter extra_frontend_args"
    case $1 in
    g2h) echo "txonly rxonly Tx-pps" ;;
    h2g) echo "rxonly txonly Rx-pps" ;;
    loop-lat) echo "io io Rx-pps --tx-first" ;;
    # Not interactive: testpmd runs the file, whose `start` comes first, then its own start
    # finds forwarding already started.
    loop-tput) echo "mac io Rx-pps --cmdline-file=$SOCK_DIR/tx_first_32" ;;
    esac
}

# One-way cache-line latency between the two CPUs in ns (rvhost c2c), or nan.
probe() {
    local ns
    ns=$("$RVHOST" c2c --cpus "$BE_CPU,$FE_CPU" --quiet 2>/dev/null) && [[ $ns =~ ^[0-9]+$ ]] &&
        echo "$ns" || echo nan
}

# "MEAN SPREAD" of a meter's samples in a testpmd log, dropping the first $DROP: their mean in
# Mpps and max/min of them; "nan nan" if none.
parse_rate() {
    local log=$1 meter=$2
    awk -v m="$meter:" -v drop="$DROP" '
        $1 == m { n++; if (n > drop) { v = $2 + 0; s += v; k++
            if (k == 1 || v < lo) lo = v
            if (k == 1 || v > hi) hi = v } }
        END {
            if (!k) { print "nan nan"; exit }
            printf "%.4f %.2f\n", s / k / 1e6, (lo > 0) ? hi / lo : 99
        }' "$log"
}

# "STEAL TOTAL" jiffies of the two CPUs from /proc/stat (steal: time the host ran something else
# on their physical CPUs while they wanted to run).
cpu_ticks() {
    awk -v a="cpu$BE_CPU" -v b="cpu$FE_CPU" '$1 == a || $1 == b {
            st += $9; for (i = 2; i <= 9; i++) t += $i }
        END { print st + 0, t + 0 }' /proc/stat
}

# Steal between two cpu_ticks readings, in percent of the two CPUs' time ("nan" if no time).
steal_pct() { # STEAL0 TOTAL0 STEAL1 TOTAL1
    awk -v s0="$1" -v t0="$2" -v s1="$3" -v t1="$4" 'BEGIN {
        if (t1 > t0) printf "%.1f\n", 100 * (s1 - s0) / (t1 - t0); else print "nan" }'
}

# Limits of a steady run: above either, the host took the CPUs away or changed under the run
# (the edge probes cannot see a change that came and went within it), and the pair is measured
# again as a MIXED one is.
MAX_STEAL_PCT=3
MAX_SPREAD=1.3

RUN_SEQ=0

# start_backend BACKEND SECS LOG SOCK PREFIX MODE SIZE RING CLIENT: the backend of a run (or a
# --swap window) on SOCK, started with start_bg (START_PID): DPDK's testpmd with net_vhost
# (BACKEND dpdk), or rvhost fwd (rvhost, or vs: the --vs binary). The vhost-user server when
# CLIENT is 0 (testpmd then prints its 1 s stats too), the client when it is 1.
start_backend() {
    local backend=$1 secs=$2 log=$3 sock=$4 prefix=$5 mode=$6 size=$7 ring=$8 client=$9
    if [[ $backend == dpdk ]]; then
        local vdev="net_vhost0,iface=$sock,queues=1" stats=(--stats-period 1)
        ((client)) && vdev+=",client=1" stats=()
        testpmd_eal "$BE_CPU" "$prefix"
        start_bg "$secs" "$log" "$TESTPMD" "${EAL_ARGS[@]}" --vdev "$vdev" \
            -- --forward-mode="$mode" --txpkts="$size" --auto-start "${stats[@]}" "${PORT_ARGS[@]}"
    else
        # The whole process on the backend CPU (its lcore pins itself there too), as testpmd's
        # --lcores '0@CPU,1@CPU' puts its main and forwarding lcores.
        local bin=$RVHOST opts=()
        [[ $backend == vs ]] && bin=$VS
        [[ $ring == packed ]] && opts+=(--packed)
        ((client)) && opts+=(--client)
        start_bg "$secs" "$log" taskset -c "$BE_CPU" "$bin" fwd --mode "$mode" --iface "$sock" \
            --lcores "$BE_CPU" --burst 32 --txpkts "$size" "${opts[@]}"
    fi
}

# frontend_args SOCK PREFIX MODE SIZE MRG RING SERVER: sets FE_ARGS to the frontend testpmd's
# arguments common to both methods: one virtio-user port on SOCK (the vhost-user server when
# SERVER is 1), forwarding MODE; each method adds how it runs and reports.
FE_ARGS=()
frontend_args() {
    local sock=$1 prefix=$2 mode=$3 size=$4 mrg=$5 ring=$6 server=$7
    testpmd_eal "$FE_CPU" "$prefix"
    FE_ARGS=("${EAL_ARGS[@]}" --vdev "$(virtio_user_vdev "$sock" "$mrg" "$ring" "$server")"
        -- --forward-mode="$mode" --txpkts="$size" "${PORT_ARGS[@]}")
}
RATE=
PROBES=()
UNSTEADY=()
# run_one BACKEND(dpdk|rvhost|vs) DIR SIZE MRG RING: sets RATE to the frontend's rate in Mpps (or nan),
# appends the c2c probes before and after the run to PROBES, and a note to UNSTEADY when the run
# was not steady (steal above MAX_STEAL_PCT, or its samples spread more than MAX_SPREAD).
# Runs in this shell (not in $(...)): the trap must see every process it starts.
run_one() {
    local backend=$1 dir=$2 size=$3 mrg=$4 ring=$5
    PROBES+=("$(probe)")
    local fe_mode be_mode meter extra
    read -r fe_mode be_mode meter extra <<<"$(modes "$dir")"
    RUN_SEQ=$((RUN_SEQ + 1))
    local id="r${RUN_SEQ}-${backend}-${dir}-${size}-mrg${mrg}-${ring}"
    local sock="$SOCK_DIR/$id.sock"
    local be_log="$LOGDIR/$id.backend.log" fe_log="$LOGDIR/$id.frontend.log"
    local be_secs=$((SECONDS_PER_RUN + 30)) be_pid fe_pid
    start_backend "$backend" "$be_secs" "$be_log" "$sock" "be-$TAG-$RUN_SEQ" "$be_mode" "$size" \
        "$ring" 0
    be_pid=$START_PID
    if [[ $backend == dpdk ]]; then
        wait_socket "$sock" 20 "$be_pid" && sleep 2
    else
        wait_socket "$sock" 20 "$be_pid" && sleep 0.5
    fi
    if [[ ! -S $sock ]]; then
        echo "bench-vs-dpdk: $id: the $backend backend did not listen on $sock (see $be_log)" >&2
        KEEP_LOGS=1
        stop_pid "$be_pid"
        forget_pid "$be_pid"
        RATE=nan
        PROBES+=("$(probe)")
        return
    fi
    frontend_args "$sock" "fe-$TAG-$RUN_SEQ" "$fe_mode" "$size" "$mrg" "$ring" 0
    # shellcheck disable=SC2086 # $extra is zero or one word
    start_bg "$((SECONDS_PER_RUN + 20))" "$fe_log" "$TESTPMD" "${FE_ARGS[@]}" --auto-start \
        --stats-period 1 $extra
    fe_pid=$START_PID
    local t0 t1
    t0=$(cpu_ticks)
    # The run ends after --seconds stats samples (1 s apart), counted from the first one, so
    # EAL start-up time does not eat into it; the timeout above is only a backstop.
    while kill -0 "$fe_pid" 2>/dev/null; do
        (($(grep -c "$meter:" "$fe_log") >= SECONDS_PER_RUN)) && break
        sleep 0.2
    done
    t1=$(cpu_ticks)
    stop_pid "$fe_pid"
    forget_pid "$fe_pid"
    stop_pid "$be_pid"
    forget_pid "$be_pid"
    rm -f "$sock"
    PROBES+=("$(probe)")
    local spread steal
    read -r RATE spread <<<"$(parse_rate "$fe_log" "$meter")"
    # shellcheck disable=SC2086 # two words each
    steal=$(steal_pct $t0 $t1)
    if awk -v st="$steal" -v sp="$spread" -v mst="$MAX_STEAL_PCT" -v msp="$MAX_SPREAD" \
        'BEGIN { exit !((st != "nan" && st + 0 > mst) || (sp != "nan" && sp + 0 > msp)) }'; then
        UNSTEADY+=("$backend: steal ${steal}%, samples spread ${spread}x")
    fi
    if [[ $RATE == nan ]]; then
        echo "bench-vs-dpdk: $id: no $meter samples after the first $DROP (see $fe_log)" >&2
        KEEP_LOGS=1
    fi
}

# Median of numbers (nan ignored); "nan" if none.
median() {
    printf '%s\n' "$@" | awk '$1 != "nan" && $1 != "" { print $1 }' | sort -g | awk '
        { v[NR] = $1 }
        END {
            if (NR == 0) { print "nan"; exit }
            if (NR % 2) printf "%.4f\n", v[(NR + 1) / 2]
            else printf "%.4f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2
        }'
}

ratio() { # rvhost dpdk -> ratio or nan
    awk -v a="$1" -v b="$2" 'BEGIN {
        if (a == "nan" || b == "nan" || b + 0 == 0) print "nan"; else printf "%.4f\n", a / b }'
}

# pair_probe PROBE...: "MEAN MIXED" of a pair's probes (nan ignored; MIXED 1 when they spread
# more than 1.4x, "nan 0" if none).
pair_probe() {
    printf '%s\n' "$@" | awk '$1 != "nan" && $1 != "" {
            v = $1 + 0; s += v; n++
            if (n == 1 || v < lo) lo = v
            if (n == 1 || v > hi) hi = v
        }
        END {
            if (!n) { print "nan 0"; exit }
            printf "%.0f %d\n", s / n, (lo > 0 && hi / lo > 1.4) ? 1 : 0
        }'
}

# states "PROBE:RATIO"...: the unmixed pairs clustered by probe (a cluster ends where a probe is
# more than 1.4x its first), one "NS:MEDIAN_RATIO:PAIRS" per cluster (NS: the cluster's median
# probe).
states() {
    printf '%s\n' "$@" | awk -F: '$1 != "nan" && $2 != "nan" { print $1, $2 }' | sort -g | awk '
        function flush(   i, j, t, m, p) {
            if (!n) return
            for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) {
                if (r[j] < r[i]) { t = r[i]; r[i] = r[j]; r[j] = t }
            }
            m = (n % 2) ? r[(n + 1) / 2] : (r[n / 2] + r[n / 2 + 1]) / 2
            p = (n % 2) ? pr[(n + 1) / 2] : (pr[n / 2] + pr[n / 2 + 1]) / 2
            printf "%s%.0f:%.4f:%d", (out++ ? " " : ""), p, m, n
            n = 0
        }
        {
            if (n && $1 > 1.4 * first) flush()
            if (!n) first = $1
            n++; pr[n] = $1; r[n] = $2
        }
        END { flush(); print "" }'
}

json_num() { # number -> JSON (nan -> null)
    if [[ $1 == nan || -z $1 ]]; then echo null; else echo "$1"; fi
}

json_list() { # numbers -> JSON array (nan -> null)
    local out="" v
    for v in "$@"; do
        [[ $v == nan ]] && v=null
        out+="${out:+, }$v"
    done
    echo "[$out]"
}

# --- the swap method (--swap N) -----------------------------------------------------------------
#
# One frontend for the whole row: testpmd's virtio-user as the vhost-user server (`server=1`,
# interactive, commands through a FIFO), and the two backends connecting to it as clients in
# turn, N windows each (DPDK, rvhost, rvhost, DPDK, ...). virtio-user sets its rings up again
# on each new connection (packed rings are reset), so every window starts from a fresh ring
# in the same frontend memory: the rings, the frontend's mbufs and its process stay where
# they are for the whole row, and only the backend changes. Separate runs differ in more
# than time (each maps new hugepages: other cache slices and sets for the rings), which is
# where much of a run pair's spread comes from on these machines.
#
# A window: the backend connects, the frontend starts forwarding (`start`, or `start
# tx_first [32]` for the loops, whose packets in flight were dropped with the old rings),
# --drop seconds of warm-up, then `show port stats 0` twice --seconds apart: the second one's
# pps is the window's rate (testpmd computes it over the time between the two). Then `stop`,
# and the backend goes. Rounds alternate (DPDK rvhost, rvhost DPDK, ...), and each two
# consecutive rounds give a ratio: the sum of their rvhost rates over the sum of their
# reference rates (see below why not window by window); the row reports the median and
# quartiles of those N - 1 ratios. The c2c probe runs before each window (nothing polls then:
# the frontend is stopped); a ratio is tagged with the mean of its four for the per-state
# split. A window whose CPUs lost more than MAX_STEAL_PCT to steal gives no ratio.

# swap_row DIR SIZE MRG RING: appends to the row's dpdk, rv, ratios, probes, mixed and tagged
# arrays, and sets SW_Q1 and SW_Q3 (quartiles of the ratios).
swap_row() {
    local dir=$1 size=$2 mrg=$3 ring=$4
    local fe_mode be_mode meter extra start_cmd=start
    read -r fe_mode be_mode meter extra <<<"$(modes "$dir")"
    case $dir in
    loop-lat) start_cmd="start tx_first" ;;
    loop-tput) start_cmd="start tx_first 32" ;;
    esac
    RUN_SEQ=$((RUN_SEQ + 1))
    local id="s${RUN_SEQ}-${dir}-${size}-mrg${mrg}-${ring}"
    local sock="$SOCK_DIR/$id.sock" fe_log="$LOGDIR/$id.frontend.log" fifo="$SOCK_DIR/$id.cmd"
    local cmd_fd fe_pid
    mkfifo "$fifo" || die "mkfifo $fifo failed"
    exec {cmd_fd}<>"$fifo"
    local windows=$((2 * SWAP)) per_window=$((SECONDS_PER_RUN + DROP + 8))
    : >"$fe_log"
    frontend_args "$sock" "fe-$TAG-$RUN_SEQ" "$fe_mode" "$size" "$mrg" "$ring" 1
    # Interactive (-i), commands from the FIFO: not start_bg, whose stdin is the shared one.
    timeout -k 5 -s INT "$((windows * per_window + 30))" stdbuf -oL -eL "$TESTPMD" \
        "${FE_ARGS[@]}" -i <&"$cmd_fd" >"$fe_log" 2>&1 &
    fe_pid=$!
    PIDS+=("$fe_pid")
    wait_socket "$sock" 30 "$fe_pid" || die "$id: the frontend did not listen on $sock (see $fe_log)"
    local order=() k w=0 backend kinds=() rates=() tags=() i
    for ((k = 1; k <= SWAP; k++)); do
        if ((k % 2)); then order+=("$REF" rvhost); else order+=(rvhost "$REF"); fi
    done
    for backend in "${order[@]}"; do
        w=$((w + 1))
        local p be_log="$LOGDIR/$id.w$w.$backend.log" be_pid rate=nan t0 t1 steal shown
        p=$(probe)
        probes+=("$p")
        mixed+=(0)
        start_backend "$backend" "$per_window" "$be_log" "$sock" "be-$TAG-$RUN_SEQ-$w" "$be_mode" \
            "$size" "$ring" 1
        be_pid=$START_PID
        if wait_connected "$w" "$fe_log" "$be_pid" "$fe_pid"; then
            sleep 0.5
            shown=$(grep -c "$meter:" "$fe_log")
            printf '%s\n' "$start_cmd" >&"$cmd_fd"
            sleep "$DROP"
            t0=$(cpu_ticks)
            printf 'show port stats 0\n' >&"$cmd_fd"
            sleep "$SECONDS_PER_RUN"
            printf 'show port stats 0\n' >&"$cmd_fd"
            t1=$(cpu_ticks)
            for ((i = 0; i < 50; i++)); do
                (($(grep -c "$meter:" "$fe_log") >= shown + 2)) && break
                sleep 0.1
            done
            printf 'stop\n' >&"$cmd_fd"
            rate=$(awk -v m="$meter:" -v n="$((shown + 2))" '$1 == m && ++k == n {
                printf "%.4f\n", $2 / 1e6 }' "$fe_log")
            [[ -n $rate ]] || rate=nan
            # shellcheck disable=SC2086 # two words each
            steal=$(steal_pct $t0 $t1)
            if [[ $steal != nan ]] && awk -v s="$steal" -v m="$MAX_STEAL_PCT" 'BEGIN { exit !(s > m) }'; then
                echo "  $id window $w ($backend): $rate Mpps, steal ${steal}%: no ratio" >&2
                rate=nan
            fi
            sleep 0.3
        else
            echo "bench-vs-dpdk: $id window $w: the $backend backend never connected (see $be_log)" >&2
            KEEP_LOGS=1
        fi
        stop_pid "$be_pid"
        forget_pid "$be_pid"
        kinds+=("$backend")
        rates+=("$rate")
        tags+=("$p")
        if [[ $backend == rvhost ]]; then rv+=("$rate"); else dpdk+=("$rate"); fi
    done
    printf 'quit\n' >&"$cmd_fd"
    stop_pid "$fe_pid"
    forget_pid "$fe_pid"
    exec {cmd_fd}<&-
    rm -f "$fifo" "$sock"
    # Per two consecutive rounds (DPDK rvhost rvhost DPDK, or rvhost DPDK DPDK rvhost): the sum
    # of their two rvhost rates over the sum of their two reference rates. A window takes
    # something from the one before it (on the Intel host, windows after a DPDK window ran up to
    # 1.5x slower, whichever backend), and two consecutive rounds hold, for each backend, one
    # window after each kind (but for the first window).
    local k2 a1 a2 b1 b2 r line=""
    for ((k2 = 0; k2 + 3 < ${#kinds[@]}; k2 += 2)); do
        a1=${rates[$k2]} a2=${rates[$((k2 + 1))]} b1=${rates[$((k2 + 2))]} b2=${rates[$((k2 + 3))]}
        # Rounds alternate d r / r d: the rvhost windows of the two are the 2nd and 3rd or the
        # 1st and 4th.
        if [[ ${kinds[$k2]} == rvhost ]]; then
            r=$(ratio_of_sums "$a1" "$b2" "$a2" "$b1")
        else
            r=$(ratio_of_sums "$a2" "$b1" "$a1" "$b2")
        fi
        ratios+=("$r")
        [[ $r != nan ]] && tagged+=("$(mean_of "${tags[$k2]}" "${tags[$((k2 + 1))]}" \
            "${tags[$((k2 + 2))]}" "${tags[$((k2 + 3))]}"):$r")
    done
    for i in "${!kinds[@]}"; do line+="${line:+ }${kinds[$i]:0:1}${rates[$i]}"; done
    read -r SW_Q1 SW_Q3 <<<"$(quartiles "${ratios[@]}")"
    echo "  $name: windows (d: $REF_LABEL, r: rvhost, Mpps) $line; ratios ${ratios[*]};" \
        "c2c ${probes[*]} ns" >&2
}

ratio_of_sums() { # R1 R2 D1 D2 -> (R1 + R2) / (D1 + D2), or nan
    awk -v a="$1" -v b="$2" -v c="$3" -v d="$4" 'BEGIN {
        if (a == "nan" || b == "nan" || c == "nan" || d == "nan" || c + d == 0) print "nan"
        else printf "%.4f\n", (a + b) / (c + d) }'
}

mean_of() { # numbers -> their mean (nan ignored; nan if none)
    printf '%s\n' "$@" | awk '$1 != "nan" && $1 != "" { s += $1; n++ }
        END { if (n) printf "%.0f\n", s / n; else print "nan" }'
}

# "Q1 Q3" of numbers (nan ignored; linear interpolation), "nan nan" if none.
quartiles() {
    printf '%s\n' "$@" | awk '$1 != "nan" && $1 != "" { print $1 }' | sort -g | awk '
        function q(p,   h, l) { h = 1 + (NR - 1) * p; l = int(h); return v[l] + (h - l) * (v[l + 1] - v[l]) }
        { v[NR] = $1 }
        END { if (!NR) { print "nan nan"; exit } v[NR + 1] = v[NR]; printf "%.4f %.4f\n", q(0.25), q(0.75) }'
}

# --- the rows --------------------------------------------------------------------------------

nrows=$((${#RING_LIST[@]} * ${#DIR_LIST[@]} * ${#SIZE_LIST[@]} * ${#MRG_LIST[@]}))
per_run=$((SECONDS_PER_RUN + 4))
((DPDK_ONLY)) && runs_per_pair=1 || runs_per_pair=2
if ((SWAP)); then
    # A DPDK window starts a testpmd (~2 s), an rvhost one ~0.5 s; each has ~1 s of commands.
    echo "bench-vs-dpdk: swap method: $nrows rows x $SWAP windows of each backend, ${SECONDS_PER_RUN} s" \
        "windows after ${DROP} s of warm-up (about" \
        "$((nrows * (SWAP * (2 * (SECONDS_PER_RUN + DROP) + 5) + 4) / 60 + 1)) min); backend CPU" \
        "$BE_CPU, frontend CPU $FE_CPU; rate = the frontend's pps over each window" >&2
else
    echo "bench-vs-dpdk: $nrows rows x $PAIRS pairs, ${SECONDS_PER_RUN} s runs (about" \
        "$((nrows * PAIRS * runs_per_pair * per_run / 60 + 1)) min); backend CPU $BE_CPU," \
        "frontend CPU $FE_CPU; rate = mean of the frontend's 1 s samples after the first $DROP" >&2
fi
# The host's CPU model: the two CPUs' latency (the probe) tells states of one host apart, the
# model tells hosts apart (an AMD host across CCDs and an Intel mesh may probe alike).
CPU_MODEL=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null)
CPU_MODEL=${CPU_MODEL:-unknown}
echo "bench-vs-dpdk: host CPU: $CPU_MODEL" >&2
((DPDK_ONLY)) || echo "bench-vs-dpdk: rvhost: $RVHOST" >&2
[[ -z $VS ]] || echo "bench-vs-dpdk: in DPDK's place (base): $VS" >&2

ROW_NAMES=() ROW_DPDK=() ROW_RV=() ROW_RATIO=() ROW_PAIRS=() ROW_PROBE=() ROW_STATES=() ROW_IQR=()
JSON_ROWS=()
for ring in "${RING_LIST[@]}"; do
    for mrg in "${MRG_LIST[@]}"; do
        for dir in "${DIR_LIST[@]}"; do
            for size in "${SIZE_LIST[@]}"; do
                name="$dir ${size}B mrg=$mrg"
                [[ $ring == packed ]] && name+=" packed"
                dpdk=() rv=() ratios=() probes=() mixed=() tagged=() retries=$RETRIES r=""
                SW_Q1=nan SW_Q3=nan
                ((SWAP)) && swap_row "$dir" "$size" "$mrg" "$ring"
                for ((p = 1; p <= (SWAP ? 0 : PAIRS); p++)); do
                    PROBES=() UNSTEADY=()
                    # Odd pairs run the reference first, even pairs rvhost first, so that a host
                    # that drifts (or reacts to what ran last) favours neither side.
                    if ((p % 2 == 0 && !DPDK_ONLY)); then
                        run_one rvhost "$dir" "$size" "$mrg" "$ring"
                        r=$RATE
                        run_one "$REF" "$dir" "$size" "$mrg" "$ring"
                        d=$RATE
                    else
                        run_one "$REF" "$dir" "$size" "$mrg" "$ring"
                        d=$RATE
                        if ((!DPDK_ONLY)); then
                            run_one rvhost "$dir" "$size" "$mrg" "$ring"
                            r=$RATE
                        fi
                    fi
                    dpdk+=("$d")
                    if ((!DPDK_ONLY)); then
                        rv+=("$r")
                        ratios+=("$(ratio "$r" "$d")")
                    fi
                    read -r pp mx <<<"$(pair_probe "${PROBES[@]}")"
                    why="MIXED"
                    if ((${#UNSTEADY[@]})); then
                        # A run was not steady: the edge probes may agree while the host took the
                        # CPUs or changed state within it. Counted as a mixed pair.
                        mx=1
                        why="UNSTEADY (${UNSTEADY[*]})"
                    fi
                    if ((mx && retries > 0)); then
                        # The host moved the vCPUs during the pair: its two runs saw different
                        # machines. Measure it again.
                        retries=$((retries - 1))
                        echo "  $name pair $p: $REF_LABEL $d Mpps, rvhost ${r:-nan} Mpps; c2c" \
                            "${PROBES[*]} ns $why: discarded, measured again" >&2
                        unset 'dpdk[-1]'
                        ((DPDK_ONLY)) || unset 'rv[-1]' 'ratios[-1]'
                        p=$((p - 1))
                        continue
                    fi
                    probes+=("$pp")
                    mixed+=("$mx")
                    ((mx)) && note=" $why" || note=""
                    if ((DPDK_ONLY)); then
                        echo "  $name pair $p: $REF_LABEL $d Mpps; c2c ${PROBES[*]} ns$note" >&2
                        continue
                    fi
                    ((mx)) || tagged+=("$pp:${ratios[-1]}")
                    echo "  $name pair $p: $REF_LABEL $d Mpps, rvhost $r Mpps, ratio ${ratios[-1]};" \
                        "c2c ${PROBES[*]} ns$note" >&2
                done
                valid=0
                for x in "${ratios[@]}"; do [[ $x != nan ]] && valid=$((valid + 1)); done
                ((DPDK_ONLY)) && valid=0
                ROW_NAMES+=("$name")
                ROW_DPDK+=("$(median "${dpdk[@]}")")
                ROW_RV+=("$(median "${rv[@]}")")
                ROW_RATIO+=("$(median "${ratios[@]}")")
                ROW_PAIRS+=("$valid")
                ROW_PROBE+=("$(median "${probes[@]}" | awk '$1 != "nan" { printf "%.0f\n", $1; next } 1')")
                st=""
                ((${#tagged[@]})) && st=$(states "${tagged[@]}")
                ROW_STATES+=("$st")
                ROW_IQR+=("$SW_Q1-$SW_Q3")
                st_json=""
                for x in $st; do
                    IFS=: read -r sn sr sp <<<"$x"
                    st_json+="${st_json:+, }{\"c2c_ns\": $sn, \"ratio\": $sr, \"pairs\": $sp}"
                done
                JSON_ROWS+=("$(printf '{"dir": "%s", "ring": "%s", "size": %s, "mrg_rxbuf": %s, "dpdk_mpps": %s, "rvhost_mpps": %s, "ratio": %s, "pairs": %s, "dpdk_runs": %s, "rvhost_runs": %s, "ratios": %s, "c2c_ns": %s, "c2c_mixed": %s, "states": [%s], "method": "%s", "ratio_q1": %s, "ratio_q3": %s}' \
                    "$dir" "$ring" "$size" "$mrg" "$(json_num "${ROW_DPDK[-1]}")" "$(json_num "${ROW_RV[-1]}")" \
                    "$(json_num "${ROW_RATIO[-1]}")" "$valid" "$(json_list "${dpdk[@]}")" \
                    "$(json_list "${rv[@]}")" "$(json_list "${ratios[@]}")" \
                    "$(json_list "${probes[@]}")" "$(json_list "${mixed[@]}")" "$st_json" \
                    "$( ((SWAP)) && echo swap || echo pairs)" "$(json_num "$SW_Q1")" "$(json_num "$SW_Q3")")")
            done
        done
    done
done

printf '\n%-31s %10s %12s %8s %6s %7s  %s\n' "row" "$REF_LABEL Mpps" "rvhost Mpps" "ratio" "pairs" \
    "c2c ns" "per state (c2c ns: ratio, pairs)"
for i in "${!ROW_NAMES[@]}"; do
    per_state=""
    # shellcheck disable=SC2086 # one word per state
    set -- ${ROW_STATES[$i]}
    if (($# > 1)); then
        for x in "$@"; do
            IFS=: read -r sn sr sp <<<"$x"
            per_state+="${per_state:+; }${sn}: $sr, $sp"
        done
    fi
    ((SWAP)) && per_state="IQR ${ROW_IQR[$i]}${per_state:+; }$per_state"
    printf '%-31s %10s %12s %8s %6s %7s  %s\n' "${ROW_NAMES[$i]}" "${ROW_DPDK[$i]}" "${ROW_RV[$i]}" \
        "${ROW_RATIO[$i]}" "${ROW_PAIRS[$i]}" "${ROW_PROBE[$i]}" "$per_state"
done
echo "(Mpps: medians over the pairs of each backend; ratio: median of the per-pair rvhost/DPDK" \
    "ratios; pairs: pairs where both runs gave samples; c2c ns: median over the pairs of the" \
    "one-way cache-line latency between the CPUs (rvhost c2c, mean of each pair's probes);" \
    "per state: when the unmixed pairs fall in states more than 1.4x apart)"
((SWAP)) && echo "(swap method: Mpps are medians over each backend's windows; ratio: median over" \
    "each two consecutive rounds of their rvhost rates' sum over their $REF_LABEL rates' sum;" \
    "pairs: such ratios; IQR: their quartiles; c2c ns: median of the probes before each window)"

if [[ -n $JSON ]]; then
    {
        printf '{\n  "tool": "bench-vs-dpdk",\n  "seconds": %s,\n  "drop": %s,\n  "pairs": %s,\n' \
            "$SECONDS_PER_RUN" "$DROP" "$PAIRS"
        printf '  "backend_cpu": %s,\n  "frontend_cpu": %s,\n' "$BE_CPU" "$FE_CPU"
        printf '  "cpu_model": "%s",\n' "${CPU_MODEL//\"/}"
        # "dpdk": the dpdk_* fields are DPDK's; else the rvhost binary that ran in its place.
        printf '  "reference": "%s",\n  "rows": [\n' "${VS:-dpdk}"
        for i in "${!JSON_ROWS[@]}"; do
            sep=","
            ((i + 1 == ${#JSON_ROWS[@]})) && sep=""
            printf '    %s%s\n' "${JSON_ROWS[$i]}" "$sep"
        done
        printf '  ]\n}\n'
    } >"$JSON" || die "cannot write $JSON"
fi
