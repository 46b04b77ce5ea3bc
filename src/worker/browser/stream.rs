//! Response bodies written on a blocking thread (the filesystem reads wait
//! on S3) and streamed to the client through a bounded channel, so memory
//! stays the same whatever the size of the download.

use std::io::{self, Write};

use axum::body::{Body, Bytes};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::pages::Problem;
use super::session::Activity;

/// Bytes handed to the connection at a time.
const CHUNK: usize = 64 * 1024;
/// Chunks written ahead of the client at most.
const CHUNKS_IN_FLIGHT: usize = 4;

/// `std::io::Write` into the response body.
pub(super) struct BodyWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
    activity: Activity,
}

impl BodyWriter {
    fn send(&mut self) -> io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(Ok(Bytes::from(chunk)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))?;
        // A download in progress keeps the session alive.
        self.activity.touch();
        Ok(())
    }
}

impl Write for BodyWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            self.send()
        }
    }
}

/// Runs `start` on a blocking thread: it decides the response (`Err`: an
/// error page) and returns what `write` needs, which then writes the body
/// on the same thread while the client reads it. A failure part way cuts
/// the response off, so the client sees an error, never a short file.
pub(super) async fn blocking_body<H, S>(
    activity: Activity,
    start: impl FnOnce() -> Result<(H, S), Problem> + Send + 'static,
    write: impl FnOnce(S, &mut BodyWriter) -> io::Result<()> + Send + 'static,
) -> Result<(H, Body), Problem>
where
    H: Send + 'static,
{
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let (head_tx, head_rx) = oneshot::channel();
    tokio::task::spawn_blocking(move || {
        let state = match start() {
            Ok((head, state)) => {
                if head_tx.send(Ok(head)).is_err() {
                    return;
                }
                state
            }
            Err(problem) => {
                let _ = head_tx.send(Err(problem));
                return;
            }
        };
        let mut out = BodyWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
            activity,
        };
        if let Err(e) = write(state, &mut out).and_then(|()| out.flush()) {
            if e.kind() != io::ErrorKind::BrokenPipe {
                warn!(error = %e, "a download failed part way; its response is cut off");
            }
            let _ = out.tx.blocking_send(Err(e));
        }
    });
    let head = head_rx.await.map_err(|_| {
        Problem::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "the download stopped before it started",
        )
    })??;
    let chunks = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    Ok((head, Body::from_stream(chunks)))
}

#[cfg(test)]
mod tests {

    use super::*;

    #[tokio::test]
    async fn a_body_arrives_whole_and_a_failure_cuts_it_off() {
        let activity = Activity::new();
        let (head, body) = blocking_body(
            activity.clone(),
            || Ok(("head", 3 * CHUNK)),
            |n, out| out.write_all(&vec![7u8; n]),
        )
        .await
        .map_err(|_| "no body")
        .unwrap();
        assert_eq!(head, "head");
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        assert_eq!(bytes.len(), 3 * CHUNK);

        let (_, body) = blocking_body(
            activity.clone(),
            || Ok(((), ())),
            |(), out| {
                out.write_all(&vec![1u8; CHUNK + 1])?;
                Err(io::Error::other("the disk went away"))
            },
        )
        .await
        .map_err(|_| "no body")
        .unwrap();
        assert!(axum::body::to_bytes(body, usize::MAX).await.is_err());

        let refused = blocking_body(
            activity,
            || Err::<((), ()), _>(Problem::new(axum::http::StatusCode::NOT_FOUND, "no")),
            |(), _| Ok(()),
        )
        .await;
        assert_eq!(
            refused.map(|_| ()).unwrap_err().status,
            axum::http::StatusCode::NOT_FOUND
        );
    }
}
