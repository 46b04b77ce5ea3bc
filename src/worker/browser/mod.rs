//! The file-level recovery browser: HTTPS on the worker, with a self-signed
//! certificate made when the session starts, reading the restore point's
//! ext2/3/4 filesystem straight from the repository's chunks (no restore to
//! a volume, no mount, no root). People browse folders, search by name, and
//! download a file or a folder (as a tar archive). Every request needs the
//! session token the controller keeps in a Secret next to the RestoreJob;
//! the worker knows only its SHA-256. The session ends after its idle
//! timeout.
//!
//! - `disk`: the volume read from the repository, the filesystem on it
//! - `session`: certificate, TLS, token, the accept loop and idle timeout
//! - `routes`: the HTTP interface (axum)
//! - `pages`: HTML templates and plain-text answers
//! - `archive`: a folder as a tar archive; `stream`: bodies written as read

mod archive;
mod disk;
mod pages;
mod routes;
mod session;
mod stream;

pub use disk::{RepositoryDisk, check_filesystem};
pub use session::{Session, SessionConfig, serve};
