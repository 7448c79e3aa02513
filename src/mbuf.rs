//! mbuf (in progress)
