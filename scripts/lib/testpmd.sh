# shellcheck shell=bash
# Sourced by the scripts that run rvhost against DPDK's testpmd (bench-vs-dpdk.sh,
# ab-inprocess.sh, instr-per-packet.sh, frontend-profile.sh): the options they share and the
# testpmd command lines they must share for their figures to compare. Each script sets the
# defaults (RVHOST TESTPMD BE_CPU FE_CPU MEM LOGDIR) before parsing its options.

# shared_option NAME VALUE: takes one of the shared options (--rvhost, --testpmd,
# --backend-cpu, --frontend-cpu, --mem, --logs) with its value; status 1 for any other name
# (the caller parses it), so a caller's loop starts with
# `shared_option "$1" "${2-}" && shift 2 && continue`.
shared_option() {
    case $1 in
    --rvhost) RVHOST=${2:?$1 needs a value} ;;
    --testpmd) TESTPMD=${2:?$1 needs a value} ;;
    --backend-cpu) BE_CPU=${2:?$1 needs a value} ;;
    --frontend-cpu) FE_CPU=${2:?$1 needs a value} ;;
    --mem) MEM=${2:?$1 needs a value} ;;
    --logs) LOGDIR=${2:?$1 needs a value} ;;
    *) return 1 ;;
    esac
}

# The help lines of the shared options, for a script's usage text.
SHARED_USAGE='  --rvhost PATH      rvhost binary (default target/release/rvhost)
  --testpmd PATH     dpdk-testpmd binary (default dpdk-testpmd)
  --backend-cpu N    CPU of the backend (default 0)
  --frontend-cpu N   CPU of the frontend (default 1)
  --mem MB           hugepage memory (-m) of a testpmd (default 512)'

# testpmd_eal CPU PREFIX: sets EAL_ARGS to a testpmd's EAL arguments: its main and forwarding
# lcores both on CPU, no PCI device, in-memory hugepages (MEM MB) under file prefix PREFIX.
EAL_ARGS=()
testpmd_eal() {
    EAL_ARGS=(--lcores "0@$1,1@$1" --no-pci --in-memory --single-file-segments -m "$MEM"
        --file-prefix "$2")
}

# virtio_user_vdev SOCK MRG RING [SERVER]: the frontend's port, DPDK's virtio-user on the
# vhost-user socket SOCK (its server when SERVER is 1): one queue pair of 1024, mrg_rxbuf MRG,
# in_order 0, packed_vq=1 when RING is packed.
virtio_user_vdev() {
    local opts=""
    [[ ${4:-0} == 1 ]] && opts+=",server=1"
    [[ $3 == packed ]] && opts+=",packed_vq=1"
    echo "net_virtio_user0,path=$1,queues=1,queue_size=1024,mrg_rxbuf=$2,in_order=0$opts"
}

# wait_socket SOCK SECS PID: waits up to SECS seconds for the vhost-user socket SOCK to appear;
# status 1 if it does not, or if process PID (the one to listen on it) exits first.
wait_socket() {
    local sock=$1 secs=$2 pid=$3 i
    for ((i = 0; i < secs * 10; i++)); do
        [[ -S $sock ]] && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# wait_connected W FE_LOG PID...: waits (up to 30 s) until the W-th backend to connect to an
# interactive virtio-user server frontend (the swap method's) is connected: the first ends the
# frontend's start-up (its prompt in FE_LOG), each later one logs a "reconnection succeeds".
# Status 1 if that never comes, or if one of the PIDs (the backend's, the frontend's) exits.
wait_connected() {
    local w=$1 log=$2 i p
    shift 2
    for ((i = 0; i < 300; i++)); do
        if ((w == 1)); then
            grep -q "testpmd> " "$log" && return 0
        elif (($(grep -c "reconnection succeeds" "$log") >= w - 1)); then
            return 0
        fi
        for p in "$@"; do kill -0 "$p" 2>/dev/null || return 1; done
        sleep 0.1
    done
    return 1
}

# The forwarding arguments both testpmds (frontend and DPDK's vhost backend) run with.
PORT_ARGS=(--nb-cores=1 --rxd=1024 --txd=1024 --burst=32)
