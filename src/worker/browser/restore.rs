//! "Restore selected": copies the selected files (a folder: every regular
//! file in it) to the S3 location the job allows, each under its path in
//! the filesystem, within the limits of [`selection::RESTORE`].

use std::sync::Arc;

use axum::extract::{Form, State};
use axum::http::StatusCode;
use tokio::sync::mpsc;
use tracing::info;

use super::disk::{Volume, normalize};
use super::pages::{self, Problem};
use super::routes::{Answer, Browser, RestoreTarget, on_fs, refused, server_error};
use super::selection::{self, select};

pub(super) async fn restore(
    State(browser): State<Browser>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Answer {
    let Some(target) = browser.restore_to.clone() else {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "this RestoreJob allows downloads only: set spec.restoreFilesTo to restore files to S3",
        ));
    };
    let selected = selected_paths(fields)?;
    let files = on_fs(&browser.volume, move |fs| {
        let selection = select(fs, &selected, &selection::RESTORE).map_err(refused)?;
        let files: Vec<(String, u64)> = selection
            .files()
            .map(|(e, f)| (e.path.clone(), f.size))
            .collect();
        if files.is_empty() {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "the selection holds no regular file (symbolic links, devices and partitions Tender cannot read are left out): select files or folders that hold some",
            ));
        }
        Ok(files)
    })
    .await?;
    let done = copy_to_s3(&browser.volume, &target, files).await?;
    info!(
        files = done.len(),
        bucket = target.location.bucket,
        "restored selected files"
    );
    Ok(pages::restored(&done))
}

/// The paths a form selects (fields `path`), each as (path, its name in
/// the selection); at least one.
pub(super) fn selected_paths(
    fields: Vec<(String, String)>,
) -> Result<Vec<(String, String)>, Problem> {
    let selected: Vec<(String, String)> = fields
        .into_iter()
        .filter(|(k, _)| k == "path")
        .map(|(_, v)| {
            let path = normalize(&v);
            (path.clone(), path)
        })
        .collect();
    if selected.is_empty() {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "select at least one file or folder",
        ));
    }
    Ok(selected)
}

/// Reads the files one after the other on a blocking thread while the
/// previous one is uploaded; returns the objects written.
async fn copy_to_s3(
    volume: &Arc<dyn Volume>,
    target: &RestoreTarget,
    files: Vec<(String, u64)>,
) -> Result<Vec<String>, Problem> {
    let total = files.len();
    let (tx, mut rx) = mpsc::channel::<Result<(String, Vec<u8>), Problem>>(1);
    let volume = volume.clone();
    tokio::task::spawn_blocking(move || {
        let fs = match volume.open() {
            Ok(fs) => fs,
            Err(e) => {
                let _ = tx.blocking_send(Err(server_error(e)));
                return;
            }
        };
        for (path, size) in files {
            let read = fs
                .read_file(path.as_str(), size)
                .map_err(|e| Problem::new(StatusCode::NOT_FOUND, format!("{path}: {e}")));
            if tx.blocking_send(read.map(|data| (path, data))).is_err() {
                return;
            }
        }
    });
    let location = &target.location;
    let mut done = Vec::new();
    while let Some(read) = rx.recv().await {
        let (path, data) = read?;
        let key = format!("{}{}", location.prefix, path.trim_start_matches('/'));
        let put = target
            .aws
            .repository()
            .put_object(location, &key, data, "application/octet-stream")
            .await;
        if let Err(e) = put {
            return Err(server_error(format!(
                "restored {} of {total} files; {path} failed: {e}",
                done.len()
            )));
        }
        done.push(format!("s3://{}/{key}", location.bucket));
    }
    if done.len() < total {
        return Err(server_error(format!(
            "restored {} of {total} files; reading the next one stopped",
            done.len()
        )));
    }
    Ok(done)
}
