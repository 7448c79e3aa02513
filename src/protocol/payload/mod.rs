//! Payload types of vhost-user messages, with byte-exact, panic-free codecs.
//!
//! Each type parses from the payload bytes ([`Payload::parse`]) and writes
//! itself back ([`Payload::write_to`]). Parsing checks the size first, so a
//! wrong size is reported as [`ProtocolError::PayloadSize`] naming the
//! payload type ([`ProtocolError::in_request`] renames it after the request).
//! Numbers are in native byte order, as the spec says.

mod device;
mod memory;
mod vring;

pub use device::{
    Config, DeviceStateTransfer, DeviceStatus, IotlbAccess, IotlbMsg, IotlbType, RarpMac,
    SharedObject,
};
pub use memory::{InflightInfo, LogInfo, MemoryRegion, MemoryTable, SingleMemRegion};
pub use vring::{PackedVringBase, VringAddr, VringArea, VringFile, VringState};

use super::error::ProtocolError;
use super::policy::Size;

/// A message payload.
pub trait Payload: Sized {
    /// Name used in errors.
    const NAME: &'static str;
    /// The size rule of the encoding.
    const SIZE: Size;

    /// Decodes `buf`, which must be exactly the payload.
    fn parse(buf: &[u8]) -> Result<Self, ProtocolError>;

    /// Appends the encoding to `out`.
    fn write_to(&self, out: &mut Vec<u8>);

    /// The encoding.
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }
}

/// Panic-free reader over a byte slice.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, tail) = self.0.split_first_chunk::<N>()?;
        self.0 = tail;
        Some(*head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|[b]| b)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_ne_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_ne_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_ne_bytes)
    }
}

#[cold]
fn size_error(what: &'static str, got: usize, expected: Size) -> ProtocolError {
    ProtocolError::PayloadSize {
        what,
        got,
        expected,
    }
}

#[cold]
fn invalid(
    what: &'static str,
    field: &'static str,
    value: u64,
    reason: &'static str,
) -> ProtocolError {
    ProtocolError::InvalidField {
        what,
        field,
        value,
        reason,
    }
}

/// Checks `buf` against `P::SIZE` and runs `f` over a cursor on it; a cursor
/// that runs dry (impossible after the size check) is a size error too.
fn decode<P: Payload, T>(
    buf: &[u8],
    f: impl FnOnce(&mut Cursor<'_>) -> Option<T>,
) -> Result<T, ProtocolError> {
    if !P::SIZE.allows(buf.len()) {
        return Err(size_error(P::NAME, buf.len(), P::SIZE));
    }
    f(&mut Cursor(buf)).ok_or_else(|| size_error(P::NAME, buf.len(), P::SIZE))
}

/// A single 64-bit integer (features, protocol features, ack status, ...).
impl Payload for u64 {
    const NAME: &'static str = "u64";
    const SIZE: Size = Size::Exact(8);

    fn parse(buf: &[u8]) -> Result<Self, ProtocolError> {
        decode::<Self, _>(buf, |c| c.u64())
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_ne_bytes());
    }
}

#[cfg(test)]
mod tests;
