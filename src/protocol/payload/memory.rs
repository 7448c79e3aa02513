//! Memory payloads: regions, the memory table, the dirty log and the
//! inflight tracking area.

use super::{Cursor, Payload, decode, invalid, size_error};
use crate::protocol::VHOST_MEMORY_BASELINE_NREGIONS;
use crate::protocol::error::ProtocolError;
use crate::protocol::policy::Size;

/// One guest memory region (32 bytes).
#[doc(alias = "VhostUserMemoryRegion")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryRegion {
    /// Guest physical address.
    pub guest_phys_addr: u64,
    /// Size in bytes.
    pub memory_size: u64,
    /// Front-end virtual address.
    pub userspace_addr: u64,
    /// Offset of the region in the fd.
    pub mmap_offset: u64,
}

impl MemoryRegion {
    /// Bytes on the wire.
    pub const WIRE_SIZE: usize = 32;

    fn read(c: &mut Cursor<'_>) -> Option<Self> {
        Some(Self {
            guest_phys_addr: c.u64()?,
            memory_size: c.u64()?,
            userspace_addr: c.u64()?,
            mmap_offset: c.u64()?,
        })
    }
}

impl Payload for MemoryRegion {
    const NAME: &'static str = "memory region";
    const SIZE: Size = Size::Exact(32);

    fn parse(buf: &[u8]) -> Result<Self, ProtocolError> {
        decode::<Self, _>(buf, Self::read)
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        for v in [
            self.guest_phys_addr,
            self.memory_size,
            self.userspace_addr,
            self.mmap_offset,
        ] {
            out.extend_from_slice(&v.to_ne_bytes());
        }
    }
}

/// `SET_MEM_TABLE`: `nregions: u32`, padding `u32`, then exactly `nregions`
/// regions (QEMU sends `8 + nregions * 32` bytes), at most
/// [`VHOST_MEMORY_BASELINE_NREGIONS`].
#[doc(alias = "VhostUserMemory")]
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemoryTable {
    /// The regions, one fd each (same order).
    pub regions: Vec<MemoryRegion>,
}

impl MemoryTable {
    /// Reads `nregions` from the first 4 bytes.
    pub fn peek_nregions(buf: &[u8]) -> Option<u32> {
        Cursor(buf).u32()
    }

    /// The payload size for `n` regions.
    pub const fn wire_size(n: usize) -> usize {
        8 + n * MemoryRegion::WIRE_SIZE
    }
}

impl Payload for MemoryTable {
    const NAME: &'static str = "memory table";
    const SIZE: Size = Size::Range(8, Self::wire_size(VHOST_MEMORY_BASELINE_NREGIONS) as u32);

    fn parse(buf: &[u8]) -> Result<Self, ProtocolError> {
        if !Self::SIZE.allows(buf.len()) {
            return Err(size_error(Self::NAME, buf.len(), Self::SIZE));
        }
        let mut c = Cursor(buf);
        let n = c.u32().unwrap_or(0);
        if n as usize > VHOST_MEMORY_BASELINE_NREGIONS {
            return Err(invalid(
                Self::NAME,
                "nregions",
                n.into(),
                "more than VHOST_MEMORY_BASELINE_NREGIONS (8)",
            ));
        }
        let want = Self::wire_size(n as usize);
        if buf.len() != want {
            return Err(size_error(Self::NAME, buf.len(), Size::Exact(want as u32)));
        }
        let _padding = c.u32();
        let mut regions = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let r = MemoryRegion::read(&mut c)
                .ok_or_else(|| size_error(Self::NAME, buf.len(), Size::Exact(want as u32)))?;
            regions.push(r);
        }
        Ok(Self { regions })
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        let n = u32::try_from(self.regions.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&n.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        for r in &self.regions {
            r.write_to(out);
        }
    }
}

/// `ADD_MEM_REG` / `REM_MEM_REG`: padding `u64` then one region (40 bytes).
#[doc(alias = "VhostUserMemRegMsg")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SingleMemRegion {
    /// The region.
    pub region: MemoryRegion,
}

impl Payload for SingleMemRegion {
    const NAME: &'static str = "single memory region";
    const SIZE: Size = Size::Exact(40);

    fn parse(buf: &[u8]) -> Result<Self, ProtocolError> {
        decode::<Self, _>(buf, |c| {
            let _padding = c.u64()?;
            Some(Self {
                region: MemoryRegion::read(c)?,
            })
        })
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&0u64.to_ne_bytes());
        self.region.write_to(out);
    }
}

/// `SET_LOG_BASE`: the log area in the attached fd. The spec's message table
/// says `u64`, but QEMU and DPDK use this 16-byte layout.
#[doc(alias = "VhostUserLog")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogInfo {
    /// Size of the log area.
    pub mmap_size: u64,
    /// Offset of the log in the fd.
    pub mmap_offset: u64,
}

impl Payload for LogInfo {
    const NAME: &'static str = "log description";
    const SIZE: Size = Size::Exact(16);

    fn parse(buf: &[u8]) -> Result<Self, ProtocolError> {
        decode::<Self, _>(buf, |c| {
            Some(Self {
                mmap_size: c.u64()?,
                mmap_offset: c.u64()?,
            })
        })
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.mmap_size.to_ne_bytes());
        out.extend_from_slice(&self.mmap_offset.to_ne_bytes());
    }
}

/// `GET/SET_INFLIGHT_FD`: 24 bytes (two `u64`, two `u16`, 4 bytes padding,
/// as C lays out `VhostUserInflight`).
#[doc(alias = "VhostUserInflight")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InflightInfo {
    /// Size of the tracking area.
    pub mmap_size: u64,
    /// Offset in the fd.
    pub mmap_offset: u64,
    /// Number of virtqueues.
    pub num_queues: u16,
    /// Size of each virtqueue.
    pub queue_size: u16,
}

impl Payload for InflightInfo {
    const NAME: &'static str = "inflight description";
    const SIZE: Size = Size::Exact(24);

    fn parse(buf: &[u8]) -> Result<Self, ProtocolError> {
        decode::<Self, _>(buf, |c| {
            Some(Self {
                mmap_size: c.u64()?,
                mmap_offset: c.u64()?,
                num_queues: c.u16()?,
                queue_size: c.u16()?,
            })
        })
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.mmap_size.to_ne_bytes());
        out.extend_from_slice(&self.mmap_offset.to_ne_bytes());
        out.extend_from_slice(&self.num_queues.to_ne_bytes());
        out.extend_from_slice(&self.queue_size.to_ne_bytes());
        out.extend_from_slice(&[0; 4]);
    }
}
