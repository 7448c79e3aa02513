//! DSA (Intel Data Streaming Accelerator) BAR0 registers, bits and command codes: the facts
//! the setup code and the model share. Offsets and fields are those of DPDK's
//! `drivers/dma/idxd/idxd_hw_defs.h` and `idxd_pci.c`; the command error codes and the
//! WQCAP mode bits are Linux's (`drivers/dma/idxd/registers.h`).

/// The BAR holding these registers (DPDK's `init_pci_device`: `mem_resource[0]`; SPDK's
/// `IDXD_MMIO_BAR`).
pub const REGS_BAR: u32 = 0;
/// The BAR holding the WQ portals (DPDK: `mem_resource[2]`; SPDK's `IDXD_WQ_BAR`).
pub const PORTAL_BAR: u32 = 2;
/// Bytes of portal space per WQ in [`PORTAL_BAR`]: four 4 KiB pages (unlimited and limited
/// MOVDIR64B/ENQCMD portals; DPDK's `IDXD_PORTAL_SIZE`, SPDK's `WQ_TOTAL_PORTAL_SIZE`). WQ
/// `n`'s unlimited portal, the one a dedicated WQ's driver writes, is the first page at
/// `n * PORTAL_STRIDE`.
pub const PORTAL_STRIDE: usize = 4 * 4096;

/// Version (32 bits).
pub const VERSION: usize = 0x00;
/// General capabilities (64 bits): max transfer shift in bits 16..21, max batch shift in
/// bits 21..25.
pub const GENCAP: usize = 0x10;
/// WQ capabilities (64 bits): total WQ size in bits 0..16, number of WQs in 16..24, WQCFG size
/// (log2 of 32-byte units) in 24..28, shared mode bit 48, dedicated mode bit 49.
pub const WQCAP: usize = 0x20;
/// Group capabilities (64 bits): number of groups in bits 0..8.
pub const GRPCAP: usize = 0x30;
/// Engine capabilities (64 bits): number of engines in bits 0..8.
pub const ENGCAP: usize = 0x38;
/// Operation capabilities (64 bits, the first of four).
pub const OPCAP: usize = 0x40;
/// Table offsets (64 bits): GRPCFG at bits 0..16, WQCFG at 16..32, both in units of 0x100.
pub const OFFSETS: usize = 0x60;
/// General configuration (32 bits).
pub const GENCFG: usize = 0x80;
/// General control (32 bits).
pub const GENCTRL: usize = 0x88;
/// General status (32 bits): device state in bits 0..2.
pub const GENSTS: usize = 0x90;
/// Command (32 bits): operand in bits 0..20, command in 20..25.
pub const CMD: usize = 0xa0;
/// Command status (32 bits): error code in bits 0..8, active bit 31.
pub const CMDSTATUS: usize = 0xa8;
/// Software error (4 x 64 bits).
pub const SWERR: usize = 0xc0;

/// GENCAP: shift of the max transfer size field (5 bits).
pub const GENCAP_MAX_XFER_SHIFT: u32 = 16;
/// GENCAP: shift of the max batch size field (4 bits).
pub const GENCAP_MAX_BATCH_SHIFT: u32 = 21;
/// WQCAP: shared WQs supported.
pub const WQCAP_SHARED_MODE: u64 = 1 << 48;
/// WQCAP: dedicated WQs supported.
pub const WQCAP_DEDICATED_MODE: u64 = 1 << 49;

/// GENSTS device state: disabled.
pub const GENSTS_DISABLED: u32 = 0;
/// GENSTS device state: enabled.
pub const GENSTS_ENABLED: u32 = 1;
/// GENSTS: mask of the device state.
pub const GENSTS_STATE_MASK: u32 = 0x3;

/// GRPCFG: size of one group's registers.
pub const GRPCFG_SIZE: usize = 64;
/// GRPCFG: the WQs of the group (bitmap, 4 x 64 bits; only the first is used here).
pub const GRPCFG_WQS: usize = 0;
/// GRPCFG: the engines of the group (bitmap, 64 bits).
pub const GRPCFG_ENGINES: usize = 32;
/// GRPCFG: group flags (32 bits).
pub const GRPCFG_FLAGS: usize = 40;

/// WQCFG word (32-bit) indexes.
pub const WQCFG_SIZE_WORD: usize = 0;
/// WQCFG: threshold word.
pub const WQCFG_THRESHOLD_WORD: usize = 1;
/// WQCFG: mode, priority, PASID word.
pub const WQCFG_MODE_WORD: usize = 2;
/// WQCFG: max transfer and batch shifts word.
pub const WQCFG_SIZES_WORD: usize = 3;
/// WQCFG: state word (state in bits 30..32).
pub const WQCFG_STATE_WORD: usize = 6;
/// WQCFG mode word: dedicated (1) or shared (0).
pub const WQ_MODE_DEDICATED: u32 = 1;
/// WQCFG mode word: shift of the 4-bit priority.
pub const WQ_PRIORITY_SHIFT: u32 = 4;
/// WQCFG sizes word: shift of the max batch shift (the max transfer shift is at 0).
pub const WQ_BATCH_SHIFT: u32 = 5;
/// WQCFG state word: shift of the state.
pub const WQ_STATE_SHIFT: u32 = 30;
/// WQ state: enabled.
pub const WQ_STATE_ENABLED: u32 = 1;

/// CMD: shift of the command code.
pub const CMD_SHIFT: u32 = 20;
/// CMDSTATUS: a command is running.
pub const CMDSTATUS_ACTIVE: u32 = 1 << 31;
/// CMDSTATUS: mask of the error code.
pub const CMDSTATUS_ERR_MASK: u32 = 0xff;

/// Commands (CMD bits 20..25).
pub mod cmd {
    /// Enable the device (operand 0).
    pub const ENABLE_DEV: u32 = 1;
    /// Disable the device.
    pub const DISABLE_DEV: u32 = 2;
    /// Reset the device.
    pub const RESET_DEVICE: u32 = 5;
    /// Enable the WQ whose index is the operand.
    pub const ENABLE_WQ: u32 = 6;
    /// Disable the WQs whose bit is set in the operand.
    pub const DISABLE_WQ: u32 = 7;
}

/// Command error codes (CMDSTATUS bits 0..8).
pub mod err {
    /// Unknown command.
    pub const INVAL_CMD: u8 = 0x01;
    /// WQ index out of range.
    pub const INVAL_WQIDX: u8 = 0x02;
    /// ENABLE_DEV: the device is already enabled.
    pub const DEV_ENABLED: u8 = 0x10;
    /// ENABLE_DEV: inconsistent configuration.
    pub const CONFIG: u8 = 0x11;
    /// ENABLE_DEV: the WQ sizes add up to more than WQCAP's total.
    pub const WQ_SIZE_ERANGE: u8 = 0x14;
    /// ENABLE_DEV: a group with WQs and no engine, or an engine or WQ in two groups.
    pub const GRP_CONFIG: u8 = 0x15;
    /// ENABLE_WQ: the device is not enabled.
    pub const DEV_NOTEN: u8 = 0x20;
    /// ENABLE_WQ: the WQ is already enabled.
    pub const WQ_ENABLED: u8 = 0x21;
    /// ENABLE_WQ: the WQ has size 0.
    pub const WQ_SIZE: u8 = 0x22;
    /// ENABLE_WQ: bad priority.
    pub const WQ_PRIOR: u8 = 0x23;
    /// ENABLE_WQ: a mode the device does not support.
    pub const WQ_MODE: u8 = 0x24;
    /// ENABLE_WQ: max batch shift above GENCAP's.
    pub const MAX_BATCH_SIZE: u8 = 0x27;
    /// ENABLE_WQ: max transfer shift above GENCAP's.
    pub const MAX_XFER_SIZE: u8 = 0x28;
    /// DISABLE_DEV: the device is not enabled.
    pub const DIS_DEV_EN: u8 = 0x31;
    /// DISABLE_WQ: the device is not enabled.
    pub const DEV_NOT_EN: u8 = 0x32;
}

// ---- The data path: descriptors, completion records (Linux's `include/uapi/linux/idxd.h`,
// DPDK's `drivers/dma/idxd/idxd_hw_defs.h`) ----

/// Size of a descriptor, and the alignment of a batch's descriptor list.
pub const DESC_SIZE: usize = 64;
/// Size of a completion record, and its alignment.
pub const COMP_SIZE: usize = 32;

/// Descriptor word 0: flags (24 bits) and opcode (8 bits) are its high half; PASID and the
/// privilege bit (unused here) its low half.
pub const DESC_OP_FLAGS_SHIFT: u32 = 32;
/// Descriptor: shift of the opcode inside the 32-bit op/flags field.
pub const DESC_OPCODE_SHIFT: u32 = 24;
/// Descriptor word index of the completion record address.
pub const DESC_COMP_WORD: usize = 1;
/// Descriptor word index of the source address (MEMMOVE) or descriptor list address (BATCH).
pub const DESC_SRC_WORD: usize = 2;
/// Descriptor word index of the destination address.
pub const DESC_DST_WORD: usize = 3;
/// Descriptor word index of the transfer size (MEMMOVE) or descriptor count (BATCH), low 32
/// bits.
pub const DESC_SIZE_WORD: usize = 4;

/// Opcodes (`enum dsa_opcode`).
pub mod op {
    /// No operation: completes at once (writes its completion record if asked).
    pub const NOOP: u8 = 0x00;
    /// A batch: `count` descriptors at `desc_list_addr`, processed by one engine.
    pub const BATCH: u8 = 0x01;
    /// Drain: completes once every descriptor submitted before it has completed.
    pub const DRAIN: u8 = 0x02;
    /// Memory move (copy; overlapping buffers allowed).
    pub const MEMMOVE: u8 = 0x03;
}

/// Descriptor flags (`IDXD_OP_FLAG_*`).
pub mod flag {
    /// Inside a batch: wait for the earlier descriptors of the batch, and do not run if one of
    /// them failed.
    pub const FENCE: u32 = 0x0001;
    /// Block on fault (not used: a fault completes the descriptor with an error instead).
    pub const BOF: u32 = 0x0002;
    /// Completion record address valid: the record is written on an error.
    pub const CRAV: u32 = 0x0004;
    /// Request completion record: written on success too (needs CRAV).
    pub const RCR: u32 = 0x0008;
    /// Request completion interrupt (not used).
    pub const RCI: u32 = 0x0010;
    /// Cache control: destination writes go to the cache (what a CPU consumer wants).
    pub const CC: u32 = 0x0100;
}

/// Completion record status codes (`enum dsa_completion_status`), byte 0 of the record, low
/// 7 bits; 0 means "not written yet", which is why the device writes it last.
pub mod comp {
    /// Not completed (the record is untouched).
    pub const NONE: u8 = 0x00;
    /// Success.
    pub const SUCCESS: u8 = 0x01;
    /// A page fault (address not translatable) with block-on-fault clear: `fault_addr` is the
    /// address, `bytes_completed` what was done before it.
    pub const PAGE_FAULT_NOBOF: u8 = 0x03;
    /// A batch in which at least one descriptor failed (its own record says how).
    pub const BATCH_FAIL: u8 = 0x05;
    /// A page fault reading a batch's descriptor list.
    pub const BATCH_PAGE_FAULT: u8 = 0x06;
    /// Unknown opcode, or a batch inside a batch.
    pub const BAD_OPCODE: u8 = 0x10;
    /// Reserved or unsupported flags set (`invalid_flags` says which).
    pub const INVALID_FLAGS: u8 = 0x11;
    /// Transfer size 0 or above the WQ's maximum.
    pub const XFER_ERANGE: u8 = 0x13;
    /// Batch descriptor count below 2 or above the WQ's maximum batch size.
    pub const DESC_CNT_ERANGE: u8 = 0x14;
    /// A batch's descriptor list not 64-byte aligned.
    pub const DESCLIST_ALIGN: u8 = 0x18;
    /// Mask of the status in the status byte.
    pub const STATUS_MASK: u8 = 0x7f;
    /// Status byte: the fault was on a write.
    pub const FAULT_WRITE: u8 = 0x80;
}

/// Completion record word 0: status in bits 0..8, result 8..16, bytes completed (or, for a
/// batch, descriptors completed) in 32..64. Word 1: the fault address. Word 2: invalid flags.
pub const COMP_BYTES_SHIFT: u32 = 32;
