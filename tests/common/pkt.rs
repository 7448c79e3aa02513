//! Packets for the data-path tests: payloads, mbufs holding them, and their bytes back.

use rvhost::mbuf::{Mbuf, PktCache};

/// `len` bytes of a pattern that differs with `seed`.
pub fn payload(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + seed * 13) as u8).collect()
}

/// Every byte of a packet, all segments.
pub fn packet_bytes(m: &Mbuf) -> Vec<u8> {
    m.segments().flat_map(|s| s.data().to_vec()).collect()
}

/// An mbuf (chained into as many segments as needed) holding `bytes`.
pub fn mbuf_of(cache: &mut PktCache, bytes: &[u8]) -> Mbuf {
    let mut head = cache.alloc().unwrap();
    let mut rest = bytes;
    let mut first = true;
    while first || !rest.is_empty() {
        let mut m = if first {
            None
        } else {
            Some(cache.alloc().unwrap())
        };
        let target = m.as_mut().unwrap_or(&mut head);
        let n = rest.len().min(target.tailroom());
        target.append(n).unwrap();
        target.data_mut().unwrap().copy_from_slice(&rest[..n]);
        rest = &rest[n..];
        if let Some(m) = m {
            head.chain(m).unwrap();
        }
        first = false;
    }
    head
}
