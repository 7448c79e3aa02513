//! Submission through a work queue's portal: one 64-byte descriptor, written as one atomic
//! 64-byte store.
//!
//! A dedicated WQ takes a descriptor only as a single, 64-byte aligned, 64-byte write to its
//! portal: that is what MOVDIR64B does (ENQCMD, for shared WQs, is not used here). There is
//! no fallback: a sequence of narrower stores (eight 64-bit stores, or even one AVX-512
//! store, which the architecture does not promise to issue as one 64-byte transaction to
//! uncached memory) reaches the device as several partial writes, which it does not accept
//! as a descriptor. Linux's `idxd` driver refuses to load on a CPU without MOVDIR64B for the
//! same reason, and every CPU that has a DSA (Sapphire Rapids on) has the instruction. So
//! [`MovdirPortal::new`] refuses such a CPU with a clear error.
//!
//! [`Portal`] is the seam: [`MovdirPortal`] over a mapped portal page, or the model's portal
//! ([`DsaModel::portal`](crate::model::DsaModel::portal)) in tests.

use crate::DmaError;

/// One descriptor, laid out as the device reads it (little-endian 64-bit words), aligned for
/// MOVDIR64B's source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, align(64))]
pub struct Descriptor(pub [u64; 8]);

/// A work queue's portal: where descriptors are submitted.
pub trait Portal {
    /// Writes `desc` to the portal as one atomic 64-byte write. Earlier stores of the calling
    /// thread (descriptor lists, zeroed completion records) are visible to the device before
    /// it sees the descriptor.
    fn submit(&self, desc: &Descriptor);
}

/// Whether this CPU has MOVDIR64B (CPUID leaf 7, sub-leaf 0, ECX bit 28).
pub fn has_movdir64b() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        // SAFETY: CPUID is available on every x86_64 CPU and has no side effect.
        #[allow(unused_unsafe)]
        let max_leaf = unsafe { __cpuid(0) }.eax;
        if max_leaf < 7 {
            return false;
        }
        // SAFETY: as above; leaf 7 exists (checked against the maximum leaf).
        #[allow(unused_unsafe)]
        let leaf7 = unsafe { __cpuid_count(7, 0) };
        leaf7.ecx & (1 << 28) != 0
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A dedicated WQ's portal mapped in this process (a 4 KiB page of the device's BAR2),
/// written with MOVDIR64B.
#[derive(Debug)]
pub struct MovdirPortal {
    portal: *mut u8,
}

// SAFETY: the portal is device memory valid for the value's life (the contract of `new`); a
// MOVDIR64B from any thread is a complete submission, and nothing here is thread-bound.
unsafe impl Send for MovdirPortal {}

impl MovdirPortal {
    /// The portal at `portal`.
    ///
    /// Errors: [`DmaError::Device`] if the CPU lacks MOVDIR64B (see the [module
    /// documentation](self): there is no fallback), [`DmaError::InvalidConfig`] if `portal` is
    /// not 64-byte aligned.
    ///
    /// # Safety
    ///
    /// `portal` is the start of a mapping of a dedicated WQ's portal (or of memory standing
    /// in for one), valid for 64-byte writes for as long as the value lives.
    pub unsafe fn new(portal: *mut u8) -> Result<MovdirPortal, DmaError> {
        if !has_movdir64b() {
            return Err(DmaError::Device(
                "the CPU lacks MOVDIR64B, the only way to submit to a dedicated DSA WQ",
            ));
        }
        if portal.align_offset(64) != 0 {
            return Err(DmaError::InvalidConfig("DSA portal not 64-byte aligned"));
        }
        Ok(MovdirPortal { portal })
    }
}

impl Portal for MovdirPortal {
    #[inline]
    fn submit(&self, desc: &Descriptor) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `new` checked that the CPU has MOVDIR64B and that the portal is 64-byte
        // aligned and valid for 64-byte writes (its contract); `desc` is 64 readable bytes.
        // SFENCE first: MOVDIR64B is weakly ordered like a non-temporal store, and the device
        // must see the descriptor list and zeroed records written before (as DPDK does).
        unsafe {
            std::arch::asm!(
                "sfence",
                // movdir64b rax, [rdx]
                ".byte 0x66, 0x0f, 0x38, 0xf8, 0x02",
                in("rax") self.portal,
                in("rdx") desc as *const Descriptor,
                options(nostack, preserves_flags),
            );
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            // `new` never succeeds off x86_64.
            let _ = desc;
            unreachable!("MovdirPortal exists only on x86_64");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn movdir_portal_exists_only_with_movdir64b() {
        let mut page = vec![Descriptor::default(); 2];
        let at = page.as_mut_ptr().cast::<u8>();
        // SAFETY: `page` stands in for a portal: 128 bytes, valid for writes while `portal`
        // lives, and only read after its last use.
        match unsafe { MovdirPortal::new(at) } {
            Ok(portal) => {
                assert!(has_movdir64b());
                // SAFETY: misaligned: refused before anything is written.
                assert!(unsafe { MovdirPortal::new(at.wrapping_add(8)) }.is_err());
                let d = Descriptor([1, 2, 3, 4, 5, 6, 7, 8]);
                portal.submit(&d);
                assert_eq!(page[0], d);
            }
            Err(DmaError::Device(why)) => {
                assert!(!has_movdir64b(), "{why}");
            }
            Err(e) => panic!("{e}"),
        }
    }
}
