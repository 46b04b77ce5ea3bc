//! Batched calls: concurrent callers of one kind of call share a request.
//!
//! Callers that want the same kind of call against the same target (a
//! region, a queue) within a short window share one request, the way
//! Karpenter batches its EC2 calls. A hundred jobs created at once then
//! cost one DescribeSnapshots, not a hundred, and their workers'
//! terminations and message deletions go out together. A lone caller waits
//! one window (milliseconds) longer than it would alone.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::{AwsError, AwsOperation};

/// How long the first caller of a batch waits for others to join it.
pub const WINDOW: Duration = Duration::from_millis(15);

type Waiter<T, O> = (T, oneshot::Sender<Result<Option<O>, AwsError>>);
type Pending<T, O> = HashMap<String, Vec<Waiter<T, O>>>;

/// Batches of items of type `T` (an ID, a receipt handle) by target, each
/// answered with an `O` per item found.
pub struct Batcher<T, O> {
    operation: AwsOperation,
    /// Items one call takes at most; a larger batch is split.
    max: usize,
    pending: Arc<Mutex<Pending<T, O>>>,
}

impl<T, O> Batcher<T, O>
where
    T: Clone + Eq + Hash + Send + 'static,
    O: Clone + Send + 'static,
{
    pub fn new(operation: AwsOperation, max: usize) -> Self {
        Self {
            operation,
            max: max.max(1),
            pending: Arc::default(),
        }
    }

    /// Adds `item` to the open batch for `target` (opening one if none is),
    /// and returns what the batch's call found for it: `None` when the call
    /// succeeded and did not return it. `run` makes the call for a list of
    /// items; the caller that opens the batch provides it, so every caller
    /// of one batcher must pass an equivalent `run`.
    pub async fn call<F, Fut>(&self, target: &str, item: T, run: F) -> Result<Option<O>, AwsError>
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<HashMap<T, O>, AwsError>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let opens = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let batch = pending.entry(target.to_string()).or_default();
            batch.push((item, tx));
            batch.len() == 1
        };
        if opens {
            // The call runs in a task of its own: a caller that gives up
            // (its future dropped) must not strand the others.
            let taken = self.take_after(WINDOW, target.to_string());
            let max = self.max;
            tokio::spawn(async move {
                let waiters = taken.await;
                for chunk in chunks(waiters, max) {
                    let items: Vec<T> = chunk.iter().map(|(t, _)| t.clone()).collect();
                    let outcome = run(dedup(items)).await;
                    for (item, tx) in chunk {
                        let answer = match &outcome {
                            Ok(found) => Ok(found.get(&item).cloned()),
                            Err(e) => Err(e.clone()),
                        };
                        let _ = tx.send(answer);
                    }
                }
            });
        }
        rx.await.unwrap_or_else(|_| {
            Err(AwsError::Unreachable {
                operation: self.operation.name(),
                detail: "the batched call was abandoned".into(),
            })
        })
    }

    /// After `window`, closes the batch of `target` and returns its waiters.
    fn take_after(
        &self,
        window: Duration,
        target: String,
    ) -> impl Future<Output = Vec<Waiter<T, O>>> + Send + 'static {
        let pending = self.pending.clone();
        async move {
            tokio::time::sleep(window).await;
            pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&target)
                .unwrap_or_default()
        }
    }
}

/// Asks for all `ids` in one call; when AWS refuses such a call as a whole
/// because one ID is unknown or malformed (`not_found`), asks for each
/// alone, so that the others are still found. Unknown IDs are absent from
/// the answer.
pub async fn all_or_each<O, F, Fut>(
    ids: &[String],
    not_found: fn(&AwsError) -> bool,
    call: F,
) -> Result<HashMap<String, O>, AwsError>
where
    F: Fn(Vec<String>) -> Fut,
    Fut: Future<Output = Result<HashMap<String, O>, AwsError>>,
{
    match call(ids.to_vec()).await {
        Err(e) if not_found(&e) && ids.len() > 1 => {
            let mut found = HashMap::new();
            for id in ids {
                match call(vec![id.clone()]).await {
                    Ok(one) => found.extend(one),
                    Err(e) if not_found(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(found)
        }
        Err(e) if not_found(&e) => Ok(HashMap::new()),
        other => other,
    }
}

fn chunks<W>(mut all: Vec<W>, max: usize) -> Vec<Vec<W>> {
    let mut out = Vec::new();
    while all.len() > max {
        let rest = all.split_off(max);
        out.push(std::mem::replace(&mut all, rest));
    }
    if !all.is_empty() {
        out.push(all);
    }
    out
}

/// The distinct items, in first-seen order (two jobs may ask for the same
/// snapshot).
fn dedup<T: Clone + Eq + Hash>(items: Vec<T>) -> Vec<T> {
    let mut seen = std::collections::HashSet::new();
    items
        .into_iter()
        .filter(|i| seen.insert(i.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    type Calls = Arc<Mutex<Vec<Vec<u32>>>>;

    /// A call that finds every even item (answering its double) and records
    /// what it was asked.
    fn even(
        calls: Calls,
    ) -> impl Fn(Vec<u32>) -> futures::future::Ready<Result<HashMap<u32, u32>, AwsError>> {
        move |items| {
            calls.lock().expect("lock").push(items.clone());
            futures::future::ready(Ok(items
                .into_iter()
                .filter(|i| i.is_multiple_of(2))
                .map(|i| (i, i * 2))
                .collect()))
        }
    }

    fn not_found(e: &AwsError) -> bool {
        e.code() == Some("InvalidSnapshot.NotFound")
    }

    #[tokio::test]
    async fn one_unknown_id_fails_only_itself() {
        let calls = Arc::new(AtomicUsize::new(0));
        // AWS's way: one unknown ID fails the whole call.
        let describe = |ids: Vec<String>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if ids.iter().any(|i| i.starts_with("snap-gone")) {
                    return Err(AwsError::Service {
                        operation: "DescribeSnapshots",
                        code: "InvalidSnapshot.NotFound".into(),
                        message: "gone".into(),
                    });
                }
                Ok(ids.into_iter().map(|i| (i.clone(), i.len())).collect())
            }
        };
        let ids: Vec<String> = ["snap-a", "snap-gone", "snap-bb"].map(String::from).into();
        let found = all_or_each(&ids, not_found, describe)
            .await
            .expect("the others are found");
        assert_eq!(found.len(), 2);
        assert_eq!(found.get("snap-bb"), Some(&7));
        assert_eq!(calls.load(Ordering::SeqCst), 4, "all at once, then each");
        // All known: one call.
        calls.store(0, Ordering::SeqCst);
        let known: Vec<String> = ["snap-a", "snap-bb"].map(String::from).into();
        all_or_each(&known, not_found, describe)
            .await
            .expect("found");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Any other error is the caller's.
        let throttled = |_: Vec<String>| async {
            Err::<HashMap<String, usize>, _>(AwsError::Service {
                operation: "DescribeSnapshots",
                code: "RequestLimitExceeded".into(),
                message: "slow down".into(),
            })
        };
        let e = all_or_each(&known, not_found, throttled)
            .await
            .expect_err("fails");
        assert_eq!(e.code(), Some("RequestLimitExceeded"));
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_call_and_get_their_own_answers() {
        let batcher = Arc::new(Batcher::<u32, u32>::new(
            AwsOperation::DescribeSnapshots,
            100,
        ));
        let calls: Calls = Arc::default();
        let answers = futures::future::join_all((0..10).map(|i| {
            let (batcher, calls) = (batcher.clone(), calls.clone());
            async move { batcher.call("r", i, even(calls)).await.expect("answer") }
        }))
        .await;
        assert_eq!(
            calls.lock().expect("lock").len(),
            1,
            "one call for ten callers"
        );
        for (i, answer) in answers.into_iter().enumerate() {
            let i = i as u32;
            assert_eq!(answer, i.is_multiple_of(2).then_some(i * 2), "item {i}");
        }
    }

    #[tokio::test]
    async fn targets_do_not_mix_and_large_batches_are_split() {
        let batcher = Arc::new(Batcher::<u32, u32>::new(AwsOperation::DescribeSnapshots, 4));
        let calls: Calls = Arc::default();
        futures::future::join_all((0..10).map(|i| {
            let (batcher, calls) = (batcher.clone(), calls.clone());
            let target = if i < 6 { "a" } else { "b" };
            async move { batcher.call(target, i, even(calls)).await.expect("answer") }
        }))
        .await;
        let mut seen = calls.lock().expect("lock").clone();
        seen.sort();
        // a: 0..6 in calls of at most 4; b: 6..10.
        assert_eq!(seen, vec![vec![0, 1, 2, 3], vec![4, 5], vec![6, 7, 8, 9]]);
    }

    #[tokio::test]
    async fn the_same_item_is_asked_for_once() {
        let batcher = Arc::new(Batcher::<u32, u32>::new(
            AwsOperation::DescribeSnapshots,
            100,
        ));
        let calls: Calls = Arc::default();
        let answers = futures::future::join_all((0..3).map(|_| {
            let (batcher, calls) = (batcher.clone(), calls.clone());
            async move { batcher.call("r", 8, even(calls)).await.expect("answer") }
        }))
        .await;
        assert_eq!(answers, vec![Some(16); 3]);
        assert_eq!(*calls.lock().expect("lock"), vec![vec![8]]);
    }

    #[tokio::test]
    async fn a_failed_call_fails_every_caller_and_the_next_batch_starts_afresh() {
        let batcher = Arc::new(Batcher::<u32, u32>::new(
            AwsOperation::DescribeSnapshots,
            100,
        ));
        let failing = |_: Vec<u32>| {
            futures::future::ready(Err::<HashMap<u32, u32>, _>(AwsError::Service {
                operation: "Test",
                code: "RequestLimitExceeded".into(),
                message: "slow down".into(),
            }))
        };
        let answers = futures::future::join_all((0..3).map(|i| {
            let batcher = batcher.clone();
            async move { batcher.call("r", i, failing).await }
        }))
        .await;
        for answer in answers {
            assert_eq!(
                answer.expect_err("fails").code(),
                Some("RequestLimitExceeded")
            );
        }
        let calls: Calls = Arc::default();
        assert_eq!(
            batcher.call("r", 2, even(calls)).await.expect("answer"),
            Some(4)
        );
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_strands_nobody() {
        let batcher = Arc::new(Batcher::<u32, u32>::new(
            AwsOperation::DescribeSnapshots,
            100,
        ));
        let runs = Arc::new(AtomicUsize::new(0));
        let slow = {
            let runs = runs.clone();
            move |items: Vec<u32>| {
                runs.fetch_add(1, Ordering::SeqCst);
                async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(items.into_iter().map(|i| (i, i)).collect())
                }
            }
        };
        // The caller that opens the batch is dropped before it closes.
        let opener = {
            let (batcher, slow) = (batcher.clone(), slow.clone());
            tokio::spawn(async move { batcher.call("r", 1, slow).await })
        };
        tokio::task::yield_now().await;
        let other = {
            let batcher = batcher.clone();
            tokio::spawn(async move { batcher.call("r", 2, slow).await })
        };
        opener.abort();
        assert_eq!(other.await.expect("task").expect("answer"), Some(2));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}
