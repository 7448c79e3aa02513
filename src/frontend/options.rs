//! [`FrontendOptions`]: what the front-end asks for and how it lays out its memory.

use std::time::Duration;

use super::error::FrontendError;
use crate::features::{
    VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_RING_F_EVENT_IDX, protocol,
};
use crate::protocol::Endpoint;

/// How a transmitted packet is laid out in descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TxLayout {
    /// The virtio-net header and the payload share the buffers (one descriptor when they fit
    /// in one buffer), as Linux does with `VIRTIO_F_ANY_LAYOUT` / VERSION_1.
    #[default]
    Inline,
    /// The header in a descriptor of its own, then the payload (legacy drivers' layout).
    Separate,
}

/// How the memory table is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MemTableMode {
    /// One `SET_MEM_TABLE` with every region (at most 8).
    #[default]
    SetMemTable,
    /// `GET_MAX_MEM_SLOTS`, then one `ADD_MEM_REG` per region; CONFIGURE_MEM_SLOTS must be
    /// negotiated.
    AddMemReg,
}

/// Options of a [`Frontend`](super::Frontend). Plain fields; start from `Default`.
///
/// ```
/// use rvhost::frontend::{FrontendOptions, MemTableMode};
///
/// let opts = FrontendOptions {
///     queue_pairs: 2,
///     regions: 3,
///     mem_table: MemTableMode::AddMemReg,
///     ..FrontendOptions::default()
/// };
/// assert_eq!(opts.queue_size, 256);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendOptions {
    /// Queue pairs (receive vring `2 * i`, transmit vring `2 * i + 1`), 1 to 128. More than
    /// one needs the MQ protocol feature; `VIRTIO_NET_F_MQ` is then added to the features.
    pub queue_pairs: u16,
    /// Entries per ring, a power of two up to 32768. Default 256.
    pub queue_size: u16,
    /// Virtio features wanted; the back-end's offer is intersected with them.
    /// Default `VERSION_1 | MRG_RXBUF | EVENT_IDX`. (`VHOST_USER_F_PROTOCOL_FEATURES` is
    /// added whenever the back-end offers it.)
    pub features: u64,
    /// Features the back-end must offer, else [`FrontendError::Negotiation`]. Default none.
    pub required_features: u64,
    /// Protocol features wanted (intersected with the offer).
    /// Default `MQ | REPLY_ACK | CONFIGURE_MEM_SLOTS | STATUS`.
    pub protocol_features: u64,
    /// Give the back-end kick and call eventfds; `false` sends `SET_VRING_KICK/CALL` with the
    /// no-fd flag (bit 8): the back-end polls and never calls. Default `true`.
    pub eventfds: bool,
    /// Ask the back-end for calls (interrupts) on every queue. Default `false`: queues are
    /// polled, as DPDK's virtio-user PMD does, and [`Queue::wait_call`] turns calls on only
    /// while it waits.
    ///
    /// [`Queue::wait_call`]: super::queue::Queue::wait_call
    pub interrupts: bool,
    /// Set DRIVER_OK in the final `SET_STATUS` (when STATUS is negotiated). Default `true`.
    pub driver_ok: bool,
    /// Bytes of shared memory (rounded up to the page size). Default 64 MiB.
    pub mem_size: usize,
    /// Use 4 KiB pages (a plain memfd) even when hugepages are free. Default `false`: 2 MiB
    /// hugepages when the pool has enough, else 4 KiB with one warning.
    pub force_small_pages: bool,
    /// Memory regions the shared memory is announced as, 1 to 8 with `SET_MEM_TABLE`, up to
    /// the back-end's slot count with `ADD_MEM_REG`. Default 1.
    pub regions: usize,
    /// `SET_MEM_TABLE` (default) or `ADD_MEM_REG`.
    pub mem_table: MemTableMode,
    /// Guest-physical address of the first region. Default 0.
    pub gpa_base: u64,
    /// Guest-physical hole between consecutive regions. Default 0.
    pub gpa_gap: u64,
    /// Bytes of each descriptor's buffer (receive buffers, transmit header + data). Default
    /// 2048. Packets larger than a buffer use chains.
    pub buf_size: usize,
    /// Transmit descriptor layout. Default [`TxLayout::Inline`].
    pub tx_layout: TxLayout,
    /// Initial available/used index of every ring (tests of 16-bit wrap-around). Default 0.
    pub ring_base: u16,
    /// With [`Frontend::connect`](super::Frontend::connect): keep retrying a refused or
    /// missing socket for this long. Default zero: one attempt.
    pub connect_timeout: Duration,
    /// With [`Frontend::accept`](super::Frontend::accept): wait this long for the back-end.
    /// Default 10 s.
    pub accept_timeout: Duration,
    /// Timeout of each reply. Default 5 s.
    pub reply_timeout: Duration,
    /// Dirty logging, in QEMU's role during a live migration: negotiate `VHOST_F_LOG_ALL` and
    /// the LOG_SHMFD protocol feature (both required), send a memfd log covering the guest
    /// memory with SET_LOG_BASE after the memory table, and ask every vring to log its used
    /// ring (`VHOST_VRING_F_LOG`, at the used ring's guest address). Read it with
    /// [`Frontend::dirty_log`](super::Frontend::dirty_log). Default `false`.
    pub dirty_log: bool,
    /// Postcopy, in QEMU's role on a migration's destination: negotiate the PAGEFAULT
    /// protocol feature (required), send POSTCOPY_ADVISE and POSTCOPY_LISTEN before the memory
    /// table, and send the table as QEMU does in postcopy (the back-end answers with its
    /// mapping addresses, [`Frontend::postcopy_regions`](super::Frontend::postcopy_regions);
    /// then the acknowledgement). The back-end's userfaultfd is
    /// [`Frontend::postcopy_ufd`](super::Frontend::postcopy_ufd): the caller serves its faults.
    /// Default `false`.
    pub postcopy: bool,
    /// Packed virtqueues: negotiate `VIRTIO_F_RING_PACKED` (required) and drive every queue
    /// as a packed ring (`ring_base` does not apply). Default `false`: split rings, and
    /// `VIRTIO_F_RING_PACKED` is never asked for.
    pub packed: bool,
}

impl Default for FrontendOptions {
    fn default() -> Self {
        Self {
            queue_pairs: 1,
            queue_size: 256,
            features: VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF | VIRTIO_RING_F_EVENT_IDX,
            required_features: 0,
            protocol_features: protocol::MQ
                | protocol::REPLY_ACK
                | protocol::CONFIGURE_MEM_SLOTS
                | protocol::STATUS,
            eventfds: true,
            interrupts: false,
            driver_ok: true,
            mem_size: 64 << 20,
            force_small_pages: false,
            regions: 1,
            mem_table: MemTableMode::SetMemTable,
            gpa_base: 0,
            gpa_gap: 0,
            buf_size: 2048,
            tx_layout: TxLayout::Inline,
            ring_base: 0,
            connect_timeout: Duration::ZERO,
            accept_timeout: Duration::from_secs(10),
            reply_timeout: Endpoint::DEFAULT_TIMEOUT,
            dirty_log: false,
            postcopy: false,
            packed: false,
        }
    }
}

/// Smallest buffer: a 12-byte header and some payload.
pub const MIN_BUF_SIZE: usize = 64;

impl FrontendOptions {
    /// Checks the ranges documented on each field.
    pub fn validate(&self) -> Result<(), FrontendError> {
        let bad = |option, reason: String| Err(FrontendError::InvalidOption { option, reason });
        if !(1..=128).contains(&self.queue_pairs) {
            return bad(
                "queue_pairs",
                format!("{} is not in 1..=128", self.queue_pairs),
            );
        }
        if self.queue_size == 0 || !self.queue_size.is_power_of_two() || self.queue_size > 32768 {
            return bad(
                "queue_size",
                format!("{} is not a power of two up to 32768", self.queue_size),
            );
        }
        if self.mem_size == 0 {
            return bad("mem_size", "must not be 0".into());
        }
        if self.regions == 0 {
            return bad("regions", "must not be 0".into());
        }
        if self.mem_table == MemTableMode::SetMemTable
            && self.regions > crate::protocol::VHOST_MEMORY_BASELINE_NREGIONS
        {
            return bad(
                "regions",
                format!(
                    "{} regions do not fit in SET_MEM_TABLE (at most 8); use MemTableMode::AddMemReg",
                    self.regions
                ),
            );
        }
        if self.buf_size < MIN_BUF_SIZE || u32::try_from(self.buf_size).is_err() {
            return bad(
                "buf_size",
                format!("{} is not in {MIN_BUF_SIZE}..=u32::MAX", self.buf_size),
            );
        }
        Ok(())
    }

    /// Number of vrings: two per queue pair.
    pub fn vrings(&self) -> u16 {
        self.queue_pairs * 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_ranges_are_checked() {
        FrontendOptions::default().validate().unwrap();
        let with = |f: fn(&mut FrontendOptions)| {
            let mut o = FrontendOptions::default();
            f(&mut o);
            o.validate().unwrap_err().to_string()
        };
        assert!(with(|o| o.queue_pairs = 0).contains("queue_pairs"));
        assert!(with(|o| o.queue_pairs = 129).contains("queue_pairs"));
        assert!(with(|o| o.queue_size = 100).contains("queue_size"));
        assert!(with(|o| o.regions = 9).contains("AddMemReg"));
        assert!(with(|o| o.buf_size = 10).contains("buf_size"));
        assert!(with(|o| o.mem_size = 0).contains("mem_size"));
        let mut o = FrontendOptions {
            regions: 9,
            mem_table: MemTableMode::AddMemReg,
            ..FrontendOptions::default()
        };
        o.validate().unwrap();
        o.queue_size = 32768;
        o.validate().unwrap();
        assert_eq!(o.vrings(), 2);
    }
}
