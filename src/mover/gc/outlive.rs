//! Whether a backup ran past the grace period of a condemned list written
//! while it ran, and so must not store its manifest.

use jiff::{SignedDuration, Timestamp};

use super::read_list;
use crate::mover::MoverError;
use crate::mover::manifest::RepositoryLocation;
use crate::mover::store::{Object, ReadStore, for_each_object};

/// Whether a backup that read the condemned lists at `started` may not
/// store its manifest at `now`: a list it may not have read (written since
/// `started`, give or take 1 % of its grace period for the clocks) is ripe
/// by then, or within that 1 %, so a chunk the backup reused on the word
/// of its parent may be deleted. A list read at the start is no danger (the
/// backup never relied on what it names), nor one not ripe yet (the next
/// collection sees the manifest, which references what it used).
pub fn outlives(
    visible: Timestamp,
    grace: SignedDuration,
    started: Timestamp,
    now: Timestamp,
) -> bool {
    let margin = grace / 100;
    visible + margin >= started && now + margin >= visible + grace
}

/// The first condemned list that makes a backup started at `started`
/// outlive its grace period now (see [`outlives`]); `fallback` is the
/// grace period of a list that records none.
pub async fn outlived_by<S: ReadStore>(
    store: &S,
    location: &RepositoryLocation,
    started: Timestamp,
    now: Timestamp,
    fallback: SignedDuration,
) -> Result<Option<String>, MoverError> {
    let mut recent = Vec::new();
    for_each_object(store, &location.condemned_prefix(), |o: Object| {
        // A list older than a week before the start was read at the start
        // (unless its grace is over 700 days): the rest are read and judged.
        if o.key.ends_with(".json") && o.modified + SignedDuration::from_hours(24 * 7) >= started {
            recent.push((o.key, o.modified));
        }
    })
    .await?;
    for (key, visible) in recent {
        let Some(list) = read_list(store, &key).await? else {
            continue;
        };
        let grace = list.grace_seconds.map_or(fallback, |s| {
            SignedDuration::from_secs(i64::try_from(s).unwrap_or(i64::MAX))
        });
        if outlives(visible, grace, started, now) {
            return Ok(Some(key));
        }
    }
    Ok(None)
}
