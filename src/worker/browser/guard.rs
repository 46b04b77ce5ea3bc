//! What every request passes before a handler sees it, as the router's
//! outermost layer: the session token (before any of the body is read), a
//! `?token=` traded for a cookie by a redirect, the origin of a form
//! posted, a bounded body read within a deadline; and the headers every
//! answer carries.
//!
//! The token comes as `?token=` (answered with a 303 to the same address
//! without it, which sets the `__Host-tender_session` cookie, so the token
//! leaves the address bar and the history), an `Authorization: Bearer`
//! header, or that cookie.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::header::{
    self, CACHE_CONTROL, CONTENT_LENGTH, COOKIE, HOST, HeaderMap, HeaderName, HeaderValue,
    LOCATION, ORIGIN, REFERRER_POLICY, SET_COOKIE, STRICT_TRANSPORT_SECURITY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;

use super::connections::Admit;
use super::pages;
use super::routes::Browser;

/// The session cookie. `__Host-`: the browser keeps it only when it is
/// `Secure`, has `Path=/` and no `Domain`, so no other host can set it.
pub(super) const COOKIE_NAME: &str = "__Host-tender_session";
/// The largest body accepted (a form: the selected paths).
pub(super) const MAX_BODY: usize = 1 << 20;
/// How long a client with the token has to send a body.
const BODY_DEADLINE: Duration = Duration::from_secs(10);
const NEEDS_TOKEN: &str = "this file-level recovery session needs its token: open the URL with ?token=<token from the RestoreJob's session Secret>";

/// No script, no frames, nothing from elsewhere: the pages need only
/// their own stylesheet and forms.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

/// Checks a request, runs it, and adds the headers every answer carries.
pub(super) async fn guard(
    State(browser): State<Browser>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = match check(&browser, request).await {
        Ok(request) => next.run(request).await,
        Err(answer) => answer,
    };
    secure_headers(response.headers_mut());
    response
}

/// The request, ready for its handler; `Err`: the answer given in its
/// place (a refusal, or the redirect that trades `?token=` for the cookie).
async fn check(browser: &Browser, request: Request) -> Result<Request, Response> {
    if !matches!(*request.method(), Method::GET | Method::HEAD | Method::POST) {
        return Err(pages::text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and POST are served here",
        ));
    }
    let (token, in_query) = presented_token(request.uri(), request.headers())
        .filter(|(token, _)| browser.token.accepts(token))
        .ok_or_else(|| pages::text(StatusCode::UNAUTHORIZED, NEEDS_TOKEN))?;
    browser.activity.touch();
    if let Some(admit) = request.extensions().get::<Admit>() {
        admit.admit();
    }
    if in_query {
        return Err(without_token(request.uri(), &token));
    }
    if request.method() == Method::POST {
        return read_form(request).await;
    }
    Ok(request)
}

/// A form posted from this session's own pages, read whole (within
/// [`MAX_BODY`] and [`BODY_DEADLINE`]).
async fn read_form(request: Request) -> Result<Request, Response> {
    if !same_origin(request.headers()) {
        return Err(pages::text(
            StatusCode::FORBIDDEN,
            "a form posted from another site is refused: use the session's own pages",
        ));
    }
    let too_large = || {
        pages::text(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("a request body may have {MAX_BODY} bytes at most: select fewer paths"),
        )
    };
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let (parts, body) = request.into_parts();
    let read = tokio::time::timeout(BODY_DEADLINE, axum::body::to_bytes(body, MAX_BODY)).await;
    match read {
        Err(_) => Err(pages::text(
            StatusCode::REQUEST_TIMEOUT,
            "the request body came too slowly",
        )),
        Ok(Err(_)) => Err(too_large()),
        Ok(Ok(bytes)) => Ok(Request::from_parts(parts, Body::from(bytes))),
    }
}

/// Whether a POST comes from this session's own pages. A browser says
/// whether the page that sent it is this origin (`Sec-Fetch-Site`, which
/// no page can set) and names that origin (`Origin`; but `null` from our
/// pages, whose `Referrer-Policy` is `no-referrer`); either must say this
/// origin. A client that says neither is no browser, so no other site can
/// have made it send the request.
fn same_origin(headers: &HeaderMap) -> bool {
    let fetch_site = headers
        .get(HeaderName::from_static("sec-fetch-site"))
        .map(|v| v.as_bytes());
    let origin = headers.get(ORIGIN).map(|v| v.to_str().unwrap_or("null"));
    match (fetch_site, origin) {
        (Some(site), _) if site != b"same-origin" => false,
        (Some(_), Some("null") | None) => true,
        (_, Some(origin)) => {
            let host = headers.get(HOST).and_then(|h| h.to_str().ok());
            let default_port = |h: &str| h.strip_suffix(":443").unwrap_or(h).to_ascii_lowercase();
            origin
                .strip_prefix("https://")
                .zip(host)
                .is_some_and(|(o, h)| default_port(o) == default_port(h))
        }
        (None, None) => true,
    }
}

/// 303 to the address asked for, without `token` in its query, setting
/// the session cookie.
fn without_token(uri: &Uri, token: &str) -> Response {
    // One leading slash: `//host/…` would leave the session.
    let path = format!("/{}", uri.path().trim_start_matches('/'));
    let rest: Vec<&str> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| {
            let key = pair.split('=').next().unwrap_or_default();
            !pair.is_empty() && percent_decode_str(key).decode_utf8_lossy() != "token"
        })
        .collect();
    let location = if rest.is_empty() {
        path
    } else {
        format!("{path}?{}", rest.join("&"))
    };
    let cookie = format!("{COOKIE_NAME}={token}; Path=/; Secure; HttpOnly; SameSite=Strict");
    match (
        HeaderValue::from_str(&location),
        HeaderValue::from_str(&cookie),
    ) {
        (Ok(location), Ok(cookie)) => (
            StatusCode::SEE_OTHER,
            [(LOCATION, location), (SET_COOKIE, cookie)],
        )
            .into_response(),
        _ => pages::text(StatusCode::BAD_REQUEST, "the address is not valid"),
    }
}

/// The headers every answer carries.
fn secure_headers(headers: &mut HeaderMap) {
    let set = |headers: &mut HeaderMap, name, value| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        CONTENT_SECURITY_POLICY,
    );
    set(headers, REFERRER_POLICY, "no-referrer");
    set(headers, X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, X_FRAME_OPTIONS, "DENY");
    set(headers, CACHE_CONTROL, "no-store");
    set(headers, STRICT_TRANSPORT_SECURITY, "max-age=300");
}

/// The token a request carries, and whether it came in the query string.
pub(super) fn presented_token(uri: &Uri, headers: &HeaderMap) -> Option<(String, bool)> {
    let query = Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|q| q.0)
        .unwrap_or_default();
    if let Some((_, token)) = query.into_iter().find(|(k, _)| k == "token") {
        return Some((token, true));
    }
    if let Some(token) = headers
        .get_all(header::AUTHORIZATION)
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

#[cfg(test)]
mod tests {

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn the_token_comes_from_the_query_a_bearer_header_or_the_cookie() {
        let none = HeaderMap::new();
        let uri: Uri = "/browse/?token=abc%2Bd".parse().unwrap();
        assert_eq!(presented_token(&uri, &none), Some(("abc+d".into(), true)));
        let cookie = headers(&[("cookie", "a=b; __Host-tender_session=xyz")]);
        let root: Uri = "/".parse().unwrap();
        assert_eq!(presented_token(&root, &cookie), Some(("xyz".into(), false)));
        // The old cookie name, which any host could set, counts no more.
        let old = headers(&[("cookie", "tender_session=xyz")]);
        assert_eq!(presented_token(&root, &old), None);
        let bearer = headers(&[("authorization", "Bearer t1 ")]);
        assert_eq!(presented_token(&root, &bearer), Some(("t1".into(), false)));
        assert_eq!(presented_token(&root, &none), None);
    }

    #[test]
    fn the_redirect_drops_the_token_and_stays_on_the_session() {
        for (asked, location) in [
            ("/?token=t", "/"),
            ("/browse/docs?token=t", "/browse/docs"),
            ("/search?q=a%20b&token=t&x=1", "/search?q=a%20b&x=1"),
            ("/search?%74oken=t&q=z&token=u", "/search?q=z"),
            ("//evil.example/?token=t", "/evil.example/"),
        ] {
            let response = without_token(&asked.parse().unwrap(), "t");
            assert_eq!(response.status(), StatusCode::SEE_OTHER, "{asked}");
            assert_eq!(response.headers()[LOCATION], location, "{asked}");
            assert_eq!(
                response.headers()[SET_COOKIE],
                "__Host-tender_session=t; Path=/; Secure; HttpOnly; SameSite=Strict"
            );
        }
    }

    #[test]
    fn only_forms_from_the_session_itself_are_accepted() {
        let host = ("host", "10.0.0.5");
        for (pairs, same) in [
            (vec![host], true),
            (vec![host, ("origin", "https://10.0.0.5")], true),
            (vec![host, ("origin", "https://10.0.0.5:443")], true),
            (
                vec![
                    ("host", "127.0.0.1:8443"),
                    ("origin", "https://127.0.0.1:8443"),
                ],
                true,
            ),
            (vec![host, ("sec-fetch-site", "same-origin")], true),
            // Chromium, from a page whose Referrer-Policy is no-referrer.
            (
                vec![host, ("origin", "null"), ("sec-fetch-site", "same-origin")],
                true,
            ),
            (vec![host, ("origin", "https://evil.example")], false),
            (vec![host, ("origin", "http://10.0.0.5")], false),
            (vec![host, ("origin", "null")], false),
            (vec![("origin", "https://10.0.0.5")], false),
            (vec![host, ("sec-fetch-site", "cross-site")], false),
            (vec![host, ("sec-fetch-site", "same-site")], false),
            (vec![host, ("sec-fetch-site", "none")], false),
            (
                vec![host, ("origin", "null"), ("sec-fetch-site", "cross-site")],
                false,
            ),
            (
                vec![
                    host,
                    ("origin", "https://evil.example"),
                    ("sec-fetch-site", "same-origin"),
                ],
                false,
            ),
        ] {
            assert_eq!(same_origin(&headers(&pairs)), same, "{pairs:?}");
        }
    }
}
