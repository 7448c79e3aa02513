//! virtio-net: the header, byte movement between chains and buffers, and the packet
//! rewriting of the forwarding modes.

pub mod copy;
pub mod hdr;
pub mod pkt;
