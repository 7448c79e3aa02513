#!/usr/bin/env bash
# Reserve 2 MiB hugepages and make sure hugetlbfs is mounted at /dev/hugepages.
#
# Usage: scripts/setup-hugepages.sh [PAGES]   (default 1024 pages = 2 GiB)
#
# Needs root. Without root it only reports the current state and exits 0, so that callers
# (CI, tests) can go on: rvhost falls back to 4 KiB pages with a warning.
set -u
pages=${1:-1024}
sys=/sys/kernel/mm/hugepages/hugepages-2048kB

report() {
  if [ -r "$sys/nr_hugepages" ]; then
    echo "hugepages: 2 MiB total=$(cat "$sys/nr_hugepages") free=$(cat "$sys/free_hugepages")"
  else
    echo "hugepages: this kernel exposes no 2 MiB hugepage pool"
  fi
  if mount | grep -q ' /dev/hugepages type hugetlbfs'; then
    echo "hugepages: hugetlbfs mounted at /dev/hugepages"
  else
    echo "hugepages: hugetlbfs is not mounted at /dev/hugepages"
  fi
}

if [ "$(id -u)" != 0 ]; then
  echo "hugepages: not root; leaving the reservation as it is"
  report
  exit 0
fi
if [ -w /proc/sys/vm/nr_hugepages ]; then
  echo "$pages" > /proc/sys/vm/nr_hugepages || echo "hugepages: could not reserve $pages pages"
fi
if ! mount | grep -q ' /dev/hugepages type hugetlbfs'; then
  mkdir -p /dev/hugepages
  mount -t hugetlbfs -o pagesize=2M nodev /dev/hugepages || echo "hugepages: could not mount hugetlbfs"
fi
report
exit 0
