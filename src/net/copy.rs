//! Byte movement between descriptor chains and host buffers, independent of the packet buffer
//! type: a [`GuestWriter`] fills a chain's writable buffers from host bytes (enqueue), a
//! [`GuestReader`] drains a chain's readable buffers into host bytes (dequeue).
//!
//! Both keep their position across calls, so a packet can be written across several chains
//! (mergeable receive buffers) and read into several segments.

use crate::memory::GuestSlice;
use crate::virtq::split::{Chain, ChainError};

/// Writes host bytes into the writable buffers of one chain.
#[derive(Debug)]
pub struct GuestWriter<'a> {
    chain: Chain<'a>,
    cur: Option<GuestSlice<'a>>,
    off: usize,
    written: usize,
}

impl<'a> GuestWriter<'a> {
    /// Starts at the first buffer of `chain`.
    pub fn new(chain: Chain<'a>) -> GuestWriter<'a> {
        GuestWriter {
            chain,
            cur: None,
            off: 0,
            written: 0,
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> usize {
        self.written
    }

    /// The current buffer with room left, fetching the next one when needed. `Ok(None)` once
    /// the chain has no more room.
    #[inline]
    fn room(&mut self) -> Result<Option<GuestSlice<'a>>, ChainError> {
        loop {
            if let Some(s) = self.cur {
                if self.off < s.len() {
                    return Ok(Some(s));
                }
            }
            match self.chain.next() {
                Some(Ok(s)) => {
                    self.cur = Some(s);
                    self.off = 0;
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(None),
            }
        }
    }

    /// Writes as much of `src` as fits; returns how many bytes were written.
    #[inline]
    pub fn write(&mut self, mut src: &[u8]) -> Result<usize, ChainError> {
        let start = src.len();
        while !src.is_empty() {
            let Some(dst) = self.room()? else { break };
            let n = src.len().min(dst.len() - self.off);
            // In bounds: off + n <= dst.len().
            let _ = dst.write_at(self.off, &src[..n]);
            self.off += n;
            self.written += n;
            src = &src[n..];
        }
        Ok(start - src.len())
    }

    /// True if the chain has room for at least one more byte.
    pub fn has_room(&mut self) -> Result<bool, ChainError> {
        Ok(self.room()?.is_some())
    }

    /// Bytes of room left in the chain (walks the rest of it; use before writing to check
    /// that a packet fits without partial writes).
    pub fn remaining(mut self) -> Result<u64, ChainError> {
        let mut n = self.cur.map_or(0, |s| (s.len() - self.off) as u64);
        for s in self.chain.by_ref() {
            n += s?.len() as u64;
        }
        Ok(n)
    }
}

/// Reads the readable buffers of one chain into host bytes.
#[derive(Debug)]
pub struct GuestReader<'a> {
    chain: Chain<'a>,
    cur: Option<GuestSlice<'a>>,
    off: usize,
}

impl<'a> GuestReader<'a> {
    /// Starts at the first buffer of `chain`.
    pub fn new(chain: Chain<'a>) -> GuestReader<'a> {
        GuestReader {
            chain,
            cur: None,
            off: 0,
        }
    }

    #[inline]
    fn data(&mut self) -> Result<Option<GuestSlice<'a>>, ChainError> {
        loop {
            if let Some(s) = self.cur {
                if self.off < s.len() {
                    return Ok(Some(s));
                }
            }
            match self.chain.next() {
                Some(Ok(s)) => {
                    self.cur = Some(s);
                    self.off = 0;
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(None),
            }
        }
    }

    /// Fills `dst` as far as the chain has data; returns how many bytes were read.
    #[inline]
    pub fn read(&mut self, dst: &mut [u8]) -> Result<usize, ChainError> {
        let mut done = 0;
        while done < dst.len() {
            let Some(src) = self.data()? else { break };
            let n = (dst.len() - done).min(src.len() - self.off);
            // In bounds: off + n <= src.len() and done + n <= dst.len().
            let _ = src.read_at(self.off, &mut dst[done..done + n]);
            self.off += n;
            done += n;
        }
        Ok(done)
    }

    /// Skips `n` bytes; returns how many were skipped (fewer at the end of the chain).
    pub fn skip(&mut self, n: usize) -> Result<usize, ChainError> {
        let mut done = 0;
        while done < n {
            let Some(src) = self.data()? else { break };
            let k = (n - done).min(src.len() - self.off);
            self.off += k;
            done += k;
        }
        Ok(done)
    }

    /// Bytes left to read (walks the rest of the chain).
    pub fn remaining(mut self) -> Result<u64, ChainError> {
        let mut n = self.cur.map_or(0, |s| (s.len() - self.off) as u64);
        for s in self.chain.by_ref() {
            n += s?.len() as u64;
        }
        Ok(n)
    }

    /// The chain's total length so far (all of it once the reader reached the end).
    pub fn total_len(&self) -> u64 {
        self.chain.total_len()
    }

    /// True if every byte was read and the chain ended cleanly.
    pub fn at_end(&mut self) -> Result<bool, ChainError> {
        Ok(self.data()?.is_none())
    }
}
