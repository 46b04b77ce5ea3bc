//! Whether an XFS log holds changes that are not yet in place. A snapshot
//! of a running instance catches XFS as a crash would: metadata changed in
//! the last moments (new files, renames, sizes) can be only in the log,
//! which the kernel replays at the next mount and this reader does not.
//! The browser says so rather than show such a filesystem as complete.
//!
//! The log is a ring of 512-byte blocks, each stamped with the cycle (lap)
//! it was written in; the head is where the cycle number drops. The last
//! record before it tells: an unmount record means nothing is pending;
//! else its tail is where a replay would start, and the records from there
//! to the head are read: an idle filesystem "covers" its log with records
//! that log only the superblock, anything else is a change not yet in
//! place. Layout: the kernel's `xfs_log_format.h`,
//! `xfs_log_recover.c` (`xlog_find_head`, `xlog_check_unmount_rec`).

use std::collections::HashMap;

use super::{Xfs, be32, be64};
use crate::worker::browser::partitions::ReadAt;

const LOG_MAGIC: u32 = 0xfeed_babe;
/// An operation's flags (`xfs_log_format.h`).
const START_TRANS: u8 = 0x01;
const COMMIT_TRANS: u8 = 0x02;
const CONTINUE_TRANS: u8 = 0x04;
const WAS_CONTINUED: u8 = 0x08;
const UNMOUNT_TRANS: u8 = 0x20;
/// A transaction header's magic ("TRAN") as a little-endian writer stores it.
const TRANS_MAGIC_LE: [u8; 4] = 0x5452_414e_u32.to_le_bytes();
/// A buffer log item.
const LI_BUF: u16 = 0x123c;
/// Records walked from the tail before the log counts as busy.
const MAX_RECORDS: usize = 4096;
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
                let record = Record::parse(&b);
                let ends = (at + record.header_blocks + u64::from(record.len.div_ceil(512))) % n;
                if record.ops == 1 && ends == head {
                    let op = self.log_block(start, (at + record.header_blocks) % n)?;
                    if op[9] & UNMOUNT_TRANS != 0 {
                        return Ok(false);
                    }
                }
                // Replay would start at the tail: is there anything but
                // the superblock between it and the head?
                let tail = record.tail & 0xffff_ffff;
                return self.changes_between(start, n, tail, head);
            }
            at = prev(at);
        }
        Err("no log record found before the log's head".into())
    }

    /// Whether the records from block `tail` to `head` change anything but
    /// the superblock. An idle filesystem "covers" its log with records
    /// that log only the superblock; anything else (an inode, a directory
    /// or btree block, a freed extent) is a change a replay would make.
    fn changes_between(&self, start: u64, n: u64, tail: u64, head: u64) -> Result<bool, String> {
        if tail >= n {
            return Err("the log's tail is outside the log".into());
        }
        let mut at = tail;
        let mut state: HashMap<u32, Expect> = HashMap::new();
        let mut records = 0;
        let mut walked = 0u64;
        while at != head {
            records += 1;
            // One lap at most: a head never landed on is a damaged log.
            if records > MAX_RECORDS || walked > n {
                return Err("the log's records do not lead to its head".into());
            }
            let b = self.log_block(start, at)?;
            if be32(&b, 0) != LOG_MAGIC {
                return Err(format!("no log record at block {at}"));
            }
            let record = Record::parse(&b);
            let data_blocks = u64::from(record.len.div_ceil(512));
            if data_blocks > 512
                || record.header_blocks > 8
                || data_blocks > 64 * record.header_blocks
            {
                return Err("a log record is larger than the log allows".into());
            }
            walked += record.header_blocks + data_blocks;
            // Extended headers (records over 32 KiB) hold the first words
            // of the blocks past the 64th.
            let mut extended = Vec::new();
            for h in 1..record.header_blocks {
                extended.push(self.log_block(start, (at + h) % n)?);
            }
            // The record's data, with the first word of each block put
            // back from the headers' cycle data.
            let mut data = Vec::with_capacity((data_blocks * 512) as usize);
            for i in 0..data_blocks {
                let mut block = self.log_block(start, (at + record.header_blocks + i) % n)?;
                let (h, k) = (i / 64, (i % 64) as usize);
                let word = match h {
                    0 => b[44 + 4 * k..48 + 4 * k].to_vec(),
                    h => extended[h as usize - 1][4 + 4 * k..8 + 4 * k].to_vec(),
                };
                block[0..4].copy_from_slice(&word);
                data.extend_from_slice(&block);
            }
            data.truncate(record.len as usize);
            let mut p = 0usize;
            for _ in 0..record.ops {
                let Some(head) = data.get(p..p + 12) else {
                    return Err("a log operation runs past its record".into());
                };
                let (tid, len, flags) = (be32(head, 0), be32(head, 4) as usize, head[9]);
                let Some(payload) = data.get(p + 12..p + 12 + len) else {
                    return Err("a log operation runs past its record".into());
                };
                p += 12 + len;
                if flags & UNMOUNT_TRANS != 0 {
                    continue;
                }
                // Split across records: not worth following; count it.
                if flags & (CONTINUE_TRANS | WAS_CONTINUED) != 0 {
                    return Ok(true);
                }
                if flags & START_TRANS != 0 {
                    state.insert(tid, Expect::Header);
                    continue;
                }
                // The commit record: an operation of its own, empty.
                if flags & COMMIT_TRANS != 0 {
                    state.remove(&tid);
                    continue;
                }
                let next = match state.get(&tid).copied().unwrap_or(Expect::Header) {
                    Expect::Header => {
                        if payload.get(0..4) != Some(&TRANS_MAGIC_LE[..]) {
                            return Ok(true);
                        }
                        Expect::Item
                    }
                    Expect::Item => {
                        // Log item formats are in the writer's byte order:
                        // little-endian on EC2 (x86_64, arm64).
                        let Some(item) = payload.get(0..16) else {
                            return Ok(true);
                        };
                        let kind = u16::from_le_bytes([item[0], item[1]]);
                        let regions = u16::from_le_bytes([item[2], item[3]]);
                        let blkno = i64::from_le_bytes(item[8..16].try_into().unwrap_or([0xff; 8]));
                        if kind != LI_BUF || blkno != 0 {
                            return Ok(true);
                        }
                        match regions {
                            0 | 1 => Expect::Item,
                            r => Expect::Regions(r - 1),
                        }
                    }
                    Expect::Regions(1) => Expect::Item,
                    Expect::Regions(r) => Expect::Regions(r - 1),
                };
                state.insert(tid, next);
            }
            at = (at + record.header_blocks + data_blocks) % n;
        }
        Ok(false)
    }
}

/// What a transaction's next operation holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Header,
    Item,
    /// Regions of the current item still to come.
    Regions(u16),
}

/// A log record's header.
struct Record {
    /// Bytes of data after the header blocks.
    len: u32,
    ops: u32,
    /// Where replay would start: cycle in the high half, block in the low.
    tail: u64,
    header_blocks: u64,
}

impl Record {
    fn parse(b: &[u8]) -> Self {
        let size = be32(b, 320);
        Self {
            len: be32(b, 12),
            ops: be32(b, 40),
            tail: be64(b, 24),
            // Version 2 logs with records over 32 KiB have one header
            // block per 32 KiB.
            header_blocks: if be32(b, 8) & 2 != 0 && size > 32 << 10 {
                u64::from(size.div_ceil(32 << 10))
            } else {
                1
            },
        }
    }
}
