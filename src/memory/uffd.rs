//! userfaultfd for postcopy live migration (`VHOST_USER_PROTOCOL_F_PAGEFAULT`).
//!
//! On `POSTCOPY_ADVISE` the back-end opens a userfaultfd ([`Userfaultfd::open`]) and hands it
//! to the front-end; once the guest's memory is mapped in postcopy mode, each region's
//! mapping is registered with it for missing pages ([`Userfaultfd::register`]). A back-end
//! thread touching a page the destination does not have yet then blocks in the kernel, and
//! the front-end (QEMU) reads the fault from the fd, fetches the page from the migration
//! source, places it in the shared file through its own mapping and wakes the back-end's
//! thread (`UFFDIO_WAKE` on this fd). The back-end itself never reads the fd.
//!
//! `libc` has the syscall number but not the ioctl structures: they are defined here with the
//! kernel's layout (`include/uapi/linux/userfaultfd.h`).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use thiserror::Error;

/// `UFFD_API`: the API version asked for in `UFFDIO_API`.
const UFFD_API: u64 = 0xAA;
/// `UFFDIO_REGISTER_MODE_MISSING`: report faults on pages not present.
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
/// `_UFFDIO_REGISTER` and `_UFFDIO_UNREGISTER`: bits of `uffdio_api.ioctls`.
const UFFDIO_REGISTER_BIT: u64 = 1 << 0x00;
const UFFDIO_UNREGISTER_BIT: u64 = 1 << 0x01;
/// `_UFFDIO_WAKE`: a bit of `uffdio_register.ioctls` (the range's ioctls).
const UFFDIO_WAKE_BIT: u64 = 1 << 0x02;
/// `UFFD_FEATURE_MISSING_HUGETLBFS`, `UFFD_FEATURE_MISSING_SHMEM`.
const UFFD_FEATURE_MISSING_HUGETLBFS: u64 = 1 << 4;
const UFFD_FEATURE_MISSING_SHMEM: u64 = 1 << 5;

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct UffdioApi {
    /// `UFFD_API`.
    pub api: u64,
    /// Features asked for; on return, the features the kernel has.
    pub features: u64,
    /// On return: the ioctls the fd accepts (bit `_UFFDIO_*`).
    pub ioctls: u64,
}

/// `struct uffdio_range`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioRange {
    /// Start address, page aligned.
    pub start: u64,
    /// Length, a multiple of the page size.
    pub len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct UffdioRegister {
    /// The range.
    pub range: UffdioRange,
    /// `UFFDIO_REGISTER_MODE_*`.
    pub mode: u64,
    /// On return: the ioctls the range accepts.
    pub ioctls: u64,
}

/// `struct uffd_msg` (32 bytes) as read from the fd, page-fault form: `event` is
/// [`UFFD_EVENT_PAGEFAULT`] and `address` the faulting address.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdMsg {
    /// `UFFD_EVENT_*`.
    pub event: u8,
    /// Reserved.
    pub reserved1: u8,
    /// Reserved.
    pub reserved2: u16,
    /// Reserved.
    pub reserved3: u32,
    /// `arg.pagefault.flags`.
    pub flags: u64,
    /// `arg.pagefault.address`.
    pub address: u64,
    /// `arg.pagefault.feat` (the thread id with `UFFD_FEATURE_THREAD_ID`).
    pub feat: u64,
}

/// `UFFD_EVENT_PAGEFAULT`.
pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;

/// The ioctls (private: the safe wrappers below are the interface).
mod sys {
    use super::{UffdioApi, UffdioRange, UffdioRegister};

    // `UFFDIO` is 0xAA; `_IOWR(UFFDIO, _UFFDIO_API, struct uffdio_api)` and the others as in
    // linux/userfaultfd.h.
    nix::ioctl_readwrite!(
        /// `UFFDIO_API`.
        uffdio_api,
        0xAA,
        0x3F,
        UffdioApi
    );
    nix::ioctl_readwrite!(
        /// `UFFDIO_REGISTER`.
        uffdio_register,
        0xAA,
        0x00,
        UffdioRegister
    );
    nix::ioctl_read!(
        /// `UFFDIO_UNREGISTER`.
        uffdio_unregister,
        0xAA,
        0x01,
        UffdioRange
    );
    nix::ioctl_read!(
        /// `UFFDIO_WAKE`.
        uffdio_wake,
        0xAA,
        0x02,
        UffdioRange
    );
}
use sys::{uffdio_api, uffdio_register, uffdio_unregister, uffdio_wake};

/// Why a userfaultfd operation failed.
#[derive(Debug, Error)]
pub enum UffdError {
    /// The `userfaultfd` syscall failed.
    #[error(
        "userfaultfd(2) failed: {0}{hint}",
        hint = if *.0 == Errno::EPERM {
            " (not permitted: run as root, give CAP_SYS_PTRACE, or set vm.unprivileged_userfaultfd=1)"
        } else if *.0 == Errno::ENOSYS {
            " (the kernel has no userfaultfd: CONFIG_USERFAULTFD)"
        } else {
            ""
        }
    )]
    Open(#[source] Errno),
    /// `UFFDIO_API` failed.
    #[error("UFFDIO_API failed: {0}")]
    Api(#[source] Errno),
    /// The kernel's API lacks what postcopy needs.
    #[error("userfaultfd API {api:#x} lacks register/unregister (ioctls {ioctls:#x})")]
    ApiLacks {
        /// API returned.
        api: u64,
        /// Ioctls returned.
        ioctls: u64,
    },
    /// `UFFDIO_REGISTER` failed.
    #[error("UFFDIO_REGISTER of {start:#x}+{len:#x} (missing pages) failed: {errno}")]
    Register {
        /// Range start.
        start: u64,
        /// Range length.
        len: u64,
        /// The error.
        #[source]
        errno: Errno,
    },
    /// A registered range does not accept `UFFDIO_WAKE`: the front-end could not wake a
    /// faulting thread.
    #[error("UFFDIO_REGISTER of {start:#x}+{len:#x}: range ioctls {ioctls:#x} lack UFFDIO_WAKE")]
    NoWake {
        /// Range start.
        start: u64,
        /// Range length.
        len: u64,
        /// Range ioctls.
        ioctls: u64,
    },
    /// `UFFDIO_UNREGISTER` failed.
    #[error("UFFDIO_UNREGISTER of {start:#x}+{len:#x} failed: {errno}")]
    Unregister {
        /// Range start.
        start: u64,
        /// Range length.
        len: u64,
        /// The error.
        #[source]
        errno: Errno,
    },
}

/// An open userfaultfd (`O_CLOEXEC | O_NONBLOCK`), its API handshake done.
#[derive(Debug)]
pub struct Userfaultfd {
    fd: OwnedFd,
    features: u64,
}

impl Userfaultfd {
    /// `userfaultfd(O_CLOEXEC | O_NONBLOCK)`, then `UFFDIO_API` (no optional features asked
    /// for, as DPDK): the kernel must accept register and unregister. Nothing leaks on error.
    pub fn open() -> Result<Userfaultfd, UffdError> {
        // SAFETY: the userfaultfd syscall takes one int of flags and returns a new fd or -1;
        // it touches no memory of ours.
        let ret =
            unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
        if ret < 0 {
            return Err(UffdError::Open(Errno::last()));
        }
        let raw = RawFd::try_from(ret).map_err(|_| UffdError::Open(Errno::EBADF))?;
        // SAFETY: `raw` was just returned by the kernel as a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut api = UffdioApi {
            api: UFFD_API,
            ..UffdioApi::default()
        };
        // SAFETY: `fd` is a userfaultfd and `api` a valid, exclusively borrowed uffdio_api
        // for the duration of the call.
        unsafe { uffdio_api(fd.as_raw_fd(), &mut api) }.map_err(UffdError::Api)?;
        let need = UFFDIO_REGISTER_BIT | UFFDIO_UNREGISTER_BIT;
        if api.api != UFFD_API || api.ioctls & need != need {
            return Err(UffdError::ApiLacks {
                api: api.api,
                ioctls: api.ioctls,
            });
        }
        Ok(Userfaultfd {
            fd,
            features: api.features,
        })
    }

    /// The features the kernel reported (`UFFD_FEATURE_*`).
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Whether missing-page faults on shared memory (memfd, tmpfs) and hugetlbfs can be
    /// reported, as (shmem, hugetlbfs).
    pub fn missing_shared(&self) -> (bool, bool) {
        (
            self.features & UFFD_FEATURE_MISSING_SHMEM != 0,
            self.features & UFFD_FEATURE_MISSING_HUGETLBFS != 0,
        )
    }

    /// A duplicate of the fd, to send to the front-end.
    pub fn try_clone_fd(&self) -> std::io::Result<OwnedFd> {
        self.fd.try_clone()
    }

    /// The fd.
    pub fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Registers `[start, start + len)` for missing-page faults. The range must be a whole
    /// mapping of ours, page aligned (the caller passes a guest region's mapping).
    pub fn register(&self, start: u64, len: u64) -> Result<(), UffdError> {
        let mut reg = UffdioRegister {
            range: UffdioRange { start, len },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: `reg` is a valid uffdio_register for the call; registering only changes
        // how the kernel handles faults on the range (a faulting thread waits for a wake),
        // never the memory itself.
        unsafe { uffdio_register(self.fd.as_raw_fd(), &mut reg) }
            .map_err(|errno| UffdError::Register { start, len, errno })?;
        if reg.ioctls & UFFDIO_WAKE_BIT == 0 {
            // Leave nothing registered that nobody could wake.
            let _ = self.unregister(start, len);
            return Err(UffdError::NoWake {
                start,
                len,
                ioctls: reg.ioctls,
            });
        }
        Ok(())
    }

    /// Unregisters `[start, start + len)`.
    pub fn unregister(&self, start: u64, len: u64) -> Result<(), UffdError> {
        let mut range = UffdioRange { start, len };
        // SAFETY: `range` is a valid uffdio_range for the call; unregistering wakes any
        // thread waiting on the range and leaves the memory as it is.
        unsafe { uffdio_unregister(self.fd.as_raw_fd(), &mut range) }
            .map_err(|errno| UffdError::Unregister { start, len, errno })?;
        Ok(())
    }
}

/// `UFFDIO_WAKE` on `fd` for `[start, start + len)`: what a front-end does after placing a
/// page (QEMU's `postcopy_wake_shared`). For tests playing the front-end's role.
pub fn wake(fd: std::os::fd::BorrowedFd<'_>, start: u64, len: u64) -> Result<(), Errno> {
    let mut range = UffdioRange { start, len };
    // SAFETY: `fd` is open for the call (borrowed) and `range` a valid uffdio_range the
    // kernel only reads; on a userfaultfd a wake only resumes threads waiting on faults in the
    // range, and other fds refuse the request (ENOTTY: it carries UFFDIO's 0xAA type).
    unsafe { uffdio_wake(fd.as_raw_fd(), &mut range) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_kernel() {
        assert_eq!(std::mem::size_of::<UffdioApi>(), 24);
        assert_eq!(std::mem::size_of::<UffdioRange>(), 16);
        assert_eq!(std::mem::size_of::<UffdioRegister>(), 32);
        assert_eq!(std::mem::size_of::<UffdMsg>(), 32);
    }

    #[test]
    fn opens_or_explains() {
        match Userfaultfd::open() {
            Ok(u) => {
                let link = std::fs::read_link(format!("/proc/self/fd/{}", u.as_raw_fd()))
                    .expect("readlink");
                assert_eq!(link.to_string_lossy(), "anon_inode:[userfaultfd]");
            }
            Err(e) => eprintln!("userfaultfd not available here: {e}"),
        }
    }
}
