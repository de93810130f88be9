//! A deliberately small HTTP/1.1 server for the admin API: one GET request
//! per connection, strict limits, then close.
//!
//! The admin API answers a few read-only GETs from operators and scrapers,
//! so this parses only what it needs: the request line, header names and
//! `Authorization`. The head must fit in [`MAX_HEAD`] bytes and arrive
//! within [`HEAD_TIMEOUT`]; bodies are refused; every answer closes the
//! connection. Malformed input gets a 4xx, never a panic.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// Most header lines.
const MAX_HEADERS: usize = 64;
/// Time allowed to send the whole head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed request.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct Request {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// The path, without the query (`/policy/explain`).
    pub path: String,
    /// Query parameters, percent-decoded, in order.
    pub query: Vec<(String, String)>,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
}

impl Request {
    /// The first value of query parameter `key`.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// A response.
#[derive(Clone, Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Extra headers (`WWW-Authenticate`).
    pub headers: Vec<(&'static str, String)>,
    /// Body.
    pub body: String,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        let mut body = serde_json::to_string_pretty(value).unwrap_or_else(|_| "{}".into());
        body.push('\n');
        Response { status, content_type: "application/json", headers: Vec::new(), body }
    }

    /// A JSON error body: `{"error": code, "message": text}`.
    pub fn error(status: u16, code: &str, message: &str) -> Response {
        Response::json(status, &serde_json::json!({ "error": code, "message": message }))
    }
}

/// Why a request could not be read; each maps to a status.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The head is not HTTP/1.x as expected.
    #[error("bad request: {0}")]
    Bad(&'static str),
    /// The head is larger than [`MAX_HEAD`].
    #[error("request head too large")]
    TooLarge,
    /// The request carries a body (none of the routes takes one).
    #[error("request bodies are not accepted")]
    Body,
    /// The connection closed or failed before a full head arrived.
    #[error("connection closed: {0}")]
    Io(#[from] std::io::Error),
}

impl HttpError {
    /// The status to answer with, if the connection is still usable.
    pub fn response(&self) -> Option<Response> {
        match self {
            HttpError::Bad(why) => Some(Response::error(400, "bad_request", why)),
            HttpError::TooLarge => Some(Response::error(431, "head_too_large", "request head too large")),
            HttpError::Body => {
                Some(Response::error(413, "body_not_accepted", "request bodies are not accepted"))
            }
            HttpError::Io(_) => None,
        }
    }
}

/// Reads one request head from `io`.
pub async fn read_request<R: AsyncRead + Unpin>(io: &mut R) -> Result<Request, HttpError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let end = loop {
        if let Some(pos) = find_end(&buf) {
            break pos;
        }
        if buf.len() >= MAX_HEAD {
            return Err(HttpError::TooLarge);
        }
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(HttpError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if end > MAX_HEAD {
        return Err(HttpError::TooLarge);
    }
    parse_head(&buf[..end])
}

fn find_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Parses a request head (without the final blank line).
pub fn parse_head(head: &[u8]) -> Result<Request, HttpError> {
    let text = std::str::from_utf8(head).map_err(|_| HttpError::Bad("head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let line = lines.next().ok_or(HttpError::Bad("no request line"))?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Bad("request line must be METHOD TARGET VERSION"));
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(HttpError::Bad("only HTTP/1.0 and HTTP/1.1 are spoken here"));
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HttpError::Bad("invalid method"));
    }
    if !target.starts_with('/') {
        return Err(HttpError::Bad("target must be an absolute path"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut req = Request {
        method: method.to_string(),
        path: decode(path).ok_or(HttpError::Bad("invalid percent-encoding in path"))?,
        query: Vec::new(),
        authorization: None,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = decode(k).ok_or(HttpError::Bad("invalid percent-encoding in query"))?;
        let v = decode(v).ok_or(HttpError::Bad("invalid percent-encoding in query"))?;
        req.query.push((k, v));
    }
    let mut count = 0;
    for line in lines.filter(|l| !l.is_empty()) {
        count += 1;
        if count > MAX_HEADERS {
            return Err(HttpError::TooLarge);
        }
        let (name, value) = line.split_once(':').ok_or(HttpError::Bad("header line without a colon"))?;
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
            return Err(HttpError::Bad("invalid header name"));
        }
        let value = value.trim();
        if name.eq_ignore_ascii_case("authorization") {
            if req.authorization.is_some() {
                return Err(HttpError::Bad("more than one Authorization header"));
            }
            req.authorization = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || (name.eq_ignore_ascii_case("content-length") && value != "0")
        {
            return Err(HttpError::Body);
        }
    }
    Ok(req)
}

/// Percent-decodes (and turns `+` into a space, as forms do).
fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Writes `resp` and closes the write side.
pub async fn write_response<W: AsyncWrite + Unpin>(io: &mut W, resp: &Response) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\ncache-control: no-store\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len()
    );
    for (k, v) in &resp.headers {
        head.push_str(k);
        head.push_str(": ");
        head.push_str(v);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    io.write_all(head.as_bytes()).await?;
    io.write_all(resp.body.as_bytes()).await?;
    io.flush().await?;
    io.shutdown().await
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_get_with_query_and_authorization() {
        let head = b"GET /policy/explain?sender=web&name=todos.list&version=2&x=a%20b+c HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer abc\r\n";
        let r = parse_head(head).unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/policy/explain");
        assert_eq!(r.param("sender"), Some("web"));
        assert_eq!(r.param("version"), Some("2"));
        assert_eq!(r.param("x"), Some("a b c"));
        assert_eq!(r.authorization.as_deref(), Some("Bearer abc"));
    }

    #[test]
    fn refuses_malformed_heads_and_bodies() {
        for bad in [
            &b"GET /x"[..],
            b"GET /x HTTP/2\r\n",
            b"get /x HTTP/1.1\r\n",
            b"GET x HTTP/1.1\r\n",
            b"GET /x HTTP/1.1\r\nno colon\r\n",
            b"GET /%zz HTTP/1.1\r\n",
            b"GET /x HTTP/1.1\r\nAuthorization: a\r\nAuthorization: b\r\n",
            b"\xff\xfe",
        ] {
            assert!(matches!(parse_head(bad), Err(HttpError::Bad(_))), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(matches!(parse_head(b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n"), Err(HttpError::Body)));
        assert!(matches!(
            parse_head(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"),
            Err(HttpError::Body)
        ));
    }

    #[tokio::test]
    async fn reading_stops_at_the_head_limit() {
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD * 2));
        let mut io = &big[..];
        assert!(matches!(read_request(&mut io).await, Err(HttpError::TooLarge)));
        let mut ok = &b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"[..];
        assert_eq!(read_request(&mut ok).await.unwrap().path, "/healthz");
    }
}
