//! Errors of the mbuf module.
//!
//! [`PktPoolError`] is the control-plane error (creating a pool, with the cause kept);
//! [`MbufError`] and [`AllocError`] are small and `Copy` so data-plane `Result`s stay in
//! registers.

use std::fmt;

use rvhost_hugepages::mempool::MempoolError;

use super::Mbuf;
use super::ext::ExtBuf;

/// Creating a [`PktPool`](super::PktPool) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PktPoolError {
    /// The data room does not fit the header's 32-bit buffer length.
    #[error("data room of {data_room} bytes exceeds the maximum of {max}")]
    DataRoomTooLarge {
        /// The data room asked for.
        data_room: usize,
        /// The largest data room.
        max: usize,
    },
    /// [`PktPool::new`](super::PktPool::new) was given a region size: the pool sizes its
    /// regions from the count and the data room.
    #[error(
        "the region config sets a size ({size} bytes); a pool sizes its regions itself, leave it 0"
    )]
    RegionSizeSet {
        /// The size that was set.
        size: usize,
    },
    /// The underlying mempool could not be created.
    #[error("creating the packet mempool failed")]
    Mempool(#[from] MempoolError),
}

/// The pool (and the cache used) could not supply the mbufs asked for; nothing was allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("packet pool exhausted: {requested} mbufs requested")]
pub struct AllocError {
    /// Mbufs (segments) requested.
    pub requested: usize,
}

/// A data-plane operation on an mbuf was refused; the mbuf is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MbufError {
    /// `prepend` of more bytes than the first segment's headroom.
    #[error("prepend of {requested} bytes exceeds the headroom of {available}")]
    NoHeadroom {
        /// Bytes asked for.
        requested: usize,
        /// Headroom of the first segment.
        available: usize,
    },
    /// `append` of more bytes than the last segment's tailroom.
    #[error("append of {requested} bytes exceeds the tailroom of {available}")]
    NoTailroom {
        /// Bytes asked for.
        requested: usize,
        /// Tailroom of the last segment.
        available: usize,
    },
    /// `adj` / `trim` of more bytes than the first / last segment holds.
    #[error("removing {requested} bytes from a segment of {available}")]
    TooShort {
        /// Bytes asked for.
        requested: usize,
        /// Data length of the segment.
        available: usize,
    },
    /// The packet length would not fit in 32 bits.
    #[error("packet length would overflow")]
    PktLenOverflow,
    /// The data is shared with other mbufs (clones) and so read-only.
    #[error("the data is shared with other mbufs and is read-only")]
    Shared,
    /// The operation needs a direct mbuf that is not a clone and has no external buffer.
    #[error("the mbuf is a clone or already has an external buffer")]
    NotDirect,
    /// A byte range outside the packet.
    #[error("range of {len} bytes at offset {offset} is outside the packet of {pkt_len} bytes")]
    OutOfRange {
        /// Start of the range.
        offset: usize,
        /// Length of the range.
        len: usize,
        /// Length of the packet.
        pkt_len: usize,
    },
    /// An external buffer longer than the header's 32-bit buffer length.
    #[error("external buffer of {len} bytes is too large")]
    ExtBufTooLarge {
        /// Its length.
        len: usize,
    },
    /// Allocating the mbufs of a copy or clone failed.
    #[error(transparent)]
    Alloc(#[from] AllocError),
}

/// [`Mbuf::chain`] was refused (the chain would have more than `u16::MAX` segments or a
/// packet length above `u32::MAX`); the tail is handed back.
#[derive(thiserror::Error)]
#[error("chaining would overflow the segment count or the packet length")]
pub struct ChainError {
    /// The mbuf that was to be appended.
    pub tail: Mbuf,
}

impl fmt::Debug for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainError")
            .field("tail", &self.tail)
            .finish()
    }
}

/// [`Mbuf::attach_extbuf`] was refused; the external buffer is handed back (dropping it runs
/// its free callback).
#[derive(Debug, thiserror::Error)]
#[error("cannot attach an external buffer: {reason}")]
pub struct AttachError {
    /// Why: [`MbufError::NotDirect`] or [`MbufError::Shared`].
    pub reason: MbufError,
    /// The buffer that was to be attached.
    pub ext: ExtBuf,
}
