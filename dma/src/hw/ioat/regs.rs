//! IOAT (Intel QuickData / CBDMA, version 3.x) register map, bits and descriptor layout: the
//! facts the driver and the model share. Offsets and bits are those of DPDK's
//! `drivers/dma/ioat/ioat_hw_defs.h` (one channel per PCI function, its registers at 0x80) and,
//! for CHANERR and the commands DPDK does not name, Linux's `drivers/dma/ioat/registers.h`.
//!
//! DPDK names CHANERR bit 8 "descriptor read error" and bit 10 "invalid length"; Linux names
//! them READ_DATA_ERR and CONTROL_ERR, and has LENGTH_ERR at bit 11. This crate follows Linux.

/// The BAR holding these registers (DPDK's `ioat_dmadev_create`: `mem_resource[0]`).
pub const REGS_BAR: u32 = 0;

/// Number of channels of the function (8 bits).
pub const CHANCNT: usize = 0x00;
/// log2 of the largest transfer of one descriptor (8 bits, low 5 bits used).
pub const XFERCAP: usize = 0x01;
/// Version (8 bits): major in the high nibble.
pub const CBVER: usize = 0x08;
/// Capabilities (32 bits).
pub const DMACAPABILITY: usize = 0x10;
/// Channel control (16 bits).
pub const CHANCTRL: usize = 0x80;
/// Channel command (8 bits).
pub const CHANCMD: usize = 0x84;
/// Descriptor count, the doorbell (16 bits): descriptors appended since the chain started.
pub const DMACOUNT: usize = 0x86;
/// Channel status (64 bits): state in bits 0..3, address of the last completed descriptor in
/// bits 6..64.
pub const CHANSTS: usize = 0x88;
/// Address of the first descriptor of the chain (64 bits).
pub const CHAINADDR: usize = 0x90;
/// Completion write-back address (64 bits): CHANSTS is written there.
pub const CHANCMP: usize = 0x98;
/// Channel error (32 bits, write 1 to clear).
pub const CHANERR: usize = 0xa8;
/// Channel error mask (32 bits).
pub const CHANERRMASK: usize = 0xac;

/// CHANCTRL: the channel is claimed by a driver.
pub const CHANCTRL_IN_USE: u16 = 0x0100;
/// CHANCTRL: halt on any error.
pub const CHANCTRL_ANY_ERR_ABORT_EN: u16 = 0x0008;
/// CHANCTRL: write the completion status back when halting on an error.
pub const CHANCTRL_ERR_COMPLETION_EN: u16 = 0x0004;

/// CHANCMD: reset the channel (self-clearing when done).
pub const CHANCMD_RESET: u8 = 0x20;
/// CHANCMD: resume a suspended channel.
pub const CHANCMD_RESUME: u8 = 0x10;
/// CHANCMD: suspend the channel after the current descriptor.
pub const CHANCMD_SUSPEND: u8 = 0x04;

/// CHANSTS: mask of the state field.
pub const CHANSTS_STATUS: u64 = 0x7;
/// CHANSTS state: processing descriptors.
pub const CHANSTS_ACTIVE: u64 = 0x0;
/// CHANSTS state: every descriptor up to DMACOUNT is done.
pub const CHANSTS_IDLE: u64 = 0x1;
/// CHANSTS state: suspended by CHANCMD_SUSPEND.
pub const CHANSTS_SUSPENDED: u64 = 0x2;
/// CHANSTS state: halted on an error (CHANERR says which) until reset.
pub const CHANSTS_HALTED: u64 = 0x3;
/// CHANSTS state: chain address set, waiting for DMACOUNT.
pub const CHANSTS_ARMED: u64 = 0x4;
/// CHANSTS: mask of the completed descriptor's address.
pub const CHANSTS_COMPLETED_ADDR: u64 = !0x3f;

/// CHANERR: source address error (an IOMMU fault on a read).
pub const CHANERR_SRC_ADDR: u32 = 1 << 0;
/// CHANERR: destination address error (an IOMMU fault on a write).
pub const CHANERR_DEST_ADDR: u32 = 1 << 1;
/// CHANERR: a next-descriptor address that cannot be read.
pub const CHANERR_NEXT_ADDR: u32 = 1 << 2;
/// CHANERR: a next-descriptor address not 64-byte aligned.
pub const CHANERR_NEXT_DESC_ALIGN: u32 = 1 << 3;
/// CHANERR: a bad CHAINADDR.
pub const CHANERR_CHAIN_ADDR_VALUE: u32 = 1 << 4;
/// CHANERR: a bad CHANCMD.
pub const CHANERR_CHANCMD: u32 = 1 << 5;
/// CHANERR: error reading data.
pub const CHANERR_READ_DATA: u32 = 1 << 8;
/// CHANERR: error writing data.
pub const CHANERR_WRITE_DATA: u32 = 1 << 9;
/// CHANERR: bad descriptor control field (opcode).
pub const CHANERR_CONTROL: u32 = 1 << 10;
/// CHANERR: bad transfer length.
pub const CHANERR_LENGTH: u32 = 1 << 11;
/// CHANERR: bad CHANCMP (completion address).
pub const CHANERR_COMPLETION_ADDR: u32 = 1 << 12;
/// CHANERR: bad DMACOUNT.
pub const CHANERR_DESCRIPTOR_COUNT: u32 = 1 << 18;

/// Size of a descriptor, and the alignment of descriptors and CHAINADDR.
pub const DESC_SIZE: usize = 64;
/// Descriptor: transfer size (32 bits).
pub const DESC_SIZE_OFF: usize = 0;
/// Descriptor: control (32 bits).
pub const DESC_CTL_OFF: usize = 4;
/// Descriptor: source address (64 bits).
pub const DESC_SRC_OFF: usize = 8;
/// Descriptor: destination address (64 bits).
pub const DESC_DST_OFF: usize = 16;
/// Descriptor: next descriptor's address (64 bits).
pub const DESC_NEXT_OFF: usize = 24;

/// Control: write CHANSTS to CHANCMP when this descriptor completes.
pub const CTL_COMPL_WRITE: u32 = 1 << 3;
/// Control: every descriptor up to this one completes before the next starts.
pub const CTL_FENCE: u32 = 1 << 4;
/// Control: a null descriptor (no transfer).
pub const CTL_NULL: u32 = 1 << 5;
/// Control: shift of the opcode (bits 24..32).
pub const CTL_OP_SHIFT: u32 = 24;
/// Opcode: copy.
pub const OP_COPY: u32 = 0x00;
/// Size of a null descriptor (Linux's `NULL_DESC_BUFFER_SIZE`).
pub const NULL_DESC_SIZE: u32 = 1;

/// CHANCMP must be 8-byte aligned (DPDK's `IOAT_CHANCMP_ALIGN`).
pub const CHANCMP_ALIGN: u64 = 8;

/// The name of a CHANSTS state, for logs.
pub fn state_name(state: u64) -> &'static str {
    match state & CHANSTS_STATUS {
        CHANSTS_ACTIVE => "ACTIVE",
        CHANSTS_IDLE => "IDLE",
        CHANSTS_SUSPENDED => "SUSPENDED",
        CHANSTS_HALTED => "HALTED",
        CHANSTS_ARMED => "ARMED",
        _ => "?",
    }
}
