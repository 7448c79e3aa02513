//! Marking the dirty log: page boundaries, empty ranges, ranges beyond the log.

use super::*;
use crate::memory::testutil::{FrontendMap, fds_named, mapped_bytes_named, memfd, unique_name};

/// A 16-byte log (128 pages: guest memory below 512 KiB) at offset 4096 of a 3-page memfd,
/// and the frontend's view of the whole file, to see every byte written.
fn log16() -> (DirtyLog, FrontendMap, String) {
    let name = unique_name("dirtylog");
    let fd = memfd(&name, 3 * 4096);
    let view = FrontendMap::new(&fd, 3 * 4096);
    let log = DirtyLog::map(fd, 16, 4096).unwrap();
    (log, view, name)
}

/// The pages marked in the log (bit `page % 8` of byte `page / 8`).
fn marked(view: &FrontendMap) -> Vec<u64> {
    let bytes = view.read(4096, 16);
    (0..128u64)
        .filter(|p| bytes[(p / 8) as usize] & (1 << (p % 8)) != 0)
        .collect()
}

/// Nothing outside the log's 16 bytes was written.
fn outside_untouched(view: &FrontendMap) {
    assert!(view.read(0, 4096).iter().all(|&b| b == 0), "before the log");
    assert!(
        view.read(4096 + 16, 8192 - 16).iter().all(|&b| b == 0),
        "after the log"
    );
}

#[test]
fn ranges_mark_exactly_their_pages() {
    let (log, view, _) = log16();
    assert_eq!(log.len(), 16);
    assert_eq!(log.covers(), 128 * LOG_PAGE);
    log.mark(0, 1);
    assert_eq!(marked(&view), [0]);
    // Last byte of page 1 only.
    log.mark(2 * LOG_PAGE - 1, 1);
    assert_eq!(marked(&view), [0, 1]);
    // Exactly one page, aligned: page 3 and not 4.
    log.mark(3 * LOG_PAGE, LOG_PAGE);
    assert_eq!(marked(&view), [0, 1, 3]);
    // Straddling a boundary by one byte each side: pages 9 and 10.
    log.mark(10 * LOG_PAGE - 1, 2);
    assert_eq!(marked(&view), [0, 1, 3, 9, 10]);
    // Across a byte of the bitmap: pages 15..=17.
    log.mark(15 * LOG_PAGE + 100, 2 * LOG_PAGE);
    assert_eq!(marked(&view), [0, 1, 3, 9, 10, 15, 16, 17]);
    // The last page the log holds.
    log.mark(127 * LOG_PAGE, LOG_PAGE);
    assert_eq!(marked(&view), [0, 1, 3, 9, 10, 15, 16, 17, 127]);
    assert_eq!(log.beyond(), 0);
    outside_untouched(&view);
}

#[test]
fn an_empty_range_marks_nothing() {
    let (log, view, _) = log16();
    log.mark(5 * LOG_PAGE, 0);
    log.mark(u64::MAX, 0);
    assert!(marked(&view).is_empty());
    assert_eq!(log.beyond(), 0);
}

#[test]
fn ranges_beyond_the_log_write_nothing_outside_it_and_are_counted() {
    let (log, view, _) = log16();
    // Reaches one page past the end: the pages inside are marked, the rest counted once.
    log.mark(126 * LOG_PAGE, 3 * LOG_PAGE);
    assert_eq!(marked(&view), [126, 127]);
    assert_eq!(log.beyond(), 1);
    // Wholly beyond, far beyond, and a range whose end overflows u64.
    log.mark(128 * LOG_PAGE, 1);
    log.mark(1 << 50, 4096);
    log.mark(u64::MAX - 10, 100);
    assert_eq!(log.beyond(), 4);
    assert_eq!(marked(&view), [126, 127]);
    // Many more, as a guest could cause: counted, and logging is rate-limited (no flood).
    for i in 0..10_000 {
        log.mark((200 + i) * LOG_PAGE, 1);
    }
    assert_eq!(log.beyond(), 10_004);
    outside_untouched(&view);
}

#[test]
fn bad_logs_are_refused_before_mapping_and_close_their_fd() {
    let name = unique_name("dirtylog-bad");
    let fd = || memfd(&name, 4096);
    for (size, offset) in [(0, 0), (16, 8192), (8192, 0), (16, u64::MAX - 8)] {
        assert!(
            DirtyLog::map(fd(), size, offset).is_err(),
            "{size} at {offset}"
        );
    }
    assert_eq!(fds_named(&name), 0);
    assert_eq!(mapped_bytes_named(&name), 0);
    let log = DirtyLog::map(fd(), 4096, 0).unwrap();
    assert_eq!(fds_named(&name), 1);
    assert!(mapped_bytes_named(&name) > 0);
    drop(log);
    assert_eq!(fds_named(&name), 0);
    assert_eq!(mapped_bytes_named(&name), 0);
}

#[test]
fn log_bytes_for_rounds_up() {
    assert_eq!(log_bytes_for(0), 0);
    assert_eq!(log_bytes_for(1), 1);
    assert_eq!(log_bytes_for(8 * LOG_PAGE), 1);
    assert_eq!(log_bytes_for(8 * LOG_PAGE + 1), 2);
    assert_eq!(log_bytes_for(64 << 20), (64 << 20) / LOG_PAGE / 8);
}

#[test]
fn marked_counts_the_bits_set_that_were_clear() {
    let (log, view, _) = log16();
    assert_eq!(log.marked(), 0);
    // Pages 2..=4, then page 4 again with page 5: one more.
    log.mark(2 * LOG_PAGE, 3 * LOG_PAGE);
    assert_eq!(log.marked(), 3);
    log.mark(4 * LOG_PAGE + 10, LOG_PAGE);
    assert_eq!(log.marked(), 4);
    // Already dirty: nothing new.
    log.mark(2 * LOG_PAGE, 10);
    assert_eq!(log.marked(), 4);
    // The frontend clears the log (it copied the pages): the next writes count again.
    view.write(4096, &[0; 16]);
    log.mark(2 * LOG_PAGE, 10);
    assert_eq!(log.marked(), 5);
    // A range reaching beyond the log counts the pages it could mark.
    log.mark(127 * LOG_PAGE, 2 * LOG_PAGE);
    assert_eq!((log.marked(), log.beyond()), (6, 1));
    assert_eq!(marked(&view), [2, 127]);
}
