//! Fds that carry buffer bytes of their own (GstFdMemory, DMABuf), as the
//! writer offers them and the reader accepts them.
//!
//! A reader maps such an fd and hands the mapping downstream, so a file the
//! writer could shrink would let it kill the reader with SIGBUS. Hence the
//! rules, checked on both sides:
//!
//! - a memfd must carry `F_SEAL_SHRINK`; the writer adds it to a memfd that
//!   lacks it and allows it, and copies the bytes of any other;
//! - a dma-buf (its `/proc/self/fd` link names `dmabuf`) cannot be resized,
//!   so it needs no seal;
//! - anything else (a pipe, a socket, a plain file someone can truncate) is
//!   copied by the writer and refused by the reader;
//! - the reader takes the size from `fstat`, once, and refuses a record
//!   whose range does not lie inside it.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::stat::{SFlag, fstat};

use super::RingError;

/// What an fd is, as far as sharing it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdNature {
    /// A memfd carrying `F_SEAL_SHRINK`.
    SealedMemfd,
    /// A memfd that could still shrink.
    UnsealedMemfd,
    DmaBuf,
    /// Anything else, with its file type for an error message.
    Other(&'static str),
}

/// The identity, size and nature of an fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdFacts {
    /// Device and inode: the same pages whichever fd number names them.
    pub identity: (u64, u64),
    pub size: u64,
    pub nature: FdNature,
}

fn file_type(mode: u32) -> &'static str {
    match SFlag::from_bits_truncate(mode) & SFlag::S_IFMT {
        SFlag::S_IFIFO => "a pipe",
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFBLK => "a block device",
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFLNK => "a symbolic link",
        SFlag::S_IFREG => "a regular file that is not a memfd",
        _ => "a file of unknown type",
    }
}

fn is_dma_buf(fd: BorrowedFd<'_>) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .is_ok_and(|target| target.to_string_lossy().contains("dmabuf"))
}

/// Looks at `fd` without changing it.
pub fn inspect(fd: BorrowedFd<'_>) -> Result<FdFacts, RingError> {
    let stat = fstat(fd).map_err(|err| RingError::io("fstat of a shared fd", err.into()))?;
    let regular = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG;
    let nature = match fcntl(fd, FcntlArg::F_GET_SEALS) {
        Ok(seals) if regular => {
            if SealFlag::from_bits_truncate(seals).contains(SealFlag::F_SEAL_SHRINK) {
                FdNature::SealedMemfd
            } else {
                FdNature::UnsealedMemfd
            }
        }
        _ if is_dma_buf(fd) => FdNature::DmaBuf,
        _ => FdNature::Other(file_type(stat.st_mode)),
    };
    Ok(FdFacts {
        identity: (stat.st_dev, stat.st_ino),
        size: u64::try_from(stat.st_size).unwrap_or(0),
        nature,
    })
}

/// The writer's side: whether the bytes `offset..offset + size` of `fd`
/// may cross by the fd, sealing a memfd against shrinking if it allows
/// that. `None` means copy them.
pub fn offer(fd: BorrowedFd<'_>, offset: u64, size: u64) -> Option<FdFacts> {
    let mut facts = inspect(fd).ok()?;
    if facts.nature == FdNature::UnsealedMemfd {
        fcntl(fd, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK)).ok()?;
        facts.nature = FdNature::SealedMemfd;
    }
    let end = offset.checked_add(size)?;
    let fits = end <= facts.size || (facts.nature == FdNature::DmaBuf && facts.size == 0);
    (matches!(facts.nature, FdNature::SealedMemfd | FdNature::DmaBuf) && fits).then_some(facts)
}

/// The reader's side: what an fd the writer announced is, once it is known
/// to be one that cannot shrink under a mapping.
pub fn accept(fd: BorrowedFd<'_>) -> Result<FdFacts, RingError> {
    let facts = inspect(fd)?;
    match facts.nature {
        FdNature::SealedMemfd | FdNature::DmaBuf => Ok(facts),
        FdNature::UnsealedMemfd => Err(RingError::Invalid(
            "the writer announced a memfd without F_SEAL_SHRINK, which it could shrink under this reader's mapping"
                .into(),
        )),
        FdNature::Other(what) => Err(RingError::Invalid(format!(
            "the writer announced {what} as buffer memory; only a memfd sealed against shrinking or a dma-buf can be mapped safely"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    fn memfd(len: u64) -> memfd::Memfd {
        let memfd = memfd::MemfdOptions::default()
            .allow_sealing(true)
            .create("shared-fd-test")
            .unwrap();
        memfd.as_file().set_len(len).unwrap();
        memfd
    }

    #[test]
    fn the_writer_seals_a_memfd_it_offers_and_the_reader_accepts_it() {
        let memfd = memfd(8192);
        assert_eq!(
            inspect(memfd.as_file().as_fd()).unwrap().nature,
            FdNature::UnsealedMemfd
        );
        assert!(accept(memfd.as_file().as_fd()).is_err());
        let facts = offer(memfd.as_file().as_fd(), 4096, 4096).unwrap();
        assert_eq!(facts.nature, FdNature::SealedMemfd);
        assert_eq!(accept(memfd.as_file().as_fd()).unwrap().size, 8192);
    }

    #[test]
    fn a_range_past_the_end_or_a_pipe_is_not_offered() {
        let memfd = memfd(4096);
        assert!(offer(memfd.as_file().as_fd(), 1, 4096).is_none());
        let (read, _write) = nix::unistd::pipe().unwrap();
        assert!(offer(read.as_fd(), 0, 1).is_none());
        let err = accept(read.as_fd()).unwrap_err().to_string();
        assert!(err.contains("a pipe"), "{err}");
    }
}
