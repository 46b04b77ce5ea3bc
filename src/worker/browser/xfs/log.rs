//! Whether an XFS log holds changes that are not yet in place. A snapshot
//! of a running instance catches XFS as a crash would: metadata changed in
//! the last moments (new files, renames, sizes) can be only in the log,
//! which the kernel replays at the next mount and this reader does not.
//! The browser says so rather than show such a filesystem as complete.
//!
//! The log is a ring of 512-byte blocks, each stamped with the cycle (lap)
//! it was written in; the head is where the cycle number drops. The last
//! record before it tells: an unmount record, or a record whose tail is
//! itself (the log is "covered": everything before it is in place), means
//! nothing is pending. Layout: the kernel's `xfs_log_format.h`,
//! `xfs_log_recover.c` (`xlog_find_head`, `xlog_check_unmount_rec`).

use super::{Xfs, be32, be64};
use crate::worker::browser::partitions::ReadAt;

const LOG_MAGIC: u32 = 0xfeed_babe;
/// An operation's flag: the unmount record.
const UNMOUNT_TRANS: u8 = 0x20;
/// Blocks searched back from the head for the last record's header (a
/// record is at most 256 KiB plus its headers).
const MAX_BACK: u64 = 1024;

impl<D: ReadAt> Xfs<D> {
    /// A 512-byte block of the log.
    fn log_block(&self, start: u64, i: u64) -> Result<Vec<u8>, String> {
        self.read(start + i * 512, 512)
    }

    /// The cycle a log block was written in.
    fn cycle(&self, start: u64, i: u64) -> Result<u32, String> {
        let b = self.log_block(start, i)?;
        Ok(if be32(&b, 0) == LOG_MAGIC {
            be32(&b, 4)
        } else {
            be32(&b, 0)
        })
    }

    /// `Ok(true)` when the log holds changes not yet in place; `Err` when
    /// that cannot be told (an external log, a log that does not parse).
    pub(in crate::worker::browser) fn log_pending(&self) -> Result<bool, String> {
        let sb = &self.sb;
        if sb.log_start == 0 || sb.log_blocks == 0 {
            return Err("the filesystem's log is on another device".into());
        }
        let start = sb.block_at(sb.log_start, sb.log_blocks)?;
        let n = sb.log_blocks << (sb.block_log - 9);
        let first = self.cycle(start, 0)?;
        let last = self.cycle(start, n - 1)?;
        // Blocks before the head carry `first`; from it on, the lap
        // before (`last`). One cycle throughout: the head is at the start.
        let head = if first == last {
            0
        } else {
            let (mut lo, mut hi) = (0u64, n - 1);
            while lo + 1 < hi {
                let mid = lo + (hi - lo) / 2;
                if self.cycle(start, mid)? == first {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            hi
        };
        let prev = |i: u64| if i == 0 { n - 1 } else { i - 1 };
        let mut at = prev(head);
        for _ in 0..MAX_BACK.min(n) {
            let b = self.log_block(start, at)?;
            if be32(&b, 0) == LOG_MAGIC {
                let (ops, lsn, tail) = (be32(&b, 40), be64(&b, 16), be64(&b, 24));
                if tail == lsn {
                    return Ok(false);
                }
                let size = be32(&b, 320);
                let header_blocks = if be32(&b, 8) & 2 != 0 && size > 32 << 10 {
                    u64::from(size.div_ceil(32 << 10))
                } else {
                    1
                };
                if ops == 1 {
                    let op = self.log_block(start, (at + header_blocks) % n)?;
                    if op[9] & UNMOUNT_TRANS != 0 {
                        return Ok(false);
                    }
                }
                return Ok(true);
            }
            at = prev(at);
        }
        Err("no log record found before the log's head".into())
    }
}
