#!/usr/bin/env bash
# Runs one of rvhost's cargo-fuzz targets (fuzz/) for a while.
#
#   scripts/fuzz.sh --list                 the targets
#   scripts/fuzz.sh TARGET SECONDS [ARGS]  run TARGET for SECONDS (ARGS go to libFuzzer)
#
# Needs the nightly toolchain (cargo +nightly); installs cargo-fuzz from crates.io if it is
# missing. The corpus is fuzz/corpus/TARGET (committed, kept small: minimize it with
# `cargo +nightly fuzz cmin TARGET` before committing); a crash is written to
# fuzz/artifacts/TARGET/ and makes this script exit non-zero. Runs under `nice -n 10`: run one
# target at a time.
set -euo pipefail
cd "$(dirname "$0")/.."

targets() {
  # The [[bin]] names of fuzz/Cargo.toml.
  sed -n '/^\[\[bin\]\]/,/^$/ s/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml
}

usage() {
  echo "usage: $0 --list | $0 TARGET SECONDS [libFuzzer args...]" >&2
  exit 2
}

[ $# -ge 1 ] || usage
if [ "$1" = --list ]; then
  targets
  exit 0
fi
[ $# -ge 2 ] || usage
target=$1
secs=$2
shift 2
targets | grep -qx "$target" || { echo "unknown target '$target'; targets: $(targets | tr '\n' ' ')" >&2; exit 2; }
case "$secs" in '' | *[!0-9]*) usage ;; esac

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzzing needs the nightly toolchain (rustup toolchain install nightly)" >&2
  exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install --quiet cargo-fuzz
fi

# The data-path targets' inputs are sequences of guest actions and bursts: long inputs from
# the start (libFuzzer otherwise grows them slowly from a few bytes) reach the bursts sooner.
opts=()
case "$target" in
  split_datapath | packed_datapath) opts=(-len_control=0 -max_len=2048) ;;
esac

mkdir -p "fuzz/corpus/$target"
cd fuzz
echo "== fuzzing $target for ${secs} s (corpus fuzz/corpus/$target)"
# -timeout: an input that takes 20 s is a hang, reported like a crash.
exec nice -n 10 cargo +nightly fuzz run "$target" "corpus/$target" -- \
  -max_total_time="$secs" -timeout=20 -print_final_stats=1 ${opts[@]+"${opts[@]}"} "$@"
