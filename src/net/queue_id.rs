//! Typed queue ids: which vring a burst may touch, fixed by type.
//!
//! virtio-net numbers its vrings in pairs: vring `2q` is queue pair `q`'s *receiveq* (the
//! guest receives from it: the host **enqueues** into it) and vring `2q + 1` its *transmitq*
//! (the guest transmits into it: the host **dequeues** from it). "Rx" and "tx" here are the
//! guest's, as in the virtio spec and in DPDK's `VIRTIO_RXQ` / `VIRTIO_TXQ`; a switch port
//! that *receives* from the guest therefore dequeues from the guest's [`TxQueueId`].
//!
//! [`enqueue_burst`](super::enqueue_burst) takes an [`RxQueueId`] and
//! [`dequeue_burst`](super::dequeue_burst) a [`TxQueueId`], so a swapped pair does not
//! compile. (With raw indexes, a dequeue from vring 0 walked the guest's receive buffers as
//! if they were packets and handed them back empty: the guest lost every buffer it posted.)
//! A raw vring index, e.g. from `vring_state_changed`, is checked on the way in:
//!
//! ```
//! use rvhost::net::{QueuePair, RxQueueId, TxQueueId, QueueIdError};
//!
//! let q = QueuePair(1);
//! assert_eq!((q.rx().vring(), q.tx().vring()), (2, 3));
//! assert_eq!(TxQueueId::from_vring(3), Ok(q.tx()));
//! assert_eq!(TxQueueId::from_vring(2), Err(QueueIdError::NotTransmit(2)));
//! assert_eq!(RxQueueId::from_vring(3), Err(QueueIdError::NotReceive(3)));
//! ```
//!
//! Dequeueing from the guest's receive queue does not compile:
//!
//! ```compile_fail,E0308
//! # use rvhost::{driver::Device, mbuf::PktCache, net::{QueuePair, dequeue_burst}};
//! fn wrong(dev: &Device, cache: &mut PktCache) {
//!     let mut out = Vec::new();
//!     dequeue_burst(dev, QueuePair(0).rx(), cache, &mut out, 32);
//! }
//! ```

use std::fmt;

/// A virtio-net queue pair: receiveq `2q` and transmitq `2q + 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct QueuePair(pub u16);

impl QueuePair {
    /// The pair's receiveq (vring `2q`), the one the host enqueues into.
    #[inline]
    pub const fn rx(self) -> RxQueueId {
        RxQueueId(self)
    }

    /// The pair's transmitq (vring `2q + 1`), the one the host dequeues from.
    #[inline]
    pub const fn tx(self) -> TxQueueId {
        TxQueueId(self)
    }

    /// The pair a vring belongs to (`vring / 2`).
    #[inline]
    pub const fn of_vring(vring: usize) -> Option<QueuePair> {
        let q = vring / 2;
        if q <= u16::MAX as usize {
            Some(QueuePair(q as u16))
        } else {
            None
        }
    }
}

/// A guest's receive queue (virtio-net receiveq, vring `2q`): where
/// [`enqueue_burst`](super::enqueue_burst) puts packets for the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RxQueueId(QueuePair);

/// A guest's transmit queue (virtio-net transmitq, vring `2q + 1`): where
/// [`dequeue_burst`](super::dequeue_burst) takes the guest's packets from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TxQueueId(QueuePair);

impl RxQueueId {
    /// The vring index, `2q`.
    #[inline]
    pub const fn vring(self) -> usize {
        2 * self.0.0 as usize
    }

    /// The queue pair.
    #[inline]
    pub const fn pair(self) -> QueuePair {
        self.0
    }

    /// The receiveq with vring index `vring`, which must be even.
    pub const fn from_vring(vring: usize) -> Result<RxQueueId, QueueIdError> {
        match QueuePair::of_vring(vring) {
            Some(q) if vring % 2 == 0 => Ok(q.rx()),
            Some(_) => Err(QueueIdError::NotReceive(vring)),
            None => Err(QueueIdError::OutOfRange(vring)),
        }
    }
}

impl TxQueueId {
    /// The vring index, `2q + 1`.
    #[inline]
    pub const fn vring(self) -> usize {
        2 * self.0.0 as usize + 1
    }

    /// The queue pair.
    #[inline]
    pub const fn pair(self) -> QueuePair {
        self.0
    }

    /// The transmitq with vring index `vring`, which must be odd.
    pub const fn from_vring(vring: usize) -> Result<TxQueueId, QueueIdError> {
        match QueuePair::of_vring(vring) {
            Some(q) if vring % 2 == 1 => Ok(q.tx()),
            Some(_) => Err(QueueIdError::NotTransmit(vring)),
            None => Err(QueueIdError::OutOfRange(vring)),
        }
    }
}

/// Either kind of queue id, where a function serves both (the async channel calls).
pub trait VringId: Copy + fmt::Display {
    /// The vring index.
    fn vring(self) -> usize;
}

impl VringId for RxQueueId {
    fn vring(self) -> usize {
        RxQueueId::vring(self)
    }
}

impl VringId for TxQueueId {
    fn vring(self) -> usize {
        TxQueueId::vring(self)
    }
}

impl fmt::Display for QueuePair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "queue pair {}", self.0)
    }
}

impl fmt::Display for RxQueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "receiveq {} (vring {})", self.0.0, self.vring())
    }
}

impl fmt::Display for TxQueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "transmitq {} (vring {})", self.0.0, self.vring())
    }
}

/// A raw vring index that is not the kind of queue asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueIdError {
    /// An odd vring is a transmitq: the host dequeues from it, it cannot be enqueued into.
    #[error("vring {0} is a transmit queue (odd): enqueue goes to the even vring of a pair")]
    NotReceive(usize),
    /// An even vring is a receiveq: the host enqueues into it, it cannot be dequeued from.
    #[error("vring {0} is a receive queue (even): dequeue takes from the odd vring of a pair")]
    NotTransmit(usize),
    /// Beyond any queue pair a `u16` numbers.
    #[error("vring {0} is beyond every queue pair")]
    OutOfRange(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_and_parities() {
        for q in [0u16, 1, 7, 127, u16::MAX] {
            let p = QueuePair(q);
            assert_eq!(p.rx().vring(), 2 * usize::from(q));
            assert_eq!(p.tx().vring(), 2 * usize::from(q) + 1);
            assert_eq!(RxQueueId::from_vring(p.rx().vring()), Ok(p.rx()));
            assert_eq!(TxQueueId::from_vring(p.tx().vring()), Ok(p.tx()));
            assert_eq!(
                RxQueueId::from_vring(p.tx().vring()),
                Err(QueueIdError::NotReceive(p.tx().vring()))
            );
            assert_eq!(
                TxQueueId::from_vring(p.rx().vring()),
                Err(QueueIdError::NotTransmit(p.rx().vring()))
            );
            assert_eq!(p.rx().pair(), p);
            assert_eq!(p.tx().pair(), p);
        }
        let beyond = 2 * (usize::from(u16::MAX) + 1);
        assert_eq!(
            RxQueueId::from_vring(beyond),
            Err(QueueIdError::OutOfRange(beyond))
        );
        assert_eq!(
            TxQueueId::from_vring(beyond + 1),
            Err(QueueIdError::OutOfRange(beyond + 1))
        );
    }
}
