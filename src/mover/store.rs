//! The repository as garbage collection sees it: pages of keys with their
//! size and last-modified time (the store's clock, never a worker's), and
//! objects to read, write and delete. [`MemoryStore`] holds it in memory,
//! for the randomized test and the benchmark (the emulator scans every key
//! on every listing, so a million chunks are measured here, while the
//! backup side goes through S3 as always).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;

use super::MoverError;

/// One object of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    pub key: String,
    pub size: u64,
    /// When the store last wrote it (S3's `LastModified`).
    pub modified: Timestamp,
}

/// Keys per listing page at most, as S3's ListObjectsV2 gives them.
pub const PAGE: usize = 1000;

/// One page of a listing. S3 may return fewer keys than asked while more
/// follow: only `truncated` says whether the listing goes on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    pub objects: Vec<Object>,
    pub truncated: bool,
}

/// What a backup reads of the repository's bookkeeping (the condemned
/// lists).
pub trait ReadStore: Send + Sync {
    /// Up to [`PAGE`] objects under `prefix` whose key is after
    /// `start_after`, in key order, and whether more follow.
    fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
    ) -> impl Future<Output = Result<Page, MoverError>> + Send;
    /// The object `key`; `None` when there is none.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>, MoverError>> + Send;
}

/// What garbage collection needs of a repository.
pub trait Store: ReadStore {
    /// Writes `key`, replacing any object there; returns the store's
    /// time of the write.
    fn put(
        &self,
        key: &str,
        body: Vec<u8>,
    ) -> impl Future<Output = Result<Timestamp, MoverError>> + Send;
    /// Deletes up to [`PAGE`] keys (absent ones are no error).
    fn delete(&self, keys: &[String]) -> impl Future<Output = Result<(), MoverError>> + Send;
}

/// Calls `f` on every object under `prefix`, a page at a time.
pub async fn for_each_object<S: ReadStore>(
    store: &S,
    prefix: &str,
    mut f: impl FnMut(Object),
) -> Result<(), MoverError> {
    let mut after: Option<String> = None;
    loop {
        let page = store.list_page(prefix, after.as_deref()).await?;
        after = page.objects.last().map(|o| o.key.clone()).or(after);
        for object in page.objects {
            f(object);
        }
        if !page.truncated {
            return Ok(());
        }
    }
}

/// A step of the store, for tests that interleave other work with it.
pub type Hook = Box<dyn FnMut(&mut MemoryInner) + Send>;

/// An in-memory [`Store`] with its own clock, which moves one tick (a
/// millisecond) per write unless a test moves it further.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<MemoryInner>>,
    hook: Arc<Mutex<Option<Hook>>>,
}

/// What a [`MemoryStore`] holds.
#[derive(Default)]
pub struct MemoryInner {
    pub objects: BTreeMap<String, Stored>,
    pub clock: i64,
    /// When not 0, listing pages hold fewer keys (between 1 and this),
    /// as S3's may.
    pub short_pages: usize,
}

/// One object: its bytes (or only its size, for generated chunks) and
/// when it was written, in milliseconds of the store's clock.
#[derive(Clone, Debug)]
pub struct Stored {
    pub body: Option<Arc<Vec<u8>>>,
    pub size: u64,
    pub modified: i64,
}

impl MemoryInner {
    /// Writes `key` now (one tick later than the last write).
    pub fn write(&mut self, key: &str, body: Option<Vec<u8>>, size: u64) -> i64 {
        self.clock += 1;
        let size = body.as_ref().map_or(size, |b| b.len() as u64);
        self.objects.insert(
            key.to_string(),
            Stored {
                body: body.map(Arc::new),
                size,
                modified: self.clock,
            },
        );
        self.clock
    }

    pub fn now(&self) -> Timestamp {
        Timestamp::from_millisecond(self.clock).unwrap_or(Timestamp::UNIX_EPOCH)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MemoryStore {
    /// Runs `f` on the contents, outside any store call.
    pub fn with<R>(&self, f: impl FnOnce(&mut MemoryInner) -> R) -> R {
        f(&mut lock(&self.inner))
    }

    /// Runs `hook` on the contents before every store call (a randomized
    /// test interleaves backups with garbage collection this way).
    pub fn set_hook(&self, hook: Option<Hook>) {
        *lock(&self.hook) = hook;
    }

    fn step(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        let mut inner = lock(&self.inner);
        if let Some(hook) = lock(&self.hook).as_mut() {
            hook(&mut inner);
        }
        inner
    }
}

impl ReadStore for MemoryStore {
    async fn list_page(&self, prefix: &str, start_after: Option<&str>) -> Result<Page, MoverError> {
        let inner = self.step();
        let from = match start_after {
            Some(after) if after >= prefix => std::ops::Bound::Excluded(after.to_string()),
            _ => std::ops::Bound::Included(prefix.to_string()),
        };
        // Like S3, a page may hold fewer keys than the most while more
        // follow (`short_pages`).
        let limit = match inner.short_pages {
            0 => PAGE,
            n => (inner.clock as usize % n).max(1),
        };
        let mut keys = inner
            .objects
            .range((from, std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix));
        let objects: Vec<Object> = keys
            .by_ref()
            .take(limit)
            .map(|(k, v)| Object {
                key: k.clone(),
                size: v.size,
                modified: Timestamp::from_millisecond(v.modified).unwrap_or(Timestamp::UNIX_EPOCH),
            })
            .collect();
        let truncated = keys.next().is_some();
        Ok(Page { objects, truncated })
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, MoverError> {
        let inner = self.step();
        Ok(inner
            .objects
            .get(key)
            .map(|o| o.body.as_deref().cloned().unwrap_or_default()))
    }
}

impl Store for MemoryStore {
    async fn put(&self, key: &str, body: Vec<u8>) -> Result<Timestamp, MoverError> {
        let mut inner = self.step();
        let at = inner.write(key, Some(body), 0);
        Ok(Timestamp::from_millisecond(at).unwrap_or(Timestamp::UNIX_EPOCH))
    }

    async fn delete(&self, keys: &[String]) -> Result<(), MoverError> {
        let mut inner = self.step();
        for key in keys {
            inner.objects.remove(key);
        }
        Ok(())
    }
}

/// The repository in S3, as a backup reads its bookkeeping.
pub struct S3Store<'a> {
    pub aws: &'a crate::aws::AwsClients,
    pub location: &'a super::manifest::RepositoryLocation,
}

impl ReadStore for S3Store<'_> {
    async fn list_page(&self, prefix: &str, start_after: Option<&str>) -> Result<Page, MoverError> {
        let (objects, truncated) = self
            .aws
            .repository()
            .list_page(self.location, prefix, start_after)
            .await?;
        Ok(Page {
            objects: objects
                .into_iter()
                .map(|(key, size, modified)| Object {
                    key,
                    size,
                    modified,
                })
                .collect(),
            truncated,
        })
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, MoverError> {
        Ok(self.aws.repository().get_object(self.location, key).await?)
    }
}

/// The repository in S3, as a retention run collects it: a write's time is
/// S3's `LastModified` of what it wrote (read back with a HEAD, since a
/// PUT's answer carries none), and deletes go a thousand keys a call.
impl Store for S3Store<'_> {
    async fn put(&self, key: &str, body: Vec<u8>) -> Result<Timestamp, MoverError> {
        let repository = self.aws.repository();
        repository
            .put_object(self.location, key, body, "application/json")
            .await?;
        repository
            .last_modified(self.location, key)
            .await?
            .ok_or_else(|| {
                MoverError::Aws(crate::aws::AwsError::Unreachable {
                    operation: "HeadObject",
                    detail: format!("S3 does not find {key}, which it has just written"),
                })
            })
    }

    async fn delete(&self, keys: &[String]) -> Result<(), MoverError> {
        Ok(self
            .aws
            .repository()
            .delete_objects(self.location, keys)
            .await?)
    }
}
