//! A hostile guest's hands: raw descriptors, ring indexes and used entries written and read
//! straight in the frontend's shared memory, past the frontend's own bookkeeping.

use std::sync::atomic::Ordering;

use rvhost::mbuf::{Mbuf, PktCache};
use rvhost::net::{QueuePair, dequeue_burst};

use super::Bed;

impl Bed {
    /// The guest-physical address of byte `offset` of the shared memory.
    pub fn gpa(&self, offset: usize) -> u64 {
        self.fe.layout().gpa(offset).unwrap().raw()
    }

    pub fn write(&self, offset: usize, bytes: &[u8]) {
        self.fe.shm().slice().write_at(offset, bytes).unwrap();
    }

    /// Writes descriptor `i` of `vring`'s table.
    pub fn desc(&self, vring: u16, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = self.fe.ring_info(vring).unwrap().desc.offset + 16 * usize::from(i);
        self.desc_at(at, addr, len, flags, next);
    }

    /// Writes a descriptor at byte `at` of the shared memory (e.g. in an indirect table).
    pub fn desc_at(&self, at: usize, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_ne_bytes());
        d[8..12].copy_from_slice(&len.to_ne_bytes());
        d[12..14].copy_from_slice(&flags.to_ne_bytes());
        d[14..16].copy_from_slice(&next.to_ne_bytes());
        self.write(at, &d);
    }

    /// Writes chain `head` of `vring` over `pieces` (offset in the shared memory, length), each
    /// buffer device-writable when `write`: through an indirect table at byte `table` of the
    /// shared memory, or (`None`) directly, as `head` then descriptors `first + 1..` of the
    /// ring's table.
    pub fn chain(
        &self,
        vring: u16,
        head: u16,
        pieces: &[(usize, u32)],
        write: bool,
        table: Option<usize>,
        first: u16,
    ) {
        const NEXT: u16 = 1;
        const WRITE: u16 = 2;
        const INDIRECT: u16 = 4;
        let n = pieces.len() as u16;
        let flags = |k: u16| (if write { WRITE } else { 0 }) | if k + 1 < n { NEXT } else { 0 };
        match table {
            Some(table) => {
                for (k, &(off, len)) in pieces.iter().enumerate() {
                    let k = k as u16;
                    let at = table + 16 * usize::from(k);
                    self.desc_at(at, self.gpa(off), len, flags(k), k + 1);
                }
                self.desc(vring, head, self.gpa(table), 16 * u32::from(n), INDIRECT, 0);
            }
            None => {
                let idx = |k: u16| if k == 0 { head } else { first + k };
                for (k, &(off, len)) in pieces.iter().enumerate() {
                    let k = k as u16;
                    self.desc(vring, idx(k), self.gpa(off), len, flags(k), idx(k + 1));
                }
            }
        }
    }

    /// Makes `heads` available on `vring` and publishes the new avail.idx.
    pub fn avail(&self, vring: u16, heads: &[u16]) {
        let info = self.fe.ring_info(vring).unwrap();
        let s = self.fe.shm().slice();
        let mut idx = s
            .load_u16(info.avail.offset + 2, Ordering::Relaxed)
            .unwrap();
        for &h in heads {
            let slot = usize::from(idx % info.size);
            s.write_obj(info.avail.offset + 4 + 2 * slot, h).unwrap();
            idx = idx.wrapping_add(1);
        }
        s.store_u16_release(info.avail.offset + 2, idx).unwrap();
    }

    pub fn set_avail_idx(&self, vring: u16, idx: u16) {
        let info = self.fe.ring_info(vring).unwrap();
        let s = self.fe.shm().slice();
        s.store_u16_release(info.avail.offset + 2, idx).unwrap();
    }

    /// (used.idx, [(id, len)] of the first entries); of a transmit queue (odd `vring`), once
    /// the device has published what it held back ([`release_tx`](Self::release_tx)).
    pub fn used(&self, vring: u16, n: usize) -> (u16, Vec<(u32, u32)>) {
        if vring % 2 == 1 {
            self.release_tx();
        }
        let idx = self.published(vring);
        let info = self.fe.ring_info(vring).unwrap();
        let s = self.fe.shm().slice();
        let elems = (0..n)
            .map(|k| {
                let e: [u32; 2] = s.read_obj(info.used.offset + 4 + 8 * k).unwrap();
                (e[0], e[1])
            })
            .collect();
        (idx, elems)
    }

    /// `used.idx` of `vring` as the guest sees it now (nothing released first).
    pub fn published(&self, vring: u16) -> u16 {
        let info = self.fe.ring_info(vring).unwrap();
        let s = self.fe.shm().slice();
        s.load_u16(info.used.offset + 2, Ordering::Acquire).unwrap()
    }

    /// Lets the device publish the used entries it holds back on queue pair 0's transmit
    /// queue from a guest that polls (this frontend, without `EVENT_IDX`): they go out on the
    /// first poll ~10 µs after the last chain came, so this waits 1 ms and polls once, with
    /// room for no packet.
    pub fn release_tx(&self) {
        std::thread::sleep(std::time::Duration::from_millis(1));
        let mut cache = self.pool.cache();
        let mut out = Vec::new();
        dequeue_burst(&self.dev, QueuePair(0).tx(), &mut cache, &mut out, 0);
        assert!(out.is_empty());
    }

    /// One dequeue burst from queue pair 0.
    pub fn dequeue(&self, cache: &mut PktCache) -> Vec<Mbuf> {
        let mut out = Vec::new();
        dequeue_burst(&self.dev, QueuePair(0).tx(), cache, &mut out, 32);
        out
    }

    /// (packets, bad chains, broken) of `vring`, from the lock-free counters.
    pub fn stats(&self, vring: usize) -> (u64, u64, bool) {
        let s = self.dev.vring_stats(vring).unwrap();
        (s.queue.packets, s.queue.bad_chains, s.broken)
    }
}
