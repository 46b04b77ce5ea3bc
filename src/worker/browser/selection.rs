//! What a request selects: the folders and regular files under the paths
//! it names. The whole selection is walked (metadata only) before anything
//! is sent or copied, within limits, so a request for too much gets a
//! clear refusal rather than an answer cut off part way.

use super::disk::{entries, join};
use super::filesystem::{Filesystem, Meta};

/// How much one request may select.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    /// Folders and files.
    pub entries: usize,
    /// Bytes of all files together.
    pub bytes: u64,
    /// Folders below a selected path.
    pub depth: usize,
    /// Bytes of one file.
    pub file_bytes: u64,
}

/// A folder's `.tar` download: streamed, so bounded for the time it takes.
pub(super) const ARCHIVE: Limits = Limits {
    entries: 200_000,
    bytes: 64 << 30,
    depth: 128,
    file_bytes: u64::MAX,
};

/// "Restore selected": every file is read into memory before its upload.
pub(super) const RESTORE: Limits = Limits {
    entries: 10_000,
    bytes: 8 << 30,
    depth: 128,
    file_bytes: 256 << 20,
};

/// One selected folder or file.
#[derive(Debug)]
pub(super) struct Entry {
    /// Where it is in the filesystem.
    pub path: String,
    /// Its name in an archive (the selected path's name, then below it).
    pub name: String,
    /// `None` for a folder.
    pub file: Option<FileInfo>,
    /// Who owns it, its permission bits and its time, as the filesystem has
    /// them (what a restore onto the source instance gives it back).
    pub owner: Owner,
}

/// An entry's owner, permission bits and last change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub mtime: i64,
}

impl Owner {
    pub(super) fn of(meta: &Meta) -> Self {
        Self {
            uid: meta.uid,
            gid: meta.gid,
            mode: meta.mode,
            mtime: meta.mtime,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(super) struct FileInfo {
    pub size: u64,
    /// Permission bits as the filesystem has them (masked when written).
    pub mode: u32,
}

/// Everything selected, in walk order (a folder before what it holds).
#[derive(Debug, Default)]
pub(super) struct Selection {
    pub entries: Vec<Entry>,
    pub bytes: u64,
}

impl Selection {
    /// The files, without the folders.
    pub(super) fn files(&self) -> impl Iterator<Item = (&Entry, FileInfo)> {
        self.entries.iter().filter_map(|e| Some((e, e.file?)))
    }
}

/// Why a selection was refused.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    NotFound(String),
    TooMuch(String),
}

/// Selects `roots` (path, name in an archive), each with everything below
/// it; symbolic links, devices and the like are left out. A root inside
/// another counts once.
pub(super) fn select(
    fs: &dyn Filesystem,
    roots: &[(String, String)],
    limits: &Limits,
) -> Result<Selection, Refusal> {
    let mut out = Selection::default();
    for (path, name) in disjoint(roots) {
        let meta = fs
            .metadata(path.as_str())
            .map_err(|e| Refusal::NotFound(format!("{path}: {e}")))?;
        let mut todo = vec![(path.clone(), name.clone(), meta, 0usize)];
        while let Some((path, name, meta, depth)) = todo.pop() {
            if meta.is_dir() {
                let list =
                    entries(fs, &path).map_err(|e| Refusal::NotFound(format!("{path}: {e}")))?;
                if !list.is_empty() && depth >= limits.depth {
                    return Err(too_much(format!(
                        "{path} is more than {} folders deep",
                        limits.depth
                    )));
                }
                out.add(path.clone(), name.clone(), None, Owner::of(&meta), limits)?;
                for (child, child_meta) in list.into_iter().rev() {
                    let child_name = format!("{name}/{child}");
                    todo.push((join(&path, &child), child_name, child_meta, depth + 1));
                }
            } else if meta.is_file() {
                let file = file_info(&meta);
                if file.size > limits.file_bytes {
                    return Err(too_much(format!(
                        "{path} has {}, more than the {} one file may have here: download it instead",
                        size(file.size),
                        size(limits.file_bytes)
                    )));
                }
                out.add(path, name, Some(file), Owner::of(&meta), limits)?;
            }
        }
    }
    Ok(out)
}

impl Selection {
    fn add(
        &mut self,
        path: String,
        name: String,
        file: Option<FileInfo>,
        owner: Owner,
        limits: &Limits,
    ) -> Result<(), Refusal> {
        if self.entries.len() >= limits.entries {
            return Err(too_much(format!(
                "more than {} files and folders",
                limits.entries
            )));
        }
        self.bytes += file.map_or(0, |f| f.size);
        if self.bytes > limits.bytes {
            return Err(too_much(format!(
                "more than {} of files",
                size(limits.bytes)
            )));
        }
        self.entries.push(Entry {
            path,
            name,
            file,
            owner,
        });
        Ok(())
    }
}

fn file_info(meta: &Meta) -> FileInfo {
    FileInfo {
        size: meta.size,
        mode: meta.mode,
    }
}

fn too_much(what: String) -> Refusal {
    Refusal::TooMuch(format!(
        "this selects too much ({what}): choose fewer or smaller folders"
    ))
}

/// `bytes` as people read it.
fn size(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

/// The roots not inside another root, sorted, each once.
fn disjoint(roots: &[(String, String)]) -> Vec<&(String, String)> {
    let mut sorted: Vec<&(String, String)> = roots.iter().collect();
    sorted.sort();
    let mut kept: Vec<&(String, String)> = Vec::new();
    for root in sorted {
        let inside = kept.iter().any(|k| {
            let dir = k.0.trim_end_matches('/');
            root.0 == k.0 || root.0.starts_with(&format!("{dir}/"))
        });
        if !inside {
            kept.push(root);
        }
    }
    kept
}

#[cfg(test)]
mod tests {

    use super::super::disk::Volume;
    use super::super::disk::testing::image;
    use super::*;

    fn roots(paths: &[&str]) -> Vec<(String, String)> {
        paths
            .iter()
            .map(|p| (p.to_string(), p.to_string()))
            .collect()
    }

    #[test]
    fn a_selection_is_every_folder_and_file_below_once() {
        let fs = image(&[
            ("docs/notes/todo.txt", b"x", 0o644),
            ("docs/report.bin", b"yz", 0o4755),
            ("hello.txt", b"hi", 0o644),
        ])
        .open()
        .unwrap();
        let all = select(
            &fs,
            &roots(&["/docs/report.bin", "/docs", "/docs/notes"]),
            &RESTORE,
        )
        .unwrap();
        let names: Vec<&str> = all.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "/docs",
                "/docs/notes",
                "/docs/notes/todo.txt",
                "/docs/report.bin"
            ]
        );
        assert_eq!(all.bytes, 3);
        let files: Vec<(&str, u64, u32)> = all
            .files()
            .map(|(e, f)| (e.path.as_str(), f.size, f.mode & 0o7777))
            .collect();
        assert_eq!(
            files,
            [
                ("/docs/notes/todo.txt", 1, 0o644),
                ("/docs/report.bin", 2, 0o4755)
            ]
        );
        let archive = select(&fs, &[("/docs".into(), "docs".into())], &ARCHIVE).unwrap();
        assert_eq!(archive.entries[2].name, "docs/notes/todo.txt");
        assert!(matches!(
            select(&fs, &roots(&["/nope"]), &RESTORE),
            Err(Refusal::NotFound(_))
        ));
        assert_eq!(disjoint(&roots(&["/", "/a"])).len(), 1);
        assert_eq!(disjoint(&roots(&["/a", "/ab", "/a/b"])).len(), 2);
    }

    #[test]
    fn too_many_too_large_or_too_deep_is_refused() {
        let fs = image(&[("a/b/c/d.txt", b"12345", 0o644), ("a/e.txt", b"123", 0o644)])
            .open()
            .unwrap();
        let all = roots(&["/a"]);
        let refused = |limits: Limits, what: &str| match select(&fs, &all, &limits) {
            Err(Refusal::TooMuch(m)) => assert!(m.contains(what), "{m}"),
            other => panic!("{limits:?}: {other:?}"),
        };
        let roomy = Limits {
            entries: 100,
            bytes: 100,
            depth: 10,
            file_bytes: 100,
        };
        assert_eq!(select(&fs, &all, &roomy).unwrap().entries.len(), 5);
        refused(
            Limits {
                entries: 4,
                ..roomy
            },
            "more than 4 files and folders",
        );
        refused(Limits { bytes: 7, ..roomy }, "more than 0 MiB of files");
        refused(
            Limits { depth: 2, ..roomy },
            "/a/b/c is more than 2 folders deep",
        );
        refused(
            Limits {
                file_bytes: 4,
                ..roomy
            },
            "/a/b/c/d.txt has 0 MiB",
        );
        assert!(select(&fs, &all, &Limits { depth: 3, ..roomy }).is_ok());
    }
}
