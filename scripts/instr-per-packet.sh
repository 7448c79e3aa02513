#!/usr/bin/env bash
# instr-per-packet.sh: counts the instructions a backend executes per packet, under callgrind,
# with DPDK's testpmd virtio-user as the frontend (the rows of bench-vs-dpdk.sh: g2h, h2g,
# loop-lat, loop-tput). Unlike a rate, the count does not depend on the host's state (which
# moves rates of one build 10-40% from run to run, and a backend's cycles per packet up to 2x):
# two builds, or rvhost and DPDK's vhost, compare exactly. It says nothing of cache misses and
# cross-core transfers, which a rate includes: use it to see where instructions go, and
# ab-inprocess.sh / bench-vs-dpdk.sh for what they cost.
#
# The frontend runs interactively (commands through a FIFO): once the backend has the device,
# instrumentation is turned on, forwarding starts and runs --seconds, instrumentation goes off,
# then forwarding stops. No packet moves before the window, so the backend's own count of
# packets (rvhost: its FINAL line; testpmd: its forward statistics) is the window's plus those
# forwarded while the off command reaches callgrind and those in flight at the stop: the
# figure is low by that share (1-2% of the default 30 s window). The empty polls before the
# first packet (a fraction of a second) are counted.
#
# Needs valgrind, dpdk-testpmd (apt-get install valgrind dpdk-dev), hugepages for the frontend
# and a release build of rvhost (cargo build --release; its debug info names the functions).
# The backend runs some 50x slower under callgrind: the frontend is then never the bottleneck,
# and every burst of the backend is full.

set -uo pipefail
# shellcheck source=scripts/lib/testpmd.sh
source "$(dirname "$0")/lib/testpmd.sh"

usage() {
    cat <<'EOF'
usage: scripts/instr-per-packet.sh [options]

  --backend B        rvhost or dpdk (testpmd's net_vhost; default rvhost)
  --dir D            g2h, h2g, loop-lat or loop-tput (default loop-tput)
  --ring R           split or packed (default packed)
  --mrg N            mrg_rxbuf of the frontend, 0 or 1 (default 0)
  --size BYTES       frame size (default 64)
  --seconds S        length of the counted window (default 30)
  --top N            functions listed, by instructions per packet with their callees (default 25;
                     with --annotate, also the source lines listed)
  --annotate NAME    also list, per packet, the instructions of rvhost's function whose name
                     contains NAME (the one with the most instructions of its own), each with
                     its count and the source lines it came from (callgrind --dump-instr=yes);
                     0.25 a packet is once a batch of 4, 0.03 once a burst of 32
EOF
    cat <<EOF
$SHARED_USAGE
  --logs DIR         keep the logs and callgrind.out in DIR (default: a temporary dir, removed)
  -h, --help         this text
EOF
}

BACKEND=rvhost DIR=loop-tput RING=packed MRG=0 SIZE=64 SECS=30 TOP=25 ANNOTATE=""
RVHOST=target/release/rvhost TESTPMD=dpdk-testpmd BE_CPU=0 FE_CPU=1 MEM=512 LOGDIR=""
die() {
    echo "instr-per-packet: $*" >&2
    exit 1
}
while (($#)); do
    shared_option "$1" "${2-}" && shift 2 && continue
    case $1 in
    --backend) BACKEND=${2:?} && shift ;;
    --dir) DIR=${2:?} && shift ;;
    --ring) RING=${2:?} && shift ;;
    --mrg) MRG=${2:?} && shift ;;
    --size) SIZE=${2:?} && shift ;;
    --seconds) SECS=${2:?} && shift ;;
    --top) TOP=${2:?} && shift ;;
    --annotate) ANNOTATE=${2:?} && shift ;;
    -h | --help) usage && exit 0 ;;
    *) usage >&2 && exit 2 ;;
    esac
    shift
done
[[ $SECS =~ ^[0-9]+$ ]] || die "--seconds $SECS: a whole number of seconds"
[[ $MRG == 0 || $MRG == 1 ]] || die "--mrg $MRG: 0 or 1"
[[ $TOP =~ ^[0-9]+$ ]] || die "--top $TOP: a number"
command -v valgrind >/dev/null && command -v callgrind_control >/dev/null ||
    die "valgrind not found (apt-get install valgrind)"
command -v "$TESTPMD" >/dev/null || die "$TESTPMD not found (apt-get install dpdk-dev)"
case $BACKEND in
rvhost) [[ -x $RVHOST ]] || die "$RVHOST: no rvhost binary (cargo build --release)" ;;
dpdk) [[ -z $ANNOTATE ]] || die "--annotate: rvhost's functions only (--backend rvhost)" ;;
*) die "--backend $BACKEND: rvhost or dpdk" ;;
esac
[[ -z $ANNOTATE ]] || command -v objdump >/dev/null || die "--annotate needs objdump (binutils)"

# The frontend's mode and how it starts; the backend's mode; the backend's counter of the row.
case $DIR in
g2h) fe_mode=txonly start=start be_mode=rxonly meter=rx ;;
h2g) fe_mode=rxonly start=start be_mode=txonly meter=tx ;;
loop-lat) fe_mode=io start="start tx_first" be_mode=io meter=tx ;;
loop-tput) fe_mode=mac start="start tx_first 32" be_mode=io meter=tx ;;
*) die "--dir $DIR: g2h, h2g, loop-lat or loop-tput" ;;
esac
be_opts=()
case $RING in
split) ;;
packed) be_opts=(--packed) ;;
*) die "--ring $RING: split or packed" ;;
esac

KEEP=1
if [[ -z $LOGDIR ]]; then
    LOGDIR=$(mktemp -d /tmp/instr-per-packet.XXXXXX) || die "cannot make a temporary directory"
    KEEP=0
fi
mkdir -p "$LOGDIR" || die "cannot make $LOGDIR"
SOCK="$LOGDIR/ipp.sock" BE_LOG="$LOGDIR/backend.log" FE_LOG="$LOGDIR/frontend.log"
OUT="$LOGDIR/callgrind.out" FIFO="$LOGDIR/frontend.cmds"
rm -f "$SOCK" "$OUT" "$FIFO"
mkfifo "$FIFO" || die "cannot make $FIFO"

BE_PID="" FE_PID=""
cleanup() {
    exec 7>&- 2>/dev/null
    [[ -n $FE_PID ]] && kill -INT "$FE_PID" 2>/dev/null
    [[ -n $BE_PID ]] && kill -INT "$BE_PID" 2>/dev/null
    wait 2>/dev/null
    ((KEEP)) || rm -rf "$LOGDIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cg=(valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT")
# Per instruction, addresses written out whole (the parser below reads them as they are).
[[ -n $ANNOTATE ]] && cg+=(--dump-instr=yes --compress-pos=no)
if [[ $BACKEND == rvhost ]]; then
    taskset -c "$BE_CPU" "${cg[@]}" "$RVHOST" fwd --mode "$be_mode" --iface "$SOCK" \
        --lcores "$BE_CPU" --burst 32 --txpkts "$SIZE" "${be_opts[@]}" --stats-period 0 \
        >"$BE_LOG" 2>&1 &
else
    # Without hugepages: valgrind does not follow DPDK's hugepage mappings. The guest's memory
    # is the frontend's either way.
    taskset -c "$BE_CPU" "${cg[@]}" "$TESTPMD" --lcores "0@$BE_CPU,1@$BE_CPU" --no-pci \
        --no-huge -m 1024 --file-prefix "ipp-be-$$" --vdev "net_vhost0,iface=$SOCK,queues=1" \
        -- --forward-mode="$be_mode" --txpkts="$SIZE" --auto-start --stats-period 3600 \
        "${PORT_ARGS[@]}" >"$BE_LOG" 2>&1 </dev/null &
fi
BE_PID=$!
wait_socket "$SOCK" 60 "$BE_PID" || {
    KEEP=1
    die "the backend did not listen on $SOCK (see $BE_LOG)"
}

# Interactive: the commands come through the FIFO, held open (fd 7) for the whole run.
testpmd_eal "$FE_CPU" "ipp-fe-$$"
taskset -c "$FE_CPU" "$TESTPMD" "${EAL_ARGS[@]}" --vdev "$(virtio_user_vdev "$SOCK" "$MRG" "$RING")" \
    -- -i --forward-mode="$fe_mode" --txpkts="$SIZE" "${PORT_ARGS[@]}" >"$FE_LOG" 2>&1 <"$FIFO" &
FE_PID=$!
exec 7>"$FIFO"
for _ in $(seq 600); do
    grep -q "testpmd>" "$FE_LOG" 2>/dev/null && break
    kill -0 "$FE_PID" 2>/dev/null || break
    sleep 0.1
done
grep -q "testpmd>" "$FE_LOG" || {
    KEEP=1
    die "the frontend did not start (see $FE_LOG)"
}
# The backend under callgrind takes a while to finish the device's setup.
sleep 5
callgrind_control -i on "$BE_PID" >/dev/null 2>&1 || {
    KEEP=1
    die "callgrind_control could not reach the backend (pid $BE_PID; see $BE_LOG)"
}
echo "$start" >&7
sleep "$SECS"
# Off before the frontend stops: no idle poll is counted after the last packets, and the packets
# forwarded while the command reaches callgrind (some 0.1-0.5 s at 0.2-0.3 Mpps) are counted
# without their instructions: the figure is low by about that share (1-2% of a 30 s window).
callgrind_control -i off "$BE_PID" >/dev/null 2>&1
echo "stop" >&7
sleep 1
echo "quit" >&7
exec 7>&-
wait "$FE_PID" 2>/dev/null
FE_PID=""
kill -INT "$BE_PID" 2>/dev/null
wait "$BE_PID" 2>/dev/null
BE_PID=""

if [[ $BACKEND == rvhost ]]; then
    pkts=$(sed -n "s/^FINAL port=0 .*${meter}_pkts=\([0-9]*\).*/\1/p" "$BE_LOG" | tail -1)
else
    pkts=$(grep -a "${meter^^}-packets:" "$BE_LOG" | tail -1 | awk '{print $2}')
fi
[[ $pkts =~ ^[0-9]+$ && $pkts -gt 0 ]] || {
    KEEP=1
    die "no packet count in $BE_LOG"
}
echo "instr-per-packet: $BACKEND $DIR ${SIZE}B mrg=$MRG $RING, $pkts packets in ${SECS} s" \
    "(logs: $( ((KEEP)) && echo "$LOGDIR" || echo removed))"
python3 - "$OUT" "$pkts" "$TOP" "$ANNOTATE" "$(readlink -f "$RVHOST")" <<'PY'
# Each function's own instructions (its inlined code included) and with its callees (calls
# from it), from callgrind's output format: "fn=" starts a function's block, cost lines are
# "positions count" (the "positions:" line says how many: "line", or "instr line" with
# --dump-instr), and a "calls=" line makes the next cost line the cost of that call.
import bisect, re, subprocess, sys
out, pkts, top, annotate, binary = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
names, objs, own, incl = {}, {}, {}, {}
fn, ob, call, npos = None, "", False, 1
# With --annotate: each function's own count per instruction address, for rvhost's functions.
per_addr = {}
def name(s, table=names):
    m = re.match(r"\((\d+)\)(?: (.*))?", s)
    if not m:
        return s
    if m.group(2):
        table[m.group(1)] = m.group(2)
    return table.get(m.group(1), s)
for line in open(out):
    if line.startswith("positions:"):
        npos = len(line.split()) - 1
    elif line.startswith("ob="):
        ob = name(line[3:].strip(), objs)
    elif line.startswith("cob="):
        name(line[4:].strip(), objs)
    elif line.startswith("fn="):
        fn = name(line[3:].strip())
        if fn.startswith("0x"):
            # No symbol (DPDK's static functions): where it is.
            fn = f"{ob.rsplit('/', 1)[-1]}+{fn}"
    elif line.startswith("cfn="):
        name(line[4:].strip())
    elif line.startswith("calls="):
        call = True
    elif line[:1].isdigit() or line[:1] in "+-*":
        parts = line.split()
        n = int(parts[npos]) if len(parts) > npos else 0
        incl[fn] = incl.get(fn, 0) + n
        if not call:
            own[fn] = own.get(fn, 0) + n
            if annotate and ob == binary and annotate in fn:
                at = per_addr.setdefault(fn, {})
                a = int(parts[0], 16)
                at[a] = at.get(a, 0) + n
        call = False
total = sum(own.values())
if total == 0:
    sys.exit("instr-per-packet: callgrind counted nothing")
print(f"{total / pkts:8.1f} instructions per packet in all")
print("    self  +callees  function (per packet)")
shown = 0
for f, n in sorted(own.items(), key=lambda kv: -kv[1]):
    if shown >= top or n / pkts < 0.5:
        break
    print(f"{n / pkts:8.1f}  {incl.get(f, n) / pkts:8.1f}  {f}")
    shown += 1
if annotate:
    if not per_addr:
        sys.exit(f"instr-per-packet: no function of {binary} named like {annotate!r} ran")
    f = max(per_addr, key=lambda k: own.get(k, 0))
    costs = per_addr[f]
    print(f"\n{f}: {own[f] / pkts:.1f} instructions of its own per packet, by instruction")
    # Its extent from the symbol table (callgrind's addresses are the binary's own).
    lo, hi = min(costs), max(costs) + 1
    nm = subprocess.run(["nm", "-S", "-C", binary], capture_output=True, text=True).stdout
    for l in nm.splitlines():
        p = l.split(maxsplit=3)
        if len(p) == 4 and p[3] == f:
            s0, sz = int(p[0], 16), int(p[1], 16)
            if s0 <= lo < s0 + sz:
                lo, hi = s0, s0 + sz
                break
    dis = subprocess.run(["objdump", "-d", "-l", "-C", "--no-show-raw-insn",
                          f"--start-address={lo:#x}", f"--stop-address={hi:#x}", binary],
                         capture_output=True, text=True).stdout
    insn = re.compile(r"^\s*([0-9a-f]+):\s*(.*)$")
    rows, src = [], ""
    for l in dis.splitlines():
        m = insn.match(l)
        if m:
            rows.append((int(m.group(1), 16), m.group(2).strip(), src))
        elif l.startswith("/") or re.match(r"^\S+:\d+", l):
            src = l.strip()
    # A cost at an address is that of the instruction holding it (callgrind counts each
    # instruction at its own address; the floor guards against a partial listing).
    cost = {}
    starts = [r[0] for r in rows]
    for a, n in costs.items():
        i = bisect.bisect_right(starts, a) - 1
        if i >= 0:
            cost[starts[i]] = cost.get(starts[i], 0) + n
    by_src = {}
    for a, text, where in rows:
        by_src[where] = by_src.get(where, 0) + cost.get(a, 0)
    print("  per pkt  source line (the most instructions first)")
    for where, n in sorted(by_src.items(), key=lambda kv: -kv[1])[:top]:
        if n / pkts >= 0.05:
            print(f"  {n / pkts:7.2f}  {where or '(no line)'}")
    print("  per pkt  address  instruction   (source line above the instructions it gave)")
    shown_src = None
    for a, text, where in rows:
        n = cost.get(a, 0)
        if n == 0:
            continue
        if where != shown_src:
            print(f"           {where}")
            shown_src = where
        print(f"  {n / pkts:7.2f}  {a:8x}  {text}")
PY
