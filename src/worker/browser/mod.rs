//! The file-level recovery browser: HTTPS on the worker, with a self-signed
//! certificate made when the session starts, reading the restore point's
//! filesystems (ext2/3/4, XFS; on the whole volume or on its GPT or MBR
//! partitions) straight from the repository's chunks (no restore to a
//! volume, no mount, no root). People browse folders, search by name, and
//! download a file or a folder (as a tar archive). Every request needs the
//! session token the controller keeps in a Secret next to the RestoreJob;
//! the worker knows only its SHA-256. The session ends after its idle
//! timeout.
//!
//! - `disk`: the volume read from the repository, and paths in it
//! - `partitions`: GPT and MBR tables; `volume`: the partitions as folders
//! - `filesystem`: the trait every reader implements, and ext2/3/4's
//! - `xfs`, `fat`: Tender's own read-only XFS and FAT12/16/32 readers
//! - `session`: TLS, token, the accept loop, idle timeout and maximum life
//! - `certificate`: the session's certificate, valid for its life only
//! - `connections`: how many connections, and which yet to show the token
//! - `guard`: token, cookie, origin and body checks; headers on every answer
//! - `routes`: the HTTP interface (axum); `restore`: "Restore selected"
//! - `selection`: what a request selects, within limits
//! - `pages`: HTML templates and plain-text answers
//! - `archive`: a folder as a tar archive; `stream`: bodies written as read
//!
//! Defences (issue #13): at most `connections::MAX_CONNECTIONS` connections,
//! of which `MAX_PENDING` without the token (the oldest make room for new
//! ones); one deadline for the TLS handshake and a request's head; the
//! token checked before a body is read; bodies, archives and restores
//! bounded; downloads streamed.

mod archive;
#[cfg(test)]
mod attacks;
mod certificate;
mod connections;
mod disk;
mod fat;
mod filesystem;
mod guard;
#[cfg(test)]
mod hostile;
mod ntfs;
mod original;
mod pages;
pub mod partitions;
mod restore;
mod routes;
mod selection;
mod session;
mod stream;
mod volume;
mod xfs;

pub use certificate::{MAX_SESSION_LIFE, session_life};

use partitions::ReadAt;

/// What a folder page costs on `disk`, end to end as a request pays it
/// (partitions surveyed, the filesystem opened, the folder read and
/// sorted, its page rendered): the entries listed and the page's bytes.
/// For `benches/browser.rs` and tools.
pub async fn render_folder<D: ReadAt + Clone + Send + Sync + 'static>(
    disk: D,
    path: String,
) -> Result<(usize, usize), String> {
    let page = tokio::task::spawn_blocking(move || {
        let fs = volume::open_volume(&disk, &volume::survey(&disk)?)?;
        let list = disk::entries(fs.as_ref(), &disk::normalize(&path))?;
        Ok::<_, String>((
            list.len(),
            pages::browse(
                &path,
                &list,
                1,
                &pages::Actions::default(),
                fs.notice(&path),
            ),
        ))
    })
    .await
    .map_err(|e| e.to_string())??;
    let body = axum::body::to_bytes(page.1.into_body(), usize::MAX)
        .await
        .map_err(|e| e.to_string())?;
    Ok((page.0, body.len()))
}

/// Paths whose name contains `needle`, as the search page finds them.
/// For `benches/browser.rs` and tools.
pub async fn search_volume<D: ReadAt + Clone + Send + Sync + 'static>(
    disk: D,
    needle: String,
) -> Result<Vec<String>, String> {
    tokio::task::spawn_blocking(move || {
        let fs = volume::open_volume(&disk, &volume::survey(&disk)?)?;
        Ok(disk::search(fs.as_ref(), &needle)
            .into_iter()
            .map(|(p, _)| p)
            .collect())
    })
    .await
    .map_err(|e| e.to_string())?
}
pub use disk::{RepositoryDisk, check_filesystem};
pub use session::{Ended, EndedBy, Session, SessionConfig, serve};
