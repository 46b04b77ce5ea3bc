//! The pages people see: HTML from the templates in `templates/browser/`
//! (askama; every value is HTML-escaped unless a template says otherwise,
//! and none does), their stylesheet, and plain-text answers.

use askama::Template;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{Html, IntoResponse, Response};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::disk::{join, normalize};
use super::filesystem::{Kind, Meta};
use crate::mover::manifest::RepositoryLocation;

/// What stays as it is in a path inside a link; everything else is
/// percent-encoded.
const PATH_IN_LINK: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `path` as it goes into a link.
pub(super) fn link_path(path: &str) -> String {
    utf8_percent_encode(path, PATH_IN_LINK).to_string()
}

/// The pages' stylesheet: a file of its own, as the Content-Security-Policy
/// allows no inline style.
pub(super) async fn stylesheet() -> Response {
    (
        [(CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../../../templates/browser/style.css"),
    )
        .into_response()
}

/// A plain-text answer (errors, refusals).
pub(super) fn text(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{message}\n"),
    )
        .into_response()
}

/// What went wrong, as a plain-text answer with its status.
#[derive(Debug)]
pub(super) struct Problem {
    pub status: StatusCode,
    pub message: String,
}

impl Problem {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        text(self.status, &self.message)
    }
}

fn html(page: &impl Template) -> Response {
    match page.render() {
        Ok(page) => Html(page).into_response(),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("could not render the page: {e}"),
        ),
    }
}

/// A folder's entry as its row shows it.
struct Row {
    name: String,
    path: String,
    /// Where its name links to: none for what cannot be opened (a
    /// symbolic link, a device, a partition Tender cannot read).
    href: Option<String>,
    kind: &'static str,
    is_dir: bool,
    /// Its size, or what it is.
    size: String,
}

#[derive(Template)]
#[template(path = "browser/browse.html")]
struct BrowsePage<'a> {
    title: String,
    notice: Option<String>,
    up: Option<String>,
    archive: String,
    restore_to: Option<&'a RepositoryLocation>,
    original: Option<&'a OriginalOffer>,
    /// Whether rows have a checkbox (some restore is offered).
    selectable: bool,
    paging: Option<Paging>,
    entries: Vec<Row>,
}

/// Where a page of a large folder is among its pages.
struct Paging {
    /// "entries 1 001 to 2 000 of 100 000".
    shown: String,
    previous: Option<String>,
    next: Option<String>,
}

/// Entries a folder page shows at most; a larger folder is shown a page
/// at a time (`?page=2`).
pub(super) const PAGE_ENTRIES: usize = 1000;

/// `n` with a space between thousands, as people read it.
fn grouped(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('\u{a0}');
        }
        out.push(c);
    }
    out
}

/// The pages a folder of `len` entries has.
pub(super) fn page_count(len: usize) -> usize {
    len.div_ceil(PAGE_ENTRIES).max(1)
}

/// What a folder's page offers to do with the selected entries.
#[derive(Default)]
pub(super) struct Actions {
    /// "Restore selected" to this S3 location.
    pub restore_to: Option<RepositoryLocation>,
    /// "Restore selected to their original location".
    pub original: Option<OriginalOffer>,
}

/// Restoring onto the source instance, as a page offers it.
#[derive(Clone, Debug)]
pub(super) struct OriginalOffer {
    pub instance_id: String,
    /// Why it cannot be done, when it cannot.
    pub unavailable: Option<String>,
    /// What a kept file's restored copy ends in.
    pub suffix: String,
}

/// A folder's page `page` (1 = the first): its entries, links to go up,
/// to the other pages and to download it, and, when the job allows
/// restores, a checkbox per entry. `page` is within [`page_count`].
pub(super) fn browse(
    dir: &str,
    list: &[(String, Meta)],
    page: usize,
    actions: &Actions,
    notice: Option<String>,
) -> Response {
    let pages = page_count(list.len());
    let first = (page.clamp(1, pages) - 1) * PAGE_ENTRIES;
    let shown = &list[first..(first + PAGE_ENTRIES).min(list.len())];
    let href = |n: usize| format!("/browse{}?page={n}", link_path(dir));
    let paging = (pages > 1).then(|| Paging {
        shown: format!(
            "entries {} to {} of {}",
            grouped(first + 1),
            grouped(first + shown.len()),
            grouped(list.len())
        ),
        previous: (page > 1).then(|| href(page - 1)),
        next: (page < pages).then(|| href(page + 1)),
    });
    let entries = shown
        .iter()
        .map(|(name, meta)| {
            let path = join(dir, name);
            let (href, kind) = match meta.kind {
                Kind::Dir => (Some(format!("/browse{}", link_path(&path))), "dir"),
                Kind::File => (Some(format!("/file{}", link_path(&path))), "file"),
                Kind::Symlink => (None, "link"),
                Kind::Other => (None, "other"),
            };
            let size = match (&meta.note, meta.kind) {
                (Some(note), _) => note.clone(),
                (None, Kind::File) => format!("{} bytes", meta.size),
                (None, Kind::Symlink) => "symbolic link".into(),
                (None, Kind::Other) => "not a file".into(),
                (None, Kind::Dir) => String::new(),
            };
            Row {
                href,
                name: name.clone(),
                path,
                kind,
                is_dir: meta.is_dir(),
                size,
            }
        })
        .collect();
    html(&BrowsePage {
        title: format!("Restore point: {dir}"),
        notice,
        up: (dir != "/").then(|| link_path(&normalize(&format!("{dir}/..")))),
        archive: link_path(dir),
        restore_to: actions.restore_to.as_ref(),
        original: actions.original.as_ref(),
        selectable: actions.restore_to.is_some()
            || actions
                .original
                .as_ref()
                .is_some_and(|o| o.unavailable.is_none()),
        paging,
        entries,
    })
}

/// A search result.
struct Found {
    path: String,
    href: String,
}

#[derive(Template)]
#[template(path = "browser/search.html")]
struct SearchPage<'a> {
    title: String,
    query: &'a str,
    results: Vec<Found>,
}

/// What a search found: (path, whether it is a folder).
pub(super) fn search(query: &str, found: Vec<(String, bool)>) -> Response {
    let results = found
        .into_iter()
        .map(|(path, is_dir)| Found {
            href: format!(
                "/{}{}",
                if is_dir { "browse" } else { "file" },
                link_path(&path)
            ),
            path,
        })
        .collect();
    html(&SearchPage {
        title: format!("Search: {query}"),
        query,
        results,
    })
}

#[derive(Template)]
#[template(path = "browser/restored.html")]
struct RestoredPage<'a> {
    title: &'a str,
    restored: &'a [String],
}

/// The objects "Restore selected" wrote (`s3://bucket/key`).
pub(super) fn restored(restored: &[String]) -> Response {
    html(&RestoredPage {
        title: "Restored",
        restored,
    })
}

/// Where a restore onto the source instance is, for its page.
pub(super) struct OriginalView {
    /// `Staging: 3 of 10 files staged`, `Pending`, `Succeeded`, ...
    pub state: String,
    pub lines: Vec<String>,
    /// Whether it will not change any more (the page stops reloading).
    pub finished: bool,
}

#[derive(Template)]
#[template(path = "browser/original.html")]
struct OriginalPage<'a> {
    title: String,
    request: &'a str,
    view: OriginalView,
}

/// The page of request `request`: reloads itself every 3 s until it
/// finished.
pub(super) fn original(instance_id: &str, request: &str, view: OriginalView) -> Response {
    html(&OriginalPage {
        title: format!("Restore onto {instance_id}"),
        request,
        view,
    })
}

#[cfg(test)]
mod tests {

    use super::super::disk::testing::image;
    use super::super::disk::{Volume, entries};
    use super::*;

    async fn body(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn links_are_percent_encoded() {
        assert_eq!(link_path("/a b/ü"), "/a%20b/%C3%BC");
        assert_eq!(link_path("/x-y_z.~/\"<q>&"), "/x-y_z.~/%22%3Cq%3E%26");
    }

    #[tokio::test]
    async fn a_folder_page_has_the_links_people_and_tests_follow() {
        let fs = image(&[
            ("docs/notes/todo.txt", b"x", 0o644),
            ("docs/report.bin", b"abc", 0o644),
            ("docs/<b>&\"odd\".txt", b"", 0o644),
        ])
        .open()
        .unwrap();
        let list = entries(fs.as_ref(), "/docs").unwrap();
        let target = RepositoryLocation::new("bucket", "restored/", "us-east-1");
        let actions = Actions {
            restore_to: Some(target),
            original: None,
        };
        let page = body(browse("/docs", &list, 1, &actions, None)).await;
        for expected in [
            "<title>Restore point: /docs</title>",
            "<a class=\"up\" href=\"/browse/\">",
            "<a class=\"archive\" href=\"/archive/docs\">",
            "<form method=\"post\" action=\"/restore\"><p><button type=\"submit\">Restore selected to s3://bucket/restored/</button>",
            "<tr class=\"dir\"><td><input type=\"checkbox\" name=\"path\" value=\"/docs/notes\"></td><td><a href=\"/browse/docs/notes\">notes/</a></td><td></td></tr>",
            "<a href=\"/file/docs/report.bin\">report.bin</a></td><td>3 bytes</td>",
            // Names are escaped in text and attributes, encoded in links.
            "value=\"/docs/&#60;b&#62;&#38;&#34;odd&#34;.txt\"",
            "href=\"/file/docs/%3Cb%3E%26%22odd%22.txt\">&#60;b&#62;&#38;&#34;odd&#34;.txt</a>",
            "</table></form>",
        ] {
            assert!(page.contains(expected), "{expected} not in {page}");
        }
        let page = body(browse(
            "/",
            &entries(fs.as_ref(), "/").unwrap(),
            1,
            &Actions::default(),
            Some("look <out>".into()),
        ))
        .await;
        assert!(!page.contains("class=\"up\""), "{page}");

        assert!(
            page.contains("<p class=\"notice\">look &#60;out&#62;</p>"),
            "{page}"
        );
        assert!(!page.contains("<form method=\"post\""), "{page}");
        assert!(!page.contains("checkbox"), "{page}");
        // Restoring onto the source instance: a button and the choice to
        // replace files, or why it cannot be done (and no checkboxes).
        let offer = |unavailable: Option<&str>| Actions {
            restore_to: None,
            original: Some(OriginalOffer {
                instance_id: "i-0abc".into(),
                unavailable: unavailable.map(String::from),
                suffix: ".restored-nightly".into(),
            }),
        };
        let offered = body(browse("/docs", &list, 1, &offer(None), None)).await;
        for expected in [
            "<button type=\"submit\" class=\"original\" formaction=\"/original\">Restore selected to their original location on i-0abc</button>",
            "<input type=\"checkbox\" name=\"overwrite\" value=\"on\">",
            "ending in .restored-nightly",
            "<input type=\"checkbox\" name=\"path\" value=\"/docs/notes\">",
        ] {
            assert!(offered.contains(expected), "{expected} not in {offered}");
        }
        assert!(!offered.contains("s3://"), "{offered}");
        let offered = body(browse("/docs", &list, 1, &offer(Some("no <agent>")), None)).await;
        assert!(
            offered.contains("Files cannot be restored onto i-0abc: no &#60;agent&#62;"),
            "{offered}"
        );
        assert!(!offered.contains("type=\"checkbox\""), "{offered}");
    }

    #[tokio::test]
    async fn search_and_restore_pages_escape_what_people_typed() {
        let page = body(search(
            "<script>",
            vec![("/a/<script>.txt".into(), false), ("/d".into(), true)],
        ))
        .await;
        assert!(!page.contains("<script>"), "{page}");
        assert!(
            page.contains("2 match(es) for “&#60;script&#62;”"),
            "{page}"
        );
        assert!(
            page.contains("<li><a href=\"/browse/d\">/d</a></li>"),
            "{page}"
        );
        let page = body(restored(&["s3://b/restored/docs/notes/todo.txt".into()])).await;
        assert!(page.contains("1 file(s) restored"), "{page}");
        assert!(
            page.contains("<li>s3://b/restored/docs/notes/todo.txt</li>"),
            "{page}"
        );
    }
}
