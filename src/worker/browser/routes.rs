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
//! | `POST /original` (fields `path`, `overwrite`) | stages them for the source instance; 303 to its page |
//! | `GET /original/<id>` | where that restore is |
//! | `GET /style.css` | the pages' stylesheet |
//!
//! Every request first passes [`guard`]: the session token, before any
//! body is read.

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::http::header::{
    CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, LOCATION,
};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::disk::{self, Volume, file_name, normalize};
use super::filesystem::Filesystem;
use super::guard::{MAX_BODY, guard};
use super::original::{self, OriginalTarget};
use super::pages::{self, Problem};
use super::restore::restore;
use super::selection::{self, Refusal, select};
use super::session::{Activity, SessionToken};
use super::{archive, stream};
use crate::aws::AwsClients;
use crate::mover::manifest::RepositoryLocation;

/// What every request of a session shares.
#[derive(Clone)]
pub(super) struct Browser {
    pub volume: Arc<dyn Volume>,
    /// Where "Restore selected" copies files; `None`: downloads only.
    pub restore_to: Option<Arc<RestoreTarget>>,
    /// Restores onto the source instance, when the job allows them.
    pub original: Option<Arc<OriginalTarget>>,
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
        .route("/original", post(original::request))
        .route("/original/{id}", get(original::follow))
        .route("/style.css", get(pages::stylesheet))
        .fallback(|| async { pages::text(StatusCode::NOT_FOUND, "no such page") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        // Outermost: nothing runs, and no body is read, before it.
        .layer(middleware::from_fn_with_state(browser.clone(), guard))
        .with_state(browser)
}

/// Runs `job` on the filesystem, on a blocking thread.
pub(super) async fn on_fs<T: Send + 'static>(
    volume: &Arc<dyn Volume>,
    job: impl FnOnce(&dyn Filesystem) -> Result<T, Problem> + Send + 'static,
) -> Result<T, Problem> {
    let volume = volume.clone();
    tokio::task::spawn_blocking(move || job(volume.open().map_err(server_error)?.as_ref()))
        .await
        .map_err(|e| server_error(e.to_string()))?
}

pub(super) fn server_error(message: String) -> Problem {
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR, message)
}

/// A selection refused: 404 for a path that is not there, 413 for one
/// that holds too much.
pub(super) fn refused(refusal: Refusal) -> Problem {
    match refusal {
        Refusal::NotFound(m) => Problem::new(StatusCode::NOT_FOUND, m),
        Refusal::TooMuch(m) => Problem::new(StatusCode::PAYLOAD_TOO_LARGE, m),
    }
}

fn not_found(path: &str, e: impl std::fmt::Display) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, format!("{path}: {e}"))
}

/// `Content-Disposition` for a download named `name`.
fn attachment(name: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

pub(super) type Answer = Result<Response, Problem>;

async fn browse_root(
    State(browser): State<Browser>,
    Query(query): Query<Vec<(String, String)>>,
) -> Answer {
    browse_folder(browser, "/".into(), page_of(&query)?).await
}

/// The page a folder's address asks for (`?page=N`, 1 when none).
fn page_of(query: &[(String, String)]) -> Result<usize, Problem> {
    match query.iter().find(|(k, _)| k == "page") {
        None => Ok(1),
        Some((_, v)) => v.parse::<usize>().ok().filter(|n| *n >= 1).ok_or_else(|| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                format!("page {v:?} is not a page number: ?page=1 is the first"),
            )
        }),
    }
}

async fn browse(
    State(browser): State<Browser>,
    Path(path): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Answer {
    browse_folder(browser, normalize(&path), page_of(&query)?).await
}

async fn browse_folder(browser: Browser, dir: String, page: usize) -> Answer {
    let actions = pages::Actions {
        restore_to: browser.restore_to.as_ref().map(|t| t.location.clone()),
        original: browser.original.as_ref().map(|o| o.offer()),
    };
    on_fs(&browser.volume, move |fs| {
        let list = disk::entries(fs, &dir).map_err(|e| not_found(&dir, e))?;
        let pages = pages::page_count(list.len());
        if page > pages {
            return Err(not_found(
                &dir,
                format!(
                    "no page {page}: the folder's {} entries fill {pages}",
                    list.len()
                ),
            ));
        }
        Ok(pages::browse(&dir, &list, page, &actions, fs.notice(&dir)))
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
            let meta = fs.metadata(&path).map_err(|e| not_found(&path, e))?;
            if !meta.is_file() {
                return Err(not_found(&path, "not a regular file"));
            }
            // Opened once here, so that a file that cannot be read is an
            // error page, not a download cut off after its headers.
            fs.open(&path).map_err(|e| not_found(&path, e))?;
            Ok((meta.size, (fs, path, meta.size)))
        },
        |(fs, path, size), out| {
            let file = fs.open(&path).map_err(std::io::Error::other)?;
            // Exactly the length the header promised.
            let copied = std::io::copy(&mut std::io::Read::take(file, size), out)?;
            if copied < size {
                return Err(std::io::Error::other(format!("{path} ended early")));
            }
            Ok(())
        },
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
    let root = (dir, base.clone());
    let ((), body) = stream::blocking_body(
        browser.activity.clone(),
        move || {
            let fs = volume.open().map_err(server_error)?;
            if !fs.metadata(root.0.as_str()).is_ok_and(|m| m.is_dir()) {
                return Err(not_found(&root.0, "not a folder"));
            }
            let selection = select(fs.as_ref(), &[root], &selection::ARCHIVE).map_err(refused)?;
            Ok(((), (fs, selection)))
        },
        |(fs, selection), out| archive::write(fs.as_ref(), &selection, out),
    )
    .await?;
    let headers = [
        (CONTENT_TYPE, HeaderValue::from_static("application/x-tar")),
        (CONTENT_DISPOSITION, attachment(&format!("{base}.tar"))),
    ];
    Ok((headers, body).into_response())
}

#[cfg(test)]
pub(super) mod tests {

    use axum::body::Body;
    use axum::http::header::{
        CACHE_CONTROL, CONTENT_SECURITY_POLICY, REFERRER_POLICY, SET_COOKIE,
        STRICT_TRANSPORT_SECURITY, X_CONTENT_TYPE_OPTIONS,
    };
    use sha2::{Digest, Sha256};
    use tower::ServiceExt;

    use super::super::disk::testing::image;
    use super::*;

    pub(in crate::worker::browser) const TOKEN: &str = "let-me-in";

    fn app() -> Router {
        app_over(Arc::new(image(&[
            ("docs/notes/todo.txt", b"water the plants\n", 0o644),
            ("docs/report.bin", b"0123456789", 0o600),
            ("a b/\u{fc}.txt", b"umlaut", 0o644),
            ("hello.txt", b"hi\n", 0o644),
        ])))
    }

    /// The browser over `volume`, downloads only, with [`TOKEN`].
    pub(in crate::worker::browser) fn app_over(volume: Arc<dyn Volume>) -> Router {
        router(Browser {
            volume,
            restore_to: None,
            original: None,
            token: Arc::new(SessionToken::from_sha256_hex(&hex::encode(Sha256::digest(
                TOKEN,
            )))),
            activity: Activity::new(),
        })
    }

    pub(in crate::worker::browser) async fn call(
        app: &Router,
        method: &str,
        uri: &str,
        auth: Option<&str>,
    ) -> Response {
        let mut request = axum::http::Request::builder().method(method).uri(uri);
        if let Some(auth) = auth {
            request = request.header("authorization", format!("Bearer {auth}"));
        }
        app.clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    pub(in crate::worker::browser) async fn text_of(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        String::from_utf8_lossy(&bytes).into_owned()
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
    async fn the_token_in_the_url_becomes_a_cookie_and_leaves_the_url() {
        let app = app();
        let response = call(&app, "GET", &format!("/browse/docs?token={TOKEN}"), None).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        assert_eq!(response.headers()[LOCATION], "/browse/docs");
        assert_eq!(
            response.headers()[SET_COOKIE],
            format!("__Host-tender_session={TOKEN}; Path=/; Secure; HttpOnly; SameSite=Strict")
                .as_str()
        );
        let with_cookie = |uri: &str| {
            axum::http::Request::get(uri)
                .header("cookie", format!("__Host-tender_session={TOKEN}"))
                .body(Body::empty())
                .unwrap()
        };
        let response = app.clone().oneshot(with_cookie("/")).await.unwrap();
        assert_eq!(response.status(), StatusCode::FOUND);
        assert_eq!(response.headers()[LOCATION], "/browse/");
        let response = app
            .clone()
            .oneshot(with_cookie("/browse/docs"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().get(SET_COOKIE).is_none());
        assert_eq!(response.headers()[X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(response.headers()[STRICT_TRANSPORT_SECURITY], "max-age=300");
        assert_eq!(response.headers()[REFERRER_POLICY], "no-referrer");
        let csp = response.headers()[CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(
            csp.starts_with("default-src 'none'; style-src 'self';"),
            "{csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        let page = text_of(response).await;
        assert!(page.contains("href=\"/file/docs/report.bin\""), "{page}");
        assert!(
            page.contains("<link rel=\"stylesheet\" href=\"/style.css\">"),
            "{page}"
        );
        assert!(
            !page.contains("<style") && !page.contains("<script"),
            "{page}"
        );
        let response = app.oneshot(with_cookie("/style.css")).await.unwrap();
        assert_eq!(response.headers()[CONTENT_TYPE], "text/css; charset=utf-8");
    }

    #[tokio::test]
    async fn restoring_onto_the_instance_needs_a_job_that_asks_for_it() {
        let post = axum::http::Request::post("/original")
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("host", "10.0.0.5")
            .header("origin", "https://10.0.0.5")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from("path=%2Fhello.txt"))
            .unwrap();
        let response = app().oneshot(post).await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(
            text_of(response)
                .await
                .contains("spec.restoreToOriginalLocation: true")
        );
        let response = call(&app(), "GET", "/original/0123456789abcdef", Some(TOKEN)).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn forms_from_elsewhere_or_too_large_are_refused_unread() {
        let post = |origin: &str, length: usize| {
            axum::http::Request::post("/restore")
                .header("authorization", format!("Bearer {TOKEN}"))
                .header("host", "10.0.0.5")
                .header("origin", origin)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("content-length", length)
                .body(Body::from("path=%2Fdocs"))
                .unwrap()
        };
        let response = app()
            .oneshot(post("https://evil.example", 12))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(text_of(response).await.contains("another site"));
        let response = app()
            .oneshot(post("https://10.0.0.5", 1 << 30))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        // From the session's own page: on to the handler.
        let response = app().oneshot(post("https://10.0.0.5", 12)).await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(text_of(response).await.contains("downloads only"));
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
    async fn a_large_folder_is_shown_a_page_at_a_time() {
        let names: Vec<String> = (0..2500).map(|i| format!("big/f{i:04}")).collect();
        let files: Vec<(&str, &[u8], u32)> = names
            .iter()
            .map(|n| (n.as_str(), &b"x"[..], 0o644))
            .collect();
        let app = app_over(Arc::new(image(&files)));
        let page = |uri: &'static str| {
            let app = app.clone();
            async move {
                let response = call(&app, "GET", uri, Some(TOKEN)).await;
                (response.status(), text_of(response).await)
            }
        };
        let rows = |page: &str| page.matches("<tr class=\"file\">").count();
        let (status, first) = page("/browse/big").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(rows(&first), 1000);
        assert!(
            first.contains("entries 1 to 1\u{a0}000 of 2\u{a0}500"),
            "{first}"
        );
        assert!(
            first.contains("href=\"/browse/big?page=2\">next"),
            "{first}"
        );
        assert!(first.contains("f0999") && !first.contains("f1000"));
        let (status, last) = page("/browse/big?page=3").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(rows(&last), 500);
        assert!(last.contains("f2499") && last.contains("f2000") && !last.contains("f1999"));
        assert!(
            last.contains("href=\"/browse/big?page=2\">← previous"),
            "{last}"
        );
        assert!(!last.contains("next →"));
        let (status, beyond) = page("/browse/big?page=4").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(beyond.contains("no page 4"), "{beyond}");
        for uri in ["/browse/big?page=0", "/browse/big?page=two"] {
            assert_eq!(page(uri).await.0, StatusCode::BAD_REQUEST, "{uri}");
        }
        // A small folder has one page and no paging line.
        let (_, root) = page("/browse/").await;
        assert!(!root.contains("class=\"paging\""), "{root}");
    }
}
