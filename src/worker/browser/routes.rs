//! What the browser answers, as an axum `Router`:
//!
//! | request | answer |
//! |---|---|
//! | `GET /` | 302 to `/browse/` |
//! | `GET /browse/<folder>` | the folder's page |
//! | `GET /search?q=<part of a name>` | paths whose name contains it |
//! | `GET /file/<file>` | the file, as an attachment |
//! | `GET /archive/<folder>` | the folder as a `.tar` attachment |
//! | `POST /restore` (form fields `path`) | copies them to the job's S3 location |
//!
//! Every request needs the session token: `?token=` (which also sets the
//! `tender_session` cookie, so later links need not carry it), an
//! `Authorization: Bearer` header, or that cookie.

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Form, Path, Query, Request, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, HeaderMap,
    HeaderValue, LOCATION, SET_COOKIE, STRICT_TRANSPORT_SECURITY, X_CONTENT_TYPE_OPTIONS,
};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ext4_view::Ext4;
use tokio::sync::mpsc;
use tracing::info;

use super::disk::{self, Volume, file_name, normalize};
use super::pages::{self, Problem};
use super::session::{Activity, SessionToken};
use super::{archive, stream};
use crate::aws::AwsClients;
use crate::mover::manifest::RepositoryLocation;

const COOKIE_NAME: &str = "tender_session";
/// The largest form accepted (a list of selected paths).
const MAX_FORM: usize = 1 << 20;
const NEEDS_TOKEN: &str = "this file-level recovery session needs its token: open the URL with ?token=<token from the RestoreJob's session Secret>";

/// What every request of a session shares.
#[derive(Clone)]
pub(super) struct Browser {
    pub volume: Arc<dyn Volume>,
    /// Where "Restore selected" copies files; `None`: downloads only.
    pub restore_to: Option<Arc<RestoreTarget>>,
    pub token: Arc<SessionToken>,
    pub activity: Activity,
}

/// The S3 location restores go to, and the clients that write there.
pub(super) struct RestoreTarget {
    pub aws: AwsClients,
    pub location: RepositoryLocation,
}

pub(super) fn router(browser: Browser) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { (StatusCode::FOUND, [(LOCATION, "/browse/")]) }),
        )
        .route("/browse", get(browse_root))
        .route("/browse/", get(browse_root))
        .route("/browse/{*path}", get(browse))
        .route("/file/{*path}", get(download))
        .route("/archive", get(archive_root))
        .route("/archive/", get(archive_root))
        .route("/archive/{*path}", get(archive))
        .route("/search", get(search))
        .route("/restore", post(restore))
        .fallback(|| async { pages::text(StatusCode::NOT_FOUND, "no such page") })
        .layer(DefaultBodyLimit::max(MAX_FORM))
        .layer(middleware::from_fn_with_state(browser.clone(), guard))
        .with_state(browser)
}

/// Refuses requests without the session token; marks the session used;
/// adds the headers every answer carries.
async fn guard(State(browser): State<Browser>, request: Request, next: Next) -> Response {
    let mut response = if !matches!(*request.method(), Method::GET | Method::HEAD | Method::POST) {
        pages::text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and POST are served here",
        )
    } else {
        match presented_token(request.uri(), request.headers()) {
            Some((token, in_query)) if browser.token.accepts(&token) => {
                browser.activity.touch();
                let mut response = next.run(request).await;
                // Later links carry the token in a cookie, not the URL.
                let cookie =
                    format!("{COOKIE_NAME}={token}; Path=/; Secure; HttpOnly; SameSite=Strict");
                if in_query && let Ok(cookie) = HeaderValue::from_str(&cookie) {
                    response.headers_mut().append(SET_COOKIE, cookie);
                }
                response
            }
            _ => pages::text(StatusCode::UNAUTHORIZED, NEEDS_TOKEN),
        }
    };
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(
        STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=300"),
    );
    response
}

/// The token a request carries, and whether it came in the query string.
fn presented_token(uri: &Uri, headers: &HeaderMap) -> Option<(String, bool)> {
    let query = Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|q| q.0)
        .unwrap_or_default();
    if let Some((_, token)) = query.into_iter().find(|(k, _)| k == "token") {
        return Some((token, true));
    }
    if let Some(token) = headers
        .get_all(axum::http::header::AUTHORIZATION)
        .iter()
        .find_map(|v| v.to_str().ok()?.strip_prefix("Bearer "))
    {
        return Some((token.trim().to_string(), false));
    }
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|c| c.split(';'))
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE_NAME)
        .map(|(_, v)| (v.to_string(), false))
}

/// Runs `job` on the filesystem, on a blocking thread.
async fn on_fs<T: Send + 'static>(
    volume: &Arc<dyn Volume>,
    job: impl FnOnce(&Ext4) -> Result<T, Problem> + Send + 'static,
) -> Result<T, Problem> {
    let volume = volume.clone();
    tokio::task::spawn_blocking(move || job(&volume.open().map_err(server_error)?))
        .await
        .map_err(|e| server_error(e.to_string()))?
}

fn server_error(message: String) -> Problem {
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR, message)
}

fn not_found(path: &str, e: impl std::fmt::Display) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, format!("{path}: {e}"))
}

/// `Content-Disposition` for a download named `name`.
fn attachment(name: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

type Answer = Result<Response, Problem>;

async fn browse_root(State(browser): State<Browser>) -> Answer {
    browse_folder(browser, "/".into()).await
}

async fn browse(State(browser): State<Browser>, Path(path): Path<String>) -> Answer {
    browse_folder(browser, normalize(&path)).await
}

async fn browse_folder(browser: Browser, dir: String) -> Answer {
    let restore_to = browser.restore_to.as_ref().map(|t| t.location.clone());
    on_fs(&browser.volume, move |fs| {
        let list = disk::entries(fs, &dir).map_err(|e| not_found(&dir, e))?;
        Ok(pages::browse(&dir, &list, restore_to.as_ref()))
    })
    .await
}

async fn search(
    State(browser): State<Browser>,
    Query(query): Query<Vec<(String, String)>>,
) -> Answer {
    let q = query
        .into_iter()
        .find(|(k, _)| k == "q")
        .map(|(_, v)| v)
        .unwrap_or_default();
    if q.is_empty() {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "search needs a name: /search?q=<part of a file name>",
        ));
    }
    on_fs(&browser.volume, move |fs| {
        Ok(pages::search(&q, disk::search(fs, &q)))
    })
    .await
}

async fn download(State(browser): State<Browser>, Path(path): Path<String>) -> Answer {
    let path = normalize(&path);
    let name = file_name(&path);
    let volume = browser.volume.clone();
    let (length, body) = stream::blocking_body(
        browser.activity.clone(),
        move || {
            let fs = volume.open().map_err(server_error)?;
            let file = fs.open(path.as_str()).map_err(|e| not_found(&path, e))?;
            Ok((file.metadata().len(), file))
        },
        |mut file, out| std::io::copy(&mut file, out).map(|_| ()),
    )
    .await?;
    let headers = [
        (
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        ),
        (CONTENT_DISPOSITION, attachment(&name)),
        (CONTENT_LENGTH, HeaderValue::from(length)),
    ];
    Ok((headers, body).into_response())
}

async fn archive_root(State(browser): State<Browser>) -> Answer {
    archive_folder(browser, "/".into()).await
}

async fn archive(State(browser): State<Browser>, Path(path): Path<String>) -> Answer {
    archive_folder(browser, normalize(&path)).await
}

async fn archive_folder(browser: Browser, dir: String) -> Answer {
    let base = file_name(&dir);
    let volume = browser.volume.clone();
    let name = base.clone();
    let ((), body) = stream::blocking_body(
        browser.activity.clone(),
        move || {
            let fs = volume.open().map_err(server_error)?;
            disk::entries(&fs, &dir).map_err(|e| not_found(&dir, e))?;
            Ok(((), (fs, dir)))
        },
        move |(fs, dir), out| archive::write_folder(&fs, &dir, &name, out),
    )
    .await?;
    let headers = [
        (CONTENT_TYPE, HeaderValue::from_static("application/x-tar")),
        (CONTENT_DISPOSITION, attachment(&format!("{base}.tar"))),
    ];
    Ok((headers, body).into_response())
}

/// Copies the selected files (folders: every regular file in them) to the
/// allowed S3 location, each under its path in the filesystem.
async fn restore(
    State(browser): State<Browser>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Answer {
    let Some(target) = browser.restore_to.clone() else {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "this RestoreJob allows downloads only: set spec.restoreFilesTo to restore files to S3",
        ));
    };
    let selected: Vec<String> = fields
        .into_iter()
        .filter(|(k, _)| k == "path")
        .map(|(_, v)| normalize(&v))
        .collect();
    if selected.is_empty() {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "select at least one file or folder",
        ));
    }
    let files = on_fs(&browser.volume, move |fs| {
        disk::files_under(fs, &selected).map_err(|e| Problem::new(StatusCode::NOT_FOUND, e))
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

/// Reads the files one after the other on a blocking thread while the
/// previous one is uploaded; returns the objects written.
async fn copy_to_s3(
    volume: &Arc<dyn Volume>,
    target: &RestoreTarget,
    files: Vec<String>,
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
        for path in files {
            let read = fs.read(path.as_str()).map_err(|e| not_found(&path, e));
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

#[cfg(test)]
mod tests {

    use axum::body::Body;
    use sha2::{Digest, Sha256};
    use tower::ServiceExt;

    use super::super::disk::testing::image;
    use super::*;

    const TOKEN: &str = "let-me-in";

    fn app() -> Router {
        router(Browser {
            volume: Arc::new(image(&[
                ("docs/notes/todo.txt", b"water the plants\n", 0o644),
                ("docs/report.bin", b"0123456789", 0o600),
                ("a b/\u{fc}.txt", b"umlaut", 0o644),
                ("hello.txt", b"hi\n", 0o644),
            ])),
            restore_to: None,
            token: Arc::new(SessionToken::from_sha256_hex(&hex::encode(Sha256::digest(
                TOKEN,
            )))),
            activity: Activity::new(),
        })
    }

    async fn call(app: &Router, method: &str, uri: &str, auth: Option<&str>) -> Response {
        let mut request = axum::http::Request::builder().method(method).uri(uri);
        if let Some(auth) = auth {
            request = request.header("authorization", format!("Bearer {auth}"));
        }
        app.clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    async fn text_of(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn the_token_comes_from_the_query_a_bearer_header_or_the_cookie() {
        let none = HeaderMap::new();
        let uri: Uri = "/browse/?token=abc%2Bd".parse().unwrap();
        assert_eq!(presented_token(&uri, &none), Some(("abc+d".into(), true)));
        let mut cookie = HeaderMap::new();
        cookie.insert(COOKIE, HeaderValue::from_static("a=b; tender_session=xyz"));
        let root: Uri = "/".parse().unwrap();
        assert_eq!(presented_token(&root, &cookie), Some(("xyz".into(), false)));
        let mut bearer = HeaderMap::new();
        bearer.insert(
            axum::http::header::AUTHORIZATION,
            HeaderValue::from_static("Bearer t1 "),
        );
        assert_eq!(presented_token(&root, &bearer), Some(("t1".into(), false)));
        assert_eq!(presented_token(&root, &none), None);
    }

    #[tokio::test]
    async fn requests_without_the_token_are_refused() {
        let app = app();
        for (uri, auth) in [
            ("/browse/", None),
            ("/browse/?token=not-the-token", None),
            ("/file/hello.txt", Some("not-the-token")),
            ("/no-such-page", None),
        ] {
            let response = call(&app, "GET", uri, auth).await;
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{uri}");
            assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
            assert!(text_of(response).await.contains("needs its token"));
        }
        let response = call(&app, "PUT", "/browse/", Some(TOKEN)).await;
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn the_token_in_the_url_becomes_a_cookie() {
        let app = app();
        let response = call(&app, "GET", &format!("/?token={TOKEN}"), None).await;
        assert_eq!(response.status(), StatusCode::FOUND);
        assert_eq!(response.headers()[LOCATION], "/browse/");
        assert_eq!(
            response.headers()[SET_COOKIE],
            format!("tender_session={TOKEN}; Path=/; Secure; HttpOnly; SameSite=Strict").as_str()
        );
        let request = axum::http::Request::get("/browse/docs")
            .header("cookie", format!("tender_session={TOKEN}"))
            .body(Body::empty())
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().get(SET_COOKIE).is_none());
        assert_eq!(response.headers()[X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(response.headers()[STRICT_TRANSPORT_SECURITY], "max-age=300");
        assert!(
            text_of(response)
                .await
                .contains("href=\"/file/docs/report.bin\"")
        );
    }

    #[tokio::test]
    async fn percent_encoded_paths_name_files_and_stay_under_the_root() {
        let app = app();
        let page = text_of(
            call(
                &app,
                "GET",
                "/browse/a%20b/%2e%2e/..%2F..%2Fa%20b",
                Some(TOKEN),
            )
            .await,
        )
        .await;
        assert!(
            page.contains("<title>Restore point: /a b</title>"),
            "{page}"
        );
        assert!(page.contains("href=\"/file/a%20b/%C3%BC.txt\""), "{page}");
        let response = call(&app, "GET", "/file/a%20b/%C3%BC.txt", Some(TOKEN)).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[CONTENT_LENGTH], "6");
        assert_eq!(
            response.headers()[CONTENT_DISPOSITION].as_bytes(),
            "attachment; filename=\"\u{fc}.txt\"".as_bytes()
        );
        assert_eq!(text_of(response).await, "umlaut");
        let response = call(&app, "GET", "/file/docs/../../hello.txt", Some(TOKEN)).await;
        assert_eq!(text_of(response).await, "hi\n");
    }

    #[tokio::test]
    async fn browse_search_download_and_archive() {
        let app = app();
        let response = call(&app, "GET", "/browse", Some(TOKEN)).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
        assert!(text_of(response).await.contains("href=\"/browse/docs\""));
        let response = call(&app, "GET", "/browse/nope", Some(TOKEN)).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);

        let found = text_of(call(&app, "GET", "/search?q=TODO", Some(TOKEN)).await).await;
        assert!(found.contains("1 match(es)"), "{found}");
        assert!(
            found.contains("href=\"/file/docs/notes/todo.txt\""),
            "{found}"
        );
        let response = call(&app, "GET", "/search", Some(TOKEN)).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);

        let response = call(&app, "GET", "/file/docs", Some(TOKEN)).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let response = call(&app, "HEAD", "/file/docs/report.bin", Some(TOKEN)).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[CONTENT_LENGTH], "10");

        let response = call(&app, "GET", "/archive/docs", Some(TOKEN)).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/x-tar");
        assert_eq!(
            response.headers()[CONTENT_DISPOSITION],
            "attachment; filename=\"docs.tar\""
        );
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let mut names: Vec<String> = tar::Archive::new(&bytes[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "docs/",
                "docs/notes/",
                "docs/notes/todo.txt",
                "docs/report.bin"
            ]
        );
        let response = call(&app, "GET", "/archive/", Some(TOKEN)).await;
        assert_eq!(
            response.headers()[CONTENT_DISPOSITION],
            "attachment; filename=\"root.tar\""
        );
        let response = call(&app, "GET", "/archive/nope", Some(TOKEN)).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let response = call(&app, "GET", "/elsewhere", Some(TOKEN)).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn restoring_needs_a_location() {
        let request = axum::http::Request::post("/restore")
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from("path=%2Fdocs"))
            .unwrap();
        let response = app().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
}
