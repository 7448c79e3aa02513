//! Byte movement between descriptor chains and host buffers, independent of the packet buffer
//! type: a [`GuestWriter`] fills a chain's writable buffers from host bytes (enqueue), a
//! [`GuestReader`] drains a chain's readable buffers into host bytes (dequeue).
//!
//! Both keep their position across calls, so a packet can be written across several chains
//! (mergeable receive buffers) and read into several segments.

use crate::memory::GuestSlice;
use crate::virtq::split::{Chain, ChainError};

/// A position in a chain's buffers: the current buffer and the offset in it.
#[derive(Debug)]
struct Cursor<'a> {
    chain: Chain<'a>,
    cur: Option<GuestSlice<'a>>,
    off: usize,
}

impl<'a> Cursor<'a> {
    fn new(chain: Chain<'a>) -> Cursor<'a> {
        Cursor {
            chain,
            cur: None,
            off: 0,
        }
    }

    /// The current buffer with bytes left after `off`, moving to the next buffer when the
    /// current one is used up. `Ok(None)` at the end of the chain.
    #[inline]
    fn current(&mut self) -> Result<Option<GuestSlice<'a>>, ChainError> {
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

    /// Bytes left from the position to the end of the chain (walks the rest of it).
    fn remaining(mut self) -> Result<u64, ChainError> {
        let mut n = self.cur.map_or(0, |s| (s.len() - self.off) as u64);
        for s in self.chain.by_ref() {
            n += s?.len() as u64;
        }
        Ok(n)
    }
}

/// Writes host bytes into the writable buffers of one chain.
#[derive(Debug)]
pub struct GuestWriter<'a> {
    at: Cursor<'a>,
    written: usize,
}

impl<'a> GuestWriter<'a> {
    /// Starts at the first buffer of `chain`.
    pub fn new(chain: Chain<'a>) -> GuestWriter<'a> {
        GuestWriter {
            at: Cursor::new(chain),
            written: 0,
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> usize {
        self.written
    }

    /// Writes as much of `src` as fits; returns how many bytes were written.
    #[inline]
    pub fn write(&mut self, src: &[u8]) -> Result<usize, ChainError> {
        self.put(src, false)
    }

    /// As [`write`](Self::write), but leaves bytes that already hold the value untouched
    /// (see [`GuestSlice::update_at`]): for the virtio-net header.
    #[inline]
    pub fn update(&mut self, src: &[u8]) -> Result<usize, ChainError> {
        self.put(src, true)
    }

    #[inline(always)]
    fn put(&mut self, mut src: &[u8], update: bool) -> Result<usize, ChainError> {
        let start = src.len();
        while !src.is_empty() {
            let Some(dst) = self.at.current()? else { break };
            let n = src.len().min(dst.len() - self.at.off);
            // In bounds: off + n <= dst.len().
            let _ = if update {
                dst.update_at(self.at.off, &src[..n]).map(drop)
            } else {
                dst.write_at(self.at.off, &src[..n])
            };
            self.at.off += n;
            self.written += n;
            src = &src[n..];
        }
        Ok(start - src.len())
    }

    /// Bytes of room left in the chain (walks the rest of it; use before writing to check
    /// that a packet fits without partial writes).
    pub fn remaining(self) -> Result<u64, ChainError> {
        self.at.remaining()
    }
}

/// Reads the readable buffers of one chain into host bytes.
#[derive(Debug)]
pub struct GuestReader<'a> {
    at: Cursor<'a>,
}

impl<'a> GuestReader<'a> {
    /// Starts at the first buffer of `chain`.
    pub fn new(chain: Chain<'a>) -> GuestReader<'a> {
        GuestReader {
            at: Cursor::new(chain),
        }
    }

    /// Fills `dst` as far as the chain has data; returns how many bytes were read.
    #[inline]
    pub fn read(&mut self, dst: &mut [u8]) -> Result<usize, ChainError> {
        let mut done = 0;
        while done < dst.len() {
            let Some(src) = self.at.current()? else { break };
            let n = (dst.len() - done).min(src.len() - self.at.off);
            // In bounds: off + n <= src.len() and done + n <= dst.len().
            let _ = src.read_at(self.at.off, &mut dst[done..done + n]);
            self.at.off += n;
            done += n;
        }
        Ok(done)
    }

    /// Skips `n` bytes; returns how many were skipped (fewer at the end of the chain).
    pub fn skip(&mut self, n: usize) -> Result<usize, ChainError> {
        let mut done = 0;
        while done < n {
            let Some(src) = self.at.current()? else { break };
            let k = (n - done).min(src.len() - self.at.off);
            self.at.off += k;
            done += k;
        }
        Ok(done)
    }

    /// Bytes left to read (walks the rest of the chain).
    pub fn remaining(self) -> Result<u64, ChainError> {
        self.at.remaining()
    }

    /// True if every byte was read and the chain ended cleanly.
    pub fn at_end(&mut self) -> Result<bool, ChainError> {
        Ok(self.at.current()?.is_none())
    }
}
