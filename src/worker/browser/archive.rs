//! A folder as a tar archive, written with the `tar` crate as it is read,
//! from the [`Selection`] walked (and bounded) before the answer started.
//!
//! Entries carry their path under the folder's name (GNU long-name entries
//! when a path does not fit the header), permissions masked to `0o777`
//! (no set-user-ID, set-group-ID or sticky bits), owner and group 0 with
//! no names (the owner on the restored disk is never carried: whoever
//! extracts the archive owns what it holds, unless root asks for the
//! archive's owner, and gets root's own), and no modification time. Regular files and folders only:
//! symbolic links and devices are left out.

use std::io::{self, Write};

use tar::{EntryType, Header};

use super::filesystem::Filesystem;
use super::selection::Selection;

/// Permissions every folder gets in the archive.
const FOLDER_MODE: u32 = 0o755;

/// Writes `selection` as a tar archive into `out`. On an error nothing
/// more is written, not even the end-of-archive marker, so a cut-off
/// archive never looks complete.
pub(super) fn write(fs: &dyn Filesystem, selection: &Selection, out: impl Write) -> io::Result<()> {
    let mut tar = tar::Builder::new(Fuse { out, blown: false });
    let written = append_all(&mut tar, fs, selection);
    if written.is_err() {
        tar.get_mut().blown = true;
    }
    written?;
    tar.into_inner()?.out.flush()
}

fn append_all<W: Write>(
    tar: &mut tar::Builder<W>,
    fs: &dyn Filesystem,
    selection: &Selection,
) -> io::Result<()> {
    for entry in &selection.entries {
        match entry.file {
            None => {
                let mut folder = header(EntryType::Directory, FOLDER_MODE, 0);
                tar.append_data(&mut folder, format!("{}/", entry.name), io::empty())?;
            }
            Some(file) => {
                let data = fs
                    .open(entry.path.as_str())
                    .map_err(|e| io::Error::other(format!("{}: {e}", entry.path)))?;
                let mut h = header(EntryType::Regular, file.mode, file.size);
                // Exactly the size the header promised: a file that says
                // otherwise now (a damaged or crafted filesystem) fails
                // the archive rather than put it out of step with its
                // headers.
                let exact = Exact {
                    inner: io::Read::take(data, file.size),
                    left: file.size,
                    path: &entry.path,
                };
                tar.append_data(&mut h, &entry.name, exact)?;
            }
        }
    }
    Ok(())
}

/// A file's contents that must be `left` bytes long: ending early is an
/// error.
struct Exact<'p, R> {
    inner: R,
    left: u64,
    path: &'p str,
}

impl<R: io::Read> io::Read for Exact<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} ended {} bytes early", self.path, self.left),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// A header with nothing of the owner in it.
fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode & 0o777);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// Passes writes through until blown; then refuses them, so that
/// `tar::Builder`'s drop cannot finish a failed archive.
struct Fuse<W> {
    out: W,
    blown: bool,
}

impl<W: Write> Write for Fuse<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.blown {
            return Err(io::Error::other("the archive failed"));
        }
        self.out.write(data)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.blown {
            return Err(io::Error::other("the archive failed"));
        }
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {

    use std::io::Read;

    use super::super::disk::Volume;
    use super::super::disk::testing::image;
    use super::super::selection::{ARCHIVE, select};
    use super::*;

    fn write_folder(
        fs: &dyn Filesystem,
        dir: &str,
        base: &str,
        out: &mut Vec<u8>,
    ) -> io::Result<()> {
        let selection = select(fs, &[(dir.into(), base.into())], &ARCHIVE)
            .map_err(|e| io::Error::other(format!("{e:?}")))?;
        write(fs, &selection, out)
    }

    /// (path, mode, uid, gid, user name, group name, contents) of every
    /// entry, as `tar::Archive` reads them back.
    type Entry = (String, u32, u64, u64, String, String, Vec<u8>);

    fn read_back(archive: &[u8]) -> Vec<Entry> {
        let mut out = Vec::new();
        for entry in tar::Archive::new(archive).entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            let h = entry.header().clone();
            let name =
                |n: Option<&[u8]>| String::from_utf8_lossy(n.unwrap_or_default()).into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            out.push((
                path,
                h.mode().unwrap(),
                h.uid().unwrap(),
                h.gid().unwrap(),
                name(h.username_bytes()),
                name(h.groupname_bytes()),
                data,
            ));
        }
        out
    }

    #[test]
    fn long_names_round_trip_and_modes_are_masked() {
        let deep = format!("{}/{}", "d".repeat(120), "f".repeat(200));
        let long = format!("docs/{deep}/{}.txt", "n".repeat(240));
        let fs = image(&[
            ("docs/run.sh", b"#!/bin/sh\n", 0o4755),
            ("docs/shared", b"", 0o1777),
            (long.as_str(), b"far down", 0o640),
            ("elsewhere.txt", b"not in the folder", 0o644),
        ])
        .open()
        .unwrap();
        let mut archive = Vec::new();
        write_folder(&fs, "/docs", "docs", &mut archive).unwrap();
        let entries = read_back(&archive);
        let find = |p: &str| {
            entries
                .iter()
                .find(|e| e.0.trim_end_matches('/') == p)
                .unwrap_or_else(|| {
                    panic!(
                        "{p} not in {:?}",
                        entries.iter().map(|e| &e.0).collect::<Vec<_>>()
                    )
                })
                .clone()
        };
        let far = find(&long);
        assert!(far.0.len() > 255);
        assert_eq!(far.6, b"far down");
        assert_eq!(far.1, 0o640);
        assert_eq!(find("docs/run.sh").1, 0o755, "set-user-ID is masked off");
        assert_eq!(find("docs/shared").1, 0o777, "sticky is masked off");
        assert_eq!(find("docs").1, FOLDER_MODE);
        assert_eq!(find(&format!("docs/{}", "d".repeat(120))).1, FOLDER_MODE);
        for e in &entries {
            assert_eq!((e.2, e.3), (0, 0), "{}: no owner", e.0);
            assert_eq!((e.4.as_str(), e.5.as_str()), ("", ""), "{}: no names", e.0);
        }
        assert!(!entries.iter().any(|e| e.0.contains("elsewhere")));
    }

    #[test]
    fn a_file_shorter_than_its_header_says_fails_the_archive() {
        // A crafted filesystem can list a size its file does not have; the
        // archive must not go out of step with its headers.
        let mut short = Exact {
            inner: io::Read::take(&b"abc"[..], 5),
            left: 5,
            path: "/a",
        };
        let mut out = Vec::new();
        let e = io::Read::read_to_end(&mut short, &mut out).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(e.to_string().contains("/a ended 2 bytes early"), "{e}");
        let mut whole = Exact {
            inner: io::Read::take(&b"abcdef"[..], 5),
            left: 5,
            path: "/a",
        };
        out.clear();
        io::Read::read_to_end(&mut whole, &mut out).unwrap();
        assert_eq!(out, b"abcde");
    }

    #[test]
    fn a_failed_archive_is_not_finished() {
        use super::super::selection::{Entry, FileInfo, Owner};
        let fs = image(&[("a/b.txt", b"b", 0o644)]).open().unwrap();
        let gone = Selection {
            entries: vec![
                Entry {
                    path: "/a".into(),
                    name: "a".into(),
                    file: None,
                    owner: Owner::default(),
                },
                Entry {
                    path: "/a/gone.txt".into(),
                    name: "a/gone.txt".into(),
                    file: Some(FileInfo {
                        size: 1,
                        mode: 0o644,
                    }),
                    owner: Owner::default(),
                },
            ],
            bytes: 1,
        };
        let mut archive = Vec::new();
        assert!(write(&fs, &gone, &mut archive).is_err());
        assert_eq!(
            archive.len(),
            512,
            "the folder's header, no end-of-archive marker"
        );
    }
}
