//! The one error type of the crate.

/// Errors of the copy engines. Data-path variants carry no allocation.
#[derive(Debug, thiserror::Error)]
pub enum DmaError {
    /// Every slot of the ring holds a job not yet reported (`-ENOSPC`); report some first.
    #[error("the job ring is full")]
    RingFull,
    /// A scatter-gather copy with no entry on one side.
    #[error("a scatter-gather list is empty")]
    EmptySgList,
    /// A scatter-gather side with more entries than the channel takes.
    #[error("{given} scatter-gather entries on one side; the channel takes at most {max}")]
    TooManySges {
        /// Entries given.
        given: usize,
        /// The channel's `max_sges`.
        max: u16,
    },
    /// The two sides of a scatter-gather copy do not add up to the same number of bytes.
    #[error("scatter-gather totals differ: {src} source bytes, {dst} destination bytes")]
    SgLengthMismatch {
        /// Total of the source entries.
        src: u64,
        /// Total of the destination entries.
        dst: u64,
    },
    /// A configuration value out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
    /// The engine behind the channel has stopped (the soft device was dropped): nothing will
    /// run or finish any more, and jobs not yet reported are abandoned.
    #[error("the engine has stopped")]
    Stopped,
    /// The soft device's worker thread could not be started.
    #[error("cannot spawn the soft DMA worker thread")]
    Spawn(#[source] std::io::Error),
    /// The soft device's worker thread panicked (the device was dropped while unwinding).
    #[error("the soft DMA worker thread panicked")]
    WorkerPanicked,
    /// A copy longer than one hardware descriptor can move (IOAT's XFERCAP); split it.
    #[error("a copy of {len} bytes; the device moves at most {max} per descriptor")]
    TooLong {
        /// Length asked for (one scatter-gather piece, or the whole copy).
        len: u64,
        /// The device's limit.
        max: u64,
    },
    /// No memory for the device's rings.
    #[error("cannot allocate DMA memory")]
    OutOfMemory,
    /// A hardware channel misbehaved (reported a completion outside its ring, or did not reset):
    /// it has been stopped, its jobs were reported as failed, and it takes no more jobs.
    #[error("the DMA device failed: {0}")]
    Device(&'static str),
    /// A device command (DSA's CMD register) failed with the error code CMDSTATUS reported.
    #[error("device command {cmd} failed with error code {code:#x}")]
    DeviceCommand {
        /// The command.
        cmd: u32,
        /// CMDSTATUS's error code.
        code: u8,
    },
    /// A PCI function could not be opened through VFIO; the message says what is missing
    /// and what to do.
    #[error("{bdf}: {what}")]
    Vfio {
        /// The function's PCI address.
        bdf: String,
        /// What is missing, and what to do.
        what: String,
    },
}
