//! The values the [`DmaEngine`](crate::DmaEngine) trait speaks in: addresses, flags, statuses,
//! reports, counters and the channel configuration.

use std::fmt;
use std::ops::{BitOr, BitOrAssign};

use crate::{DmaError, FailPolicy};

/// Largest [`ChannelConfig::ring_size`]: 2^15 jobs, so that the number of jobs in flight is
/// never ambiguous in the 16-bit ring index arithmetic.
pub const MAX_RING_SIZE: u16 = 1 << 15;

/// Largest [`ChannelConfig::max_sges`].
pub const MAX_SGES: u16 = 128;

/// An I/O virtual address: the address a DMA engine uses. For the engines of this crate
/// (`IovaMode::Va`) it is the process virtual address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct Iova(pub u64);

impl Iova {
    /// The IOVA of `ptr` when IOVA = VA. Exposes the pointer's provenance, so an engine may turn
    /// the address back into a pointer.
    #[inline]
    pub fn from_ptr<T>(ptr: *const T) -> Iova {
        Iova(ptr.expose_provenance() as u64)
    }

    /// [`Iova::from_ptr`] for a `*mut T`.
    #[inline]
    pub fn from_mut_ptr<T>(ptr: *mut T) -> Iova {
        Iova(ptr.expose_provenance() as u64)
    }

    /// This address plus `bytes` (wrapping).
    #[inline]
    #[must_use]
    pub const fn add(self, bytes: u64) -> Iova {
        Iova(self.0.wrapping_add(bytes))
    }
}

impl fmt::Debug for Iova {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Iova({:#x})", self.0)
    }
}

/// One scatter-gather entry (`struct rte_dma_sge`): `len` bytes at `addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Sge {
    /// Start of the entry.
    pub addr: Iova,
    /// Length in bytes (may be 0).
    pub len: u32,
}

impl Sge {
    /// `len` bytes at `addr`.
    #[inline]
    pub const fn new(addr: Iova, len: u32) -> Sge {
        Sge { addr, len }
    }
}

/// Flags of one job (`RTE_DMA_OP_FLAG_*`, same bit values). Combine with `|`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct OpFlags(u32);

impl OpFlags {
    /// No flag.
    pub const NONE: OpFlags = OpFlags(0);
    /// The job starts only after every earlier job of the channel has finished.
    pub const FENCE: OpFlags = OpFlags(1 << 0);
    /// Ring the doorbell after enqueueing: this job and all earlier ones are submitted.
    pub const SUBMIT: OpFlags = OpFlags(1 << 1);
    /// Hint: write the destination to the last-level cache. Ignored by the engines of this crate.
    pub const LLC: OpFlags = OpFlags(1 << 2);

    /// The raw bits.
    #[inline]
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every flag of `other` is set in `self`.
    #[inline]
    pub const fn contains(self, other: OpFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for OpFlags {
    type Output = OpFlags;
    #[inline]
    fn bitor(self, rhs: OpFlags) -> OpFlags {
        OpFlags(self.0 | rhs.0)
    }
}

impl BitOrAssign for OpFlags {
    #[inline]
    fn bitor_assign(&mut self, rhs: OpFlags) {
        self.0 |= rhs.0;
    }
}

impl fmt::Debug for OpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (Self::FENCE, "FENCE"),
            (Self::SUBMIT, "SUBMIT"),
            (Self::LLC, "LLC"),
        ];
        let mut list = f.debug_set();
        for (flag, name) in names {
            if self.contains(flag) {
                list.entry(&format_args!("{name}"));
            }
        }
        let unknown = self.0 & !(Self::FENCE.0 | Self::SUBMIT.0 | Self::LLC.0);
        if unknown != 0 {
            list.entry(&format_args!("{unknown:#x}"));
        }
        list.finish()
    }
}

/// Outcome of one job (`enum rte_dma_status_code`, same values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u16)]
pub enum Status {
    /// The job completed successfully.
    #[default]
    Successful = 0,
    /// Aborted by the user.
    UserAbort = 1,
    /// Not attempted because of an earlier failure.
    NotAttempted = 2,
    /// Bad source address.
    InvalidSrcAddr = 3,
    /// Bad destination address.
    InvalidDstAddr = 4,
    /// Bad address (source or destination).
    InvalidAddr = 5,
    /// Bad length.
    InvalidLength = 6,
    /// Bad opcode.
    InvalidOpcode = 7,
    /// Bus error while reading.
    BusReadError = 8,
    /// Bus data error.
    BusDataError = 9,
    /// Bus error while writing.
    BusWriteError = 10,
    /// Poisoned data.
    DataPoison = 11,
    /// Page fault.
    PageFault = 12,
    /// Device link error.
    DevLinkError = 13,
    /// Any other error (also what an unknown code decodes to).
    ErrorUnknown = 0x100,
}

impl Status {
    /// The numeric code (`rte_dma_status_code` value).
    #[inline]
    pub const fn code(self) -> u16 {
        self as u16
    }

    /// The status of a numeric code; unknown codes become [`Status::ErrorUnknown`].
    pub const fn from_code(code: u16) -> Status {
        use Status::*;
        match code {
            0 => Successful,
            1 => UserAbort,
            2 => NotAttempted,
            3 => InvalidSrcAddr,
            4 => InvalidDstAddr,
            5 => InvalidAddr,
            6 => InvalidLength,
            7 => InvalidOpcode,
            8 => BusReadError,
            9 => BusDataError,
            10 => BusWriteError,
            11 => DataPoison,
            12 => PageFault,
            13 => DevLinkError,
            _ => ErrorUnknown,
        }
    }

    /// Whether this is [`Status::Successful`].
    #[inline]
    pub const fn is_ok(self) -> bool {
        matches!(self, Status::Successful)
    }
}

/// What [`completed`](crate::DmaEngine::completed) and
/// [`completed_status`](crate::DmaEngine::completed_status) report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Completed {
    /// Number of jobs reported by this call.
    pub count: u16,
    /// Ring index of the last job reported so far (`0xffff` before the first report).
    pub last_idx: u16,
    /// `completed`: the job after `last_idx` failed and is waiting for `completed_status`.
    /// `completed_status`: at least one reported job failed.
    pub has_error: bool,
}

/// Counters of one channel (`struct rte_dma_stats`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Stats {
    /// Jobs made visible to the engine by a submit.
    pub submitted: u64,
    /// Jobs reported, successful or failed.
    pub completed: u64,
    /// Jobs reported as failed.
    pub errors: u64,
}

/// Configuration of one channel, for every engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelConfig {
    /// The most jobs in flight (enqueued and not yet reported): a power of two in
    /// `1..=`[`MAX_RING_SIZE`] (dmadev's `nb_desc`). Default 1024.
    pub ring_size: u16,
    /// The most entries on each side of a scatter-gather copy, `1..=`[`MAX_SGES`]. The soft
    /// engine reserves `ring_size * 2 * max_sges` entries (16 bytes each). Default 8.
    pub max_sges: u16,
    /// Failure injection, from the first job on (see [`FailPolicy`]). Default: never.
    pub fail: FailPolicy,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            ring_size: 1024,
            max_sges: 8,
            fail: FailPolicy::Never,
        }
    }
}

impl ChannelConfig {
    /// The default configuration with `ring_size` slots.
    pub fn new(ring_size: u16) -> Self {
        ChannelConfig {
            ring_size,
            ..Default::default()
        }
    }

    /// Checks the ranges documented on each field.
    pub fn validate(&self) -> Result<(), DmaError> {
        if !self.ring_size.is_power_of_two() || self.ring_size > MAX_RING_SIZE {
            return Err(DmaError::InvalidConfig(
                "ring_size must be a power of two in 1..=32768",
            ));
        }
        if self.max_sges == 0 || self.max_sges > MAX_SGES {
            return Err(DmaError::InvalidConfig("max_sges must be in 1..=128"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_round_trip() {
        for code in 0..=13u16 {
            assert_eq!(Status::from_code(code).code(), code);
        }
        assert_eq!(Status::from_code(0x100), Status::ErrorUnknown);
        assert_eq!(Status::from_code(77), Status::ErrorUnknown);
        assert!(Status::default().is_ok());
        assert!(!Status::PageFault.is_ok());
    }

    #[test]
    fn flags_and_config() {
        let f = OpFlags::FENCE | OpFlags::SUBMIT;
        assert!(f.contains(OpFlags::FENCE) && f.contains(OpFlags::SUBMIT));
        assert!(!f.contains(OpFlags::LLC));
        assert_eq!(f.bits(), 3);
        assert_eq!(format!("{f:?}"), "{FENCE, SUBMIT}");
        assert_eq!(format!("{:?}", Iova(0x1000).add(0x10)), "Iova(0x1010)");
        assert!(ChannelConfig::new(1).validate().is_ok());
        assert!(ChannelConfig::new(MAX_RING_SIZE).validate().is_ok());
        for bad in [0, 3, 1000, u16::MAX] {
            assert!(ChannelConfig::new(bad).validate().is_err(), "{bad}");
        }
        for max_sges in [0, MAX_SGES + 1] {
            let cfg = ChannelConfig {
                max_sges,
                ..Default::default()
            };
            assert!(cfg.validate().is_err());
        }
    }
}
