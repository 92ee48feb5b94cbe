//! The little HTTP/1.1 the lab speaks: responders answer a request line on any TCP port with an HTTP
//! response (so `lab http` has something to talk to in pods, as health checks will), and `lab http`
//! reads the response of any server (a responder, the agent's admin endpoint). One request per
//! connection, `Connection: close`: enough for checks, and the connection's end marks the body's end.
//!
//! The responder's response: status 200, or NNN for the path `/status/NNN` (so a test can see a
//! failing status reported as such); headers `X-Strait-Pod` and `X-Strait-Client` (who answered and
//! the client address it saw); the body is its usual JSON line with the path added.

use std::collections::BTreeMap;

/// Longest response `lab http` reads; the rest is cut (and said so).
pub const MAX_RESPONSE: usize = 1 << 20;
/// Header lines a responder reads at most before answering.
pub const MAX_HEADER_LINES: usize = 100;

pub const POD_HEADER: &str = "x-strait-pod";
pub const CLIENT_HEADER: &str = "x-strait-client";

/// `(method, path)` when `line` is an HTTP/1.x request line.
pub fn request_line(line: &str) -> Option<(&str, &str)> {
    let mut parts = line.trim_end_matches(['\r', '\n']).split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    let is_method = !method.is_empty() && method.chars().all(|c| c.is_ascii_uppercase());
    if parts.next().is_some() || !is_method || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return None;
    }
    Some((method, target))
}

/// The status a responder answers `path` with.
pub fn status_for(path: &str) -> u16 {
    path.strip_prefix("/status/")
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (200..=599).contains(s))
        .unwrap_or(200)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// A whole response: status line, headers, body (none for HEAD).
pub fn response(status: u16, headers: &[(&str, &str)], body: &[u8], head: bool) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status)).into_bytes();
    for (k, v) in headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(format!("Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()).as_bytes());
    if !head {
        out.extend_from_slice(body);
    }
    out
}

/// The request `lab http` sends.
pub fn request(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: strait-lab\r\nAccept: */*\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    /// Lower-case names; repeated headers joined with `, `.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

/// Parses a whole response as read until the server closed (or `MAX_RESPONSE`).
pub fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers in the response")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1.x status line: {status_line:?}"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("no status code in {status_line:?}"))?;
    let reason = parts.next().unwrap_or_default().to_string();
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            return Err(format!("malformed header line {line:?}"));
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
        headers
            .entry(k)
            .and_modify(|old| {
                old.push_str(", ");
                old.push_str(&v);
            })
            .or_insert(v);
    }
    let rest = &raw[end + 4..];
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|t| t.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(len) = headers
        .get("content-length")
        .and_then(|l| l.parse::<usize>().ok())
    {
        rest[..len.min(rest.len())].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        reason,
        headers,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    // Every chunk is at least its size line: the loop ends within rest.len() rounds.
    for _ in 0..=rest.len() {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunked body cut short")?;
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| format!("bad chunk size {size_hex:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if rest.len() < size {
            body.extend_from_slice(rest);
            return Ok(body);
        }
        body.extend_from_slice(&rest[..size]);
        rest = rest.get(size + 2..).unwrap_or_default();
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        assert_eq!(
            request_line("GET /healthz HTTP/1.1\r\n"),
            Some(("GET", "/healthz"))
        );
        assert_eq!(request_line("HEAD / HTTP/1.0"), Some(("HEAD", "/")));
        assert_eq!(request_line("probe\n"), None);
        assert_eq!(request_line("GET healthz HTTP/1.1"), None);
        assert_eq!(request_line("{\"GET\": 1}"), None);
    }

    #[test]
    fn statuses() {
        assert_eq!(status_for("/"), 200);
        assert_eq!(status_for("/status/503"), 503);
        assert_eq!(status_for("/status/99"), 200);
        assert_eq!(status_for("/status/x"), 200);
    }

    #[test]
    fn response_round_trip() {
        let raw = response(503, &[("X-Strait-Pod", "x/a")], b"{\"pod\":\"x/a\"}\n", false);
        let r = parse_response(&raw).unwrap();
        assert_eq!((r.status, r.reason.as_str()), (503, "Service Unavailable"));
        assert_eq!(r.headers[POD_HEADER], "x/a");
        assert_eq!(r.headers["content-length"], "14");
        assert_eq!(r.body, b"{\"pod\":\"x/a\"}\n");
        let head = response(200, &[], b"abc", true);
        assert!(parse_response(&head).unwrap().body.is_empty());
    }

    #[test]
    fn chunked_and_repeated_headers() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nSet-Cookie: a\r\nset-cookie: b\r\n\r\n\
                    3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let r = parse_response(raw).unwrap();
        assert_eq!(r.body, b"abcde");
        assert_eq!(r.headers["set-cookie"], "a, b");
        assert!(parse_response(b"SSH-2.0\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }
}
