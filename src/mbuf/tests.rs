//! Unit tests of the mbuf module: pools and caches, data window bounds, chains, clones, deep
//! copies, external buffers, metadata, threads, leaks.

use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rvhost_hugepages::region::{PageSize, RegionConfig};

use super::*;

fn small() -> RegionConfig {
    RegionConfig::default().with_page_size(PageSize::Small)
}

fn pool(name: &str, count: usize, data_room: usize, cache: usize) -> PktPool {
    PktPool::new(name, count, data_room, cache, small()).unwrap()
}

/// An mbuf holding `bytes`.
fn with_data(alloc: impl PktAlloc, bytes: &[u8]) -> Mbuf {
    let mut alloc = alloc;
    let mut m = alloc.alloc_mbuf().unwrap();
    m.append(bytes.len()).unwrap();
    m.data_mut().unwrap().copy_from_slice(bytes);
    m
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
}

fn contents(m: &Mbuf) -> Vec<u8> {
    let mut v = vec![0; m.pkt_len()];
    m.read_at(0, &mut v).unwrap();
    v
}

/// A counter of free-callback runs, and an external buffer of `len` bytes that bumps it.
fn counted_ext(len: usize) -> (ExtBuf, Arc<AtomicUsize>) {
    let runs = Arc::new(AtomicUsize::new(0));
    let buf = vec![0u8; len].into_boxed_slice();
    let raw = Box::into_raw(buf);
    let addr = NonNull::new(raw.cast::<u8>()).unwrap();
    let r = Arc::clone(&runs);
    let raw = raw as *mut u8 as usize;
    let free = move || {
        r.fetch_add(1, Ordering::SeqCst);
        let raw = std::ptr::slice_from_raw_parts_mut(raw as *mut u8, len);
        // SAFETY: `raw` came from `Box::into_raw` of a `len`-byte boxed slice; the callback
        // runs once.
        drop(unsafe { Box::from_raw(raw) });
    };
    // SAFETY: the boxed slice is initialized, owned by this buffer until the callback frees it,
    // and IOVA = VA for the test.
    let ext = unsafe { ExtBuf::new(addr, addr.as_ptr() as u64, len as u32, free) };
    (ext, runs)
}

#[test]
fn thread_traits() {
    fn send<T: Send>() {}
    fn sync<T: Sync>() {}
    send::<Mbuf>();
    sync::<Mbuf>();
    send::<PktPool>();
    sync::<PktPool>();
    send::<PktCache>();
    send::<ExtBuf>();
}

#[test]
fn alloc_and_free_return_objects() {
    let p = pool("alloc", 64, DEFAULT_DATA_ROOM, 8);
    assert_eq!((p.count(), p.available(), p.in_use()), (64, 64, 0));
    assert_eq!(p.data_room(), 2176);
    let m = p.alloc().unwrap();
    assert_eq!(p.in_use(), 1);
    drop(m);
    assert_eq!(p.in_use(), 0);

    let mut cache = p.cache();
    let mut burst = Vec::with_capacity(32);
    cache.alloc_bulk(&mut burst, 32).unwrap();
    assert_eq!((burst.len(), p.in_use()), (32, 32));
    let before = burst.capacity();
    cache.free_bulk(burst.drain(..16));
    assert_eq!(p.in_use(), 16);
    assert_eq!(burst.capacity(), before, "the burst vector is kept");
    // Exhaustion: all or nothing.
    let mut more = Vec::new();
    assert_eq!(
        cache.alloc_bulk(&mut more, 49),
        Err(AllocError { requested: 49 })
    );
    assert!(more.is_empty());
    assert_eq!(p.in_use(), 16);
    cache.alloc_bulk(&mut more, 48).unwrap();
    assert_eq!(p.available(), 0);
    assert!(cache.alloc().is_err() && p.alloc().is_err());
    // More than one chunk at a time, through the pool.
    cache.free_bulk(more.drain(..).chain(burst.drain(..)));
    assert_eq!(p.in_use(), 0);
    let mut big = Vec::new();
    p.alloc_bulk(&mut big, 64).unwrap();
    assert_eq!(p.in_use(), 64);
    drop(big);
    let m = cache.alloc().unwrap();
    cache.free(m);
    drop(cache);
    assert_eq!((p.available(), p.in_use()), (64, 0));
}

#[test]
fn fresh_mbuf_and_window_bounds() {
    let p = pool("bounds", 8, DEFAULT_DATA_ROOM, 0);
    let mut m = p.alloc().unwrap();
    assert_eq!(
        (m.headroom(), m.tailroom(), m.data_len(), m.pkt_len()),
        (128, 2048, 0, 0)
    );
    assert_eq!((m.nb_segs(), m.buf_len()), (1, 2176));
    assert!(m.data().is_empty() && !m.is_shared() && !m.is_clone() && !m.has_extbuf());
    let iova = m.iova();
    let unchanged = |m: &Mbuf| (m.headroom(), m.data_len(), m.pkt_len(), m.tailroom());

    m.append(100).unwrap();
    m.data_mut().unwrap().copy_from_slice(&pattern(100, 1));
    assert_eq!(m.iova(), iova);
    let before = unchanged(&m);
    assert_eq!(
        m.append(1949),
        Err(MbufError::NoTailroom {
            requested: 1949,
            available: 1948
        })
    );
    assert_eq!(
        m.prepend(129),
        Err(MbufError::NoHeadroom {
            requested: 129,
            available: 128
        })
    );
    assert_eq!(
        m.adj(101),
        Err(MbufError::TooShort {
            requested: 101,
            available: 100
        })
    );
    assert_eq!(
        m.trim(101),
        Err(MbufError::TooShort {
            requested: 101,
            available: 100
        })
    );
    assert_eq!(m.append(usize::MAX), Err(MbufError::PktLenOverflow));
    assert!(m.prepend(usize::MAX).is_err());
    assert_eq!(unchanged(&m), before, "failed operations change nothing");
    assert_eq!(m.data(), &pattern(100, 1)[..]);

    m.prepend(14).unwrap();
    assert_eq!((m.headroom(), m.data_len(), m.pkt_len()), (114, 114, 114));
    assert_eq!(m.iova(), iova - 14, "iova follows the data start");
    m.data_mut().unwrap()[..14].fill(0xee);
    assert_eq!(&m.data()[14..], &pattern(100, 1)[..]);
    m.adj(14).unwrap();
    assert_eq!(m.data(), &pattern(100, 1)[..]);
    m.trim(50).unwrap();
    assert_eq!(m.data(), &pattern(100, 1)[..50]);
    assert_eq!((m.headroom(), m.tailroom(), m.pkt_len()), (128, 1998, 50));
    // Use the whole room.
    m.prepend(128).unwrap();
    m.append(1998).unwrap();
    assert_eq!((m.headroom(), m.tailroom(), m.data_len()), (0, 0, 2176));
    assert!(m.prepend(1).is_err() && m.append(1).is_err());
    m.adj(2176).unwrap();
    assert_eq!((m.data_len(), m.pkt_len(), m.headroom()), (0, 0, 2176));
    m.reset_headroom();
    assert_eq!((m.headroom(), m.tailroom()), (128, 2048));
    // Read and write ranges are checked.
    m.append(10).unwrap();
    let mut buf = [0u8; 11];
    assert_eq!(
        m.read_at(0, &mut buf),
        Err(MbufError::OutOfRange {
            offset: 0,
            len: 11,
            pkt_len: 10
        })
    );
    assert!(m.read_at(usize::MAX, &mut buf[..2]).is_err());
    assert!(m.write_at(5, &[0; 6]).is_err());
    m.write_at(5, &[9; 5]).unwrap();
    m.read_at(0, &mut buf[..10]).unwrap();
    assert_eq!(&buf[5..10], &[9; 5]);
}

#[test]
fn chains() {
    let p = pool("chain", 16, 256, 0);
    let mut a = with_data(&p, &pattern(100, 1));
    let b = with_data(&p, &pattern(120, 2));
    let c = with_data(&p, &pattern(80, 3));
    let mut bc = b;
    bc.chain(c).unwrap();
    assert_eq!((bc.nb_segs(), bc.pkt_len()), (2, 200));
    a.chain(bc).unwrap();
    assert_eq!((a.nb_segs(), a.pkt_len(), a.data_len()), (3, 300, 100));
    assert_eq!(p.in_use(), 3);
    let lens: Vec<_> = a.segments().map(|s| s.data_len()).collect();
    assert_eq!(lens, [100, 120, 80]);
    let mut expect = pattern(100, 1);
    expect.extend(pattern(120, 2));
    expect.extend(pattern(80, 3));
    assert_eq!(contents(&a), expect);

    // Append and trim work on the last segment; prepend and adj on the first.
    assert_eq!(a.tailroom(), 256 - 128 - 80);
    a.append(48).unwrap();
    assert_eq!((a.pkt_len(), a.tailroom()), (348, 0));
    assert!(a.append(1).is_err());
    a.trim(48).unwrap();
    assert!(a.trim(81).is_err(), "trim stays within the last segment");
    a.adj(10).unwrap();
    assert_eq!((a.pkt_len(), a.data_len()), (290, 90));
    a.prepend(10).unwrap();

    // Reads and writes across segment boundaries.
    let mut mid = [0u8; 30];
    a.read_at(90, &mut mid).unwrap();
    assert_eq!(&mid[..], &expect[90..120]);
    a.write_at(95, &[0xaa; 140]).unwrap();
    expect[95..235].fill(0xaa);
    assert_eq!(contents(&a), expect);
    for (i, mut s) in a.segments_mut().enumerate() {
        s.data_mut().unwrap()[0] = i as u8;
    }
    assert_eq!(contents(&a)[100], 1);

    // Freeing the head frees the chain.
    drop(a);
    assert_eq!(p.in_use(), 0);
    let mut x = with_data(&p, b"x");
    let y = with_data(&p, b"yy");
    x.chain(y).unwrap();
    let mut cache = p.cache();
    cache.free(x);
    drop(cache);
    assert_eq!(p.in_use(), 0);
}

#[test]
fn chain_refuses_too_many_segments() {
    // Bare headers (data room 0), doubled by clone + chain: 2^15 segments, then one more
    // doubling would make 65536.
    let hdrs = PktPool::new("hdrs", 70_000, 0, 0, small()).unwrap();
    let data = pool("data", 1, 512, 0);
    let mut m = with_data(&data, &[7; 3]);
    while m.nb_segs() < 1 << 15 {
        let c = m.clone_shallow(&hdrs).unwrap();
        m.chain(c).unwrap();
    }
    assert_eq!((m.nb_segs(), m.pkt_len()), (1 << 15, 3 << 15));
    assert_eq!(m.segments().next().unwrap().buf_refcnt(), 1 << 15);
    let c = m.clone_shallow(&hdrs).unwrap();
    let err = m.chain(c).unwrap_err();
    assert_eq!(err.tail.nb_segs(), 1 << 15, "the tail is handed back");
    assert_eq!(m.nb_segs(), 1 << 15);
    drop(err);
    drop(m);
    assert_eq!((hdrs.in_use(), data.in_use()), (0, 0));
}

#[test]
fn clones_share_data_until_the_last_goes() {
    let p = pool("direct", 8, 512, 0);
    let clones = PktPool::new("indirect", 8, 0, 0, small()).unwrap();
    for original_first in [true, false] {
        let mut m = with_data(&p, &pattern(200, 5));
        m.meta_mut().port = 3;
        m.prepend(0).unwrap();
        let c = m.clone_shallow(&clones).unwrap();
        assert!(c.is_clone() && !m.is_clone());
        assert!(m.is_shared() && c.is_shared());
        assert_eq!(m.segments().next().unwrap().buf_refcnt(), 2);
        assert_eq!(c.data(), m.data());
        assert_eq!(c.iova(), m.iova());
        assert_eq!(c.meta().port, 3);
        assert_eq!((p.in_use(), clones.in_use()), (1, 1));
        assert_eq!(m.data_mut(), Err(MbufError::Shared));
        let mut c = c;
        assert_eq!(c.data_mut(), Err(MbufError::Shared));
        assert_eq!(c.write_at(0, b"z"), Err(MbufError::Shared));
        // A clone has its own window.
        c.adj(100).unwrap();
        assert_eq!(c.data(), &pattern(200, 5)[100..]);
        assert_eq!(m.data_len(), 200);
        // A clone of the clone references the same direct buffer.
        let cc = c.clone_shallow(&clones).unwrap();
        assert_eq!(cc.segments().next().unwrap().buf_refcnt(), 3);
        drop(cc);
        if original_first {
            drop(m);
            assert_eq!(p.in_use(), 1, "the data stays for the clone");
            assert_eq!(c.data(), &pattern(200, 5)[100..]);
            // The clone holds the only reference now: it may write.
            c.data_mut().unwrap()[0] = 1;
            drop(c);
        } else {
            drop(c);
            assert!(!m.is_shared());
            assert_eq!(m.data(), &pattern(200, 5)[..]);
            m.data_mut().unwrap()[0] = 1;
            drop(m);
        }
        assert_eq!((p.in_use(), clones.in_use()), (0, 0));
    }
}

#[test]
fn clone_of_a_chain_and_mixed_pool_frees() {
    let p = pool("cdirect", 8, 256, 4);
    let clones = PktPool::new("cindirect", 8, 0, 4, small()).unwrap();
    let mut m = with_data(&p, &pattern(100, 1));
    m.chain(with_data(&p, &pattern(50, 2))).unwrap();
    let mut cache = clones.cache();
    let c = m.clone_shallow(&mut cache).unwrap();
    assert_eq!((c.nb_segs(), c.pkt_len()), (2, 150));
    assert_eq!(contents(&c), contents(&m));
    assert!(c.segments().all(|s| s.is_clone() && !s.is_writable()));
    assert_eq!((p.in_use(), clones.in_use()), (2, 2));
    // Freed through the clone pool's cache: clone headers go to it, the direct ones (whose
    // last reference goes with the clone) to their own pool.
    drop(m);
    assert_eq!(p.in_use(), 2);
    cache.free_bulk([c]);
    assert_eq!((p.in_use(), clones.in_use()), (0, 0));
    // The refill for the first clone header left 3 in the cache; the 2 clone headers joined them.
    assert_eq!(cache.len(), 5);
    // Clone allocation failure frees what was made.
    let mut long = with_data(&p, b"a");
    for _ in 0..5 {
        long.chain(with_data(&p, b"b")).unwrap();
    }
    let tiny = PktPool::new("tiny", 3, 0, 0, small()).unwrap();
    assert_eq!(
        long.clone_shallow(&tiny).unwrap_err(),
        AllocError { requested: 1 }
    );
    assert_eq!(tiny.in_use(), 0);
    assert_eq!(long.segments().next().unwrap().buf_refcnt(), 1);
    drop(long);
    drop(cache);
    assert_eq!((p.in_use(), clones.in_use()), (0, 0));
}

#[test]
fn deep_copy() {
    let src_pool = pool("src", 8, DEFAULT_DATA_ROOM, 0);
    let dst_pool = pool("dst", 16, 128 + 100, 0);
    let mut m = with_data(&src_pool, &pattern(300, 1));
    m.chain(with_data(&src_pool, &pattern(150, 2))).unwrap();
    m.meta_mut().ol_flags = OffloadFlags::TX_IPV6 | OffloadFlags::TX_TCP_SEG;
    m.meta_mut().tso_segsz = 1400;
    let c = m.copy(&dst_pool).unwrap();
    assert_eq!(
        (c.pkt_len(), c.nb_segs()),
        (450, 5),
        "100 bytes per destination segment"
    );
    assert_eq!(contents(&c), contents(&m));
    assert_eq!(c.meta(), m.meta());
    assert!(c.segments().all(|s| s.is_writable() && !s.is_clone()));
    assert!(!m.is_shared());
    let mut c = c;
    c.write_at(0, &[0; 450]).unwrap();
    assert_eq!(contents(&m)[..300], pattern(300, 1)[..]);
    // Into a pool without data room: refused, nothing leaked.
    let bare = PktPool::new("bare", 4, 0, 0, small()).unwrap();
    assert!(matches!(m.copy(&bare), Err(MbufError::NoTailroom { .. })));
    // Out of mbufs midway: refused, nothing leaked.
    let few = pool("few", 2, 128 + 100, 0);
    assert_eq!(
        m.copy(&few).unwrap_err(),
        MbufError::Alloc(AllocError { requested: 1 })
    );
    // An empty packet copies to one empty mbuf.
    let e = src_pool.alloc().unwrap().copy(&dst_pool).unwrap();
    assert_eq!((e.pkt_len(), e.nb_segs()), (0, 1));
    drop((m, c, e));
    for p in [&src_pool, &dst_pool, &bare, &few] {
        assert_eq!(p.in_use(), 0, "{}", p.name());
    }
}

#[test]
fn extbuf_callback_runs_once_when_the_last_reference_goes() {
    let p = pool("ext", 8, 256, 0);
    let clones = PktPool::new("extclones", 8, 0, 0, small()).unwrap();
    let (ext, runs) = counted_ext(9000);
    let ext_iova = ext.iova();
    let mut m = p.alloc().unwrap();
    m.append(10).unwrap();
    m.attach_extbuf(ext).unwrap();
    assert!(m.has_extbuf() && !m.is_shared());
    assert_eq!(
        (m.buf_len(), m.data_len(), m.pkt_len(), m.headroom()),
        (9000, 0, 0, 0)
    );
    m.reset_headroom();
    m.append(8000).unwrap();
    assert_eq!(m.iova(), ext_iova + 128);
    m.data_mut().unwrap().copy_from_slice(&pattern(8000, 9));
    // Clones share the external buffer.
    let c1 = m.clone_shallow(&clones).unwrap();
    let c2 = c1.clone_shallow(&clones).unwrap();
    assert!(c1.has_extbuf() && !c1.is_clone());
    assert_eq!(m.segments().next().unwrap().buf_refcnt(), 3);
    assert!(m.is_shared());
    assert_eq!(c2.data(), &pattern(8000, 9)[..]);
    drop(m);
    assert_eq!(p.in_use(), 0, "the header goes back, the buffer stays");
    drop(c1);
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert_eq!(c2.data()[..4], pattern(4, 9)[..]);
    drop(c2);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(clones.in_use(), 0);

    // Detach releases it (last reference: the callback runs) and restores the room.
    let (ext, runs) = counted_ext(100);
    let mut m = p.alloc().unwrap();
    m.attach_extbuf(ext).unwrap();
    m.append(50).unwrap();
    m.detach();
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(!m.has_extbuf());
    assert_eq!((m.buf_len(), m.headroom(), m.pkt_len()), (256, 128, 0));
    // Detaching a clone lets go of the direct buffer.
    m.append(20).unwrap();
    let mut c = m.clone_shallow(&clones).unwrap();
    c.detach();
    assert!(!c.is_clone() && !m.is_shared());
    assert_eq!(c.buf_len(), 0);
    drop((m, c));

    // An ExtBuf never attached frees on drop; a refused attach hands it back.
    let (ext, runs) = counted_ext(10);
    drop(ext);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let (ext, runs) = counted_ext(10);
    let m = with_data(&p, b"abc");
    let mut c = m.clone_shallow(&clones).unwrap();
    let err = c.attach_extbuf(ext).unwrap_err();
    assert_eq!(err.reason, MbufError::NotDirect);
    let mut m = m;
    let err = m.attach_extbuf(err.ext).unwrap_err();
    assert_eq!(
        err.reason,
        MbufError::Shared,
        "cloned: its room is referenced"
    );
    drop(c);
    m.attach_extbuf(err.ext).unwrap();
    let (ext2, runs2) = counted_ext(10);
    let err = m.attach_extbuf(ext2).unwrap_err();
    assert_eq!(err.reason, MbufError::NotDirect);
    drop(err);
    assert_eq!(runs2.load(Ordering::SeqCst), 1);
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    drop(m);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!((p.in_use(), clones.in_use()), (0, 0));

    // The safe constructor from a boxed slice.
    let ext = ExtBuf::from_boxed_slice(vec![5u8; 64].into_boxed_slice()).unwrap();
    assert_eq!((ext.len(), ext.iova()), (64, ext.addr().as_ptr() as u64));
    let mut m = p.alloc().unwrap();
    m.attach_extbuf(ext).unwrap();
    m.append(64).unwrap();
    assert_eq!(m.data(), &[5u8; 64][..]);
}

#[test]
fn offload_flags_and_metadata() {
    let f = OffloadFlags::TX_IPV4 | OffloadFlags::TX_IP_CKSUM | OffloadFlags::TX_TCP_CKSUM;
    assert!(f.contains(OffloadFlags::TX_IPV4) && !f.contains(OffloadFlags::TX_UDP_CKSUM));
    assert!(!f.contains(OffloadFlags::TX_TCP_CKSUM | OffloadFlags::TX_UDP_CKSUM));
    assert!(f.intersects(OffloadFlags::TX_MASK) && !f.intersects(OffloadFlags::RX_MASK));
    assert_eq!(OffloadFlags::from_bits(f.bits()), Some(f));
    assert_eq!(OffloadFlags::from_bits(1 << 63), None);
    assert_eq!(OffloadFlags::from_bits_retain(1 << 63).bits(), 1 << 63);
    let mut g = f;
    g.remove(OffloadFlags::TX_IP_CKSUM);
    g.set(OffloadFlags::TX_TCP_SEG, true);
    g.set(OffloadFlags::TX_IPV4, false);
    assert_eq!(g, OffloadFlags::TX_TCP_CKSUM | OffloadFlags::TX_TCP_SEG);
    assert_eq!(f - OffloadFlags::TX_IPV4, f & !OffloadFlags::TX_IPV4);
    assert_eq!(format!("{:?}", OffloadFlags::empty()), "OffloadFlags()");
    assert_eq!(
        format!(
            "{:?}",
            OffloadFlags::RX_L4_CKSUM_NONE | OffloadFlags::from_bits_retain(1 << 60)
        ),
        "OffloadFlags(RX_L4_CKSUM_NONE | 0x1000000000000000)"
    );
    for (i, (_, flag)) in OffloadFlags::NAMES.iter().enumerate() {
        assert_eq!(flag.bits().count_ones(), 1);
        assert!(OffloadFlags::ALL.contains(*flag));
        assert!(
            OffloadFlags::NAMES[..i].iter().all(|(_, o)| o != flag),
            "distinct bits"
        );
    }

    let p = pool("meta", 8, 256, 4);
    let mut cache = p.cache();
    let mut m = cache.alloc().unwrap();
    assert_eq!(*m.meta(), PktMeta::default());
    assert_eq!(m.meta().port, PORT_INVALID);
    let meta = PktMeta {
        ol_flags: OffloadFlags::RX_IP_CKSUM_GOOD
            | OffloadFlags::RX_L4_CKSUM_NONE
            | OffloadFlags::RX_LRO,
        packet_type: 0x211,
        l2_len: 14,
        l3_len: 20,
        l4_len: 32,
        tso_segsz: 1448,
        vlan_tci: 100,
        port: 1,
        hash: 0xdead_beef,
        udata64: 42,
    };
    *m.meta_mut() = meta;
    assert_eq!(*m.meta(), meta);
    assert_eq!(m.ol_flags(), meta.ol_flags);
    cache.free(m);
    // The same object comes back (LIFO cache), reset.
    let m = cache.alloc().unwrap();
    assert_eq!(*m.meta(), PktMeta::default());
    assert_eq!((m.headroom(), m.data_len()), (128, 0));
    cache.free(m);
}

#[test]
fn threads_with_caches_pass_mbufs_around() {
    use std::sync::mpsc;
    use std::time::{Duration, Instant};
    const THREADS: usize = 3;
    let p = pool("threads", 1024, 512, 32);
    let clones = PktPool::new("threadclones", 256, 0, 16, small()).unwrap();
    let until = Instant::now() + Duration::from_millis(400);
    // Each thread sends some of its mbufs to the next one, which checks and frees them.
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..THREADS).map(|_| mpsc::channel::<Mbuf>()).unzip();
    let workers: Vec<_> = rxs
        .into_iter()
        .enumerate()
        .map(|(id, rx)| {
            let tx = txs[(id + 1) % THREADS].clone();
            let (p, clones) = (p.clone(), clones.clone());
            std::thread::spawn(move || {
                let mut cache = p.cache();
                let mut ccache = clones.cache();
                let mut burst = Vec::with_capacity(64);
                let mut round = 0usize;
                let mut received = 0usize;
                while Instant::now() < until {
                    round += 1;
                    let n = 1 + round % 40;
                    if cache.alloc_bulk(&mut burst, n).is_ok() {
                        for (i, m) in burst.iter_mut().enumerate() {
                            let len = 1 + (round + i) % 300;
                            m.append(len).unwrap();
                            m.data_mut().unwrap().fill(len as u8);
                        }
                        if round % 3 == 0
                            && let Ok(c) = burst[0].clone_shallow(&mut ccache)
                        {
                            let _ = tx.send(c);
                        }
                        let _ = tx.send(burst.pop().unwrap());
                        cache.free_bulk(burst.drain(..));
                    }
                    while let Ok(m) = rx.try_recv() {
                        let len = m.pkt_len();
                        assert!(m.data().iter().all(|&b| b == len as u8), "data intact");
                        received += 1;
                        cache.free(m);
                    }
                }
                drop(tx);
                (round, received, rx)
            })
        })
        .collect();
    drop(txs);
    let mut leftovers = Vec::new();
    for w in workers {
        let (rounds, received, rx) = w.join().unwrap();
        println!("worker: {rounds} rounds, {received} mbufs received from another thread");
        leftovers.push(rx);
    }
    // Mbufs still in flight are freed here, on yet another thread.
    for rx in leftovers {
        for m in rx.try_iter() {
            drop(m);
        }
    }
    assert_eq!((p.in_use(), p.available()), (0, 1024));
    assert_eq!((clones.in_use(), clones.available()), (0, 256));
}

#[test]
fn pool_dropped_with_mbufs_out_leaks_instead_of_unmapping() {
    let p = pool("leak", 4, 256, 0);
    let mut m = with_data(&p, b"still here");
    let c = m.clone_shallow(&p).unwrap();
    drop(p);
    // The memory is still mapped: both still work and free cleanly.
    assert_eq!(c.data(), b"still here");
    m.append(2).unwrap();
    drop((m, c));
}

#[test]
fn pool_config_errors() {
    assert!(matches!(
        PktPool::new("huge-room", 4, usize::MAX, 0, small()),
        Err(PktPoolError::DataRoomTooLarge { .. })
    ));
    let e = PktPool::new("zero", 0, 256, 0, small()).unwrap_err();
    assert!(matches!(e, PktPoolError::Mempool(_)));
    assert!(std::error::Error::source(&e).is_some(), "cause kept");
    let p = pool("kind", 4, 256, 0);
    assert_eq!(p.memory_kind().0, PageSize::Small);
    let ranges = p.memory_ranges();
    assert_eq!(ranges.len(), 1);
    let m = p.alloc().unwrap();
    let (base, len) = ranges[0];
    let addr = m.data().as_ptr() as usize;
    assert!(addr >= base as usize && addr < base as usize + len);
}

#[test]
fn append_fresh_grows_a_fresh_mbuf_or_changes_nothing() {
    let p = pool("appfresh", 8, 256, 4);
    let mut m = p.alloc().unwrap();
    let room = m.tailroom();
    // SAFETY: `m` was just allocated.
    let new = unsafe { m.append_fresh(64) }.unwrap();
    assert_eq!(new.len(), 64);
    new.copy_from_slice(&pattern(64, 3));
    assert_eq!(
        (m.pkt_len(), m.data_len(), m.tailroom()),
        (64, 64, room - 64)
    );
    assert_eq!(contents(&m), pattern(64, 3));
    // More than the room left: nothing appended.
    let mut m = p.alloc().unwrap();
    // SAFETY: as above.
    assert!(unsafe { m.append_fresh(room + 1) }.is_none());
    assert_eq!((m.pkt_len(), m.data_len(), m.tailroom()), (0, 0, room));
    // SAFETY: as above.
    assert_eq!(unsafe { m.append_fresh(room) }.map(|d| d.len()), Some(room));
    assert_eq!(m.pkt_len(), room);
}

#[test]
fn append_mut_returns_the_new_bytes_of_the_last_segment() {
    let p = pool("appmut", 8, 256, 4);
    let clones = PktPool::new("appmut-c", 8, 0, 4, small()).unwrap();
    let mut m = with_data(&p, &pattern(10, 1));
    let room = m.tailroom();
    let new = m.append_mut(5).unwrap();
    assert_eq!(new.len(), 5);
    new.copy_from_slice(&[9; 5]);
    assert_eq!(m.pkt_len(), 15);
    let mut want = pattern(10, 1);
    want.extend([9; 5]);
    assert_eq!(contents(&m), want);
    // Too much: nothing changes.
    assert_eq!(
        m.append_mut(room).unwrap_err(),
        MbufError::NoTailroom {
            requested: room,
            available: room - 5
        }
    );
    assert_eq!((m.pkt_len(), m.data_len()), (15, 15));
    // A chain grows at its last segment, the head's packet length with it.
    m.chain(with_data(&p, &pattern(20, 2))).unwrap();
    m.append_mut(3).unwrap().copy_from_slice(&[7; 3]);
    assert_eq!((m.pkt_len(), m.data_len(), m.nb_segs()), (38, 15, 2));
    assert_eq!(&contents(&m)[35..], &[7; 3]);
    // A shared buffer is not written: nothing appended.
    let mut one = with_data(&p, &pattern(4, 3));
    let c = one.clone_shallow(&clones).unwrap();
    assert_eq!(one.append_mut(2).unwrap_err(), MbufError::Shared);
    assert_eq!((one.pkt_len(), one.data_len()), (4, 4));
    drop(c);
    assert_eq!(one.append_mut(2).unwrap().len(), 2);
}

#[test]
fn append_bytes_copies_in_what_it_appends() {
    let p = pool("appbytes", 4, 512, 2);
    let mut m = with_data(&p, &pattern(3, 1));
    for len in [0usize, 1, 12, 33, 64, 100] {
        let before = contents(&m);
        m.append_bytes(&pattern(len, len as u8)).unwrap();
        let mut want = before;
        want.extend(pattern(len, len as u8));
        assert_eq!(contents(&m), want, "len {len}");
    }
    let room = m.tailroom();
    let before = contents(&m);
    assert!(m.append_bytes(&vec![1u8; room + 1]).is_err());
    assert_eq!(contents(&m), before, "nothing appended");
}
