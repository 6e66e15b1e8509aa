//! One HTTP/1.1 request on one connection, and its answer: the small part
//! of HTTP that the replication server needs, written so that a client
//! can only make it do bounded work.
//!
//! - The head (request line and headers) is read into a buffer of at most
//!   `Limits::max_head` bytes (431 beyond) and must arrive whole within
//!   `Limits::head_timeout` of the connection being accepted (408 after,
//!   however slowly the bytes trickle in), so a slow or silent client holds
//!   its slot for a few seconds at most.
//! - Bodies have a `Content-Length` or are empty: `Transfer-Encoding` is
//!   refused with 411 (no litefs client sends it). Nothing here reads a
//!   body; the handler decides whether to ([`Request::body`]), so a body
//!   over its limit is refused with 413 before a byte of it is read.
//! - Every answer says `Connection: close` and the connection ends after
//!   it: one request per connection, no keep-alive, nothing to pipeline.
//! - Every write has `WRITE_TIMEOUT`: a client that stops reading loses its
//!   connection instead of holding a thread.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::socket::Conn;
use super::Limits;
use crate::http::wire::MAX_REQUEST_BODY;

/// The most headers a request may have: a litefs client sends five.
const MAX_HEADERS: usize = 64;
/// How much of the head is read at a time.
const READ_CHUNK: usize = 4096;
/// How often a read waiting for a slow head checks whether the server is
/// shutting down.
const STOP_CHECK: Duration = Duration::from_millis(200);
/// How long a body of at most `MAX_REQUEST_BODY` bytes (a replica's
/// position list) may take to arrive in full: a megabyte in 10 s is a
/// slow link, and nothing slower needs to be waited for.
const SMALL_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a streamed body (an import of any size) may stay silent: a
/// client that is still sending makes progress far more often than this.
const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a write may wait for the client to read: a client that takes
/// longer is gone or hostile, and its thread is better spent elsewhere.
pub(super) const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why no request could be read.
#[derive(Debug)]
pub(super) enum ReadError {
    /// The client went away, or the server is shutting down: nothing to
    /// answer.
    Gone(String),
    /// The head did not arrive within the deadline: answered 408.
    TimedOut,
    /// A request refused with `status` and `message`.
    Refused { status: u16, message: String },
}

fn refused(status: u16, message: impl Into<String>) -> ReadError {
    ReadError::Refused {
        status,
        message: message.into(),
    }
}

/// A request whose head has been read. Its body, if any, is still on the
/// connection (apart from what arrived with the head).
pub(in crate::http) struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    content_length: Option<u64>,
    expects_continue: bool,
    peer: SocketAddr,
    stream: Conn,
    /// Body bytes read together with the head, from `buffered_at` on.
    buffered: Vec<u8>,
    buffered_at: usize,
    /// Body bytes not yet handed out.
    body_left: u64,
}

/// Reads a request head from `stream` within `limits`, giving up early
/// when `stop` is set. On a TLS connection the handshake comes first,
/// within the same deadline.
pub(super) fn read_request(
    stream: impl Into<Conn>,
    peer: SocketAddr,
    limits: &Limits,
    stop: &AtomicBool,
) -> Result<Request, (Conn, ReadError)> {
    let mut stream = stream.into();
    let head = read_head(&mut stream, limits, stop);
    stream.set_deadline(None);
    match head {
        Ok((head, rest)) => match parse_head(&head) {
            Ok(parsed) => {
                let body_left = parsed.content_length.unwrap_or(0);
                Ok(Request {
                    method: parsed.method,
                    target: parsed.target,
                    headers: parsed.headers,
                    content_length: parsed.content_length,
                    expects_continue: parsed.expects_continue,
                    peer,
                    stream,
                    buffered: rest,
                    buffered_at: 0,
                    body_left,
                })
            }
            Err(err) => Err((stream, err)),
        },
        Err(err) => Err((stream, err)),
    }
}

/// Reads until the blank line that ends the head; returns the head and
/// whatever body bytes came with it.
fn read_head(
    stream: &mut Conn,
    limits: &Limits,
    stop: &AtomicBool,
) -> Result<(Vec<u8>, Vec<u8>), ReadError> {
    let deadline = Instant::now() + limits.head_timeout;
    stream.set_deadline(Some(deadline));
    let mut buf = Vec::with_capacity(READ_CHUNK);
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        if stop.load(Ordering::SeqCst) {
            return Err(ReadError::Gone("the server is shutting down".to_string()));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadError::TimedOut);
        }
        let timeout = Some(left.min(STOP_CHECK));
        stream
            .tcp()
            .set_read_timeout(timeout)
            .map_err(|err| ReadError::Gone(err.to_string()))?;
        // The TLS handshake writes too: bounded the same way.
        if stream.is_tls() {
            stream
                .tcp()
                .set_write_timeout(timeout)
                .map_err(|err| ReadError::Gone(err.to_string()))?;
        }
        // Never more than one byte past the limit, so an endless head
        // costs `max_head` bytes of memory at most.
        let want = (limits.max_head + 1 - buf.len()).min(READ_CHUNK);
        let n = match stream.read(&mut chunk[..want]) {
            Ok(0) if buf.is_empty() => return Err(ReadError::Gone("closed".to_string())),
            Ok(0) => {
                return Err(ReadError::Gone(
                    "closed in the middle of the request head".to_string(),
                ))
            }
            Ok(n) => n,
            Err(err) if is_timeout(&err) || err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(ReadError::Gone(err.to_string())),
        };
        let searched = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf[searched..]) {
            let rest = buf.split_off(searched + end);
            return Ok((buf, rest));
        }
        if buf.len() > limits.max_head {
            return Err(refused(
                431,
                format!("the request head is larger than {} bytes", limits.max_head),
            ));
        }
    }
}

/// Where the head ends in `buf` (just past its blank line), accepting bare
/// `\n` line ends as well as `\r\n`.
fn head_end(buf: &[u8]) -> Option<usize> {
    (0..buf.len()).find_map(|i| {
        if buf[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if buf[i..].starts_with(b"\n\n") || buf[i..].starts_with(b"\n\r\n") {
            Some(i + if buf[i + 1] == b'\r' { 3 } else { 2 })
        } else {
            None
        }
    })
}

fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// What the head says.
struct Head {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    content_length: Option<u64>,
    expects_continue: bool,
}

/// Parses a request head (up to its blank line) as the server does:
/// the method and target, or the status the server would refuse it with
/// (for the fuzz target, `crate::fuzzing`).
pub fn parse_request_head(head: &[u8]) -> Result<(String, String), u16> {
    match parse_head(head) {
        Ok(h) => Ok((h.method, h.target)),
        Err(ReadError::Refused { status, .. }) => Err(status),
        Err(_) => Err(0),
    }
}

fn parse_head(head: &[u8]) -> Result<Head, ReadError> {
    let text =
        std::str::from_utf8(head).map_err(|_| refused(400, "the request head is not UTF-8"))?;
    let mut lines = text.lines();
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(refused(400, "malformed request line"));
    };
    if method.is_empty() || !method.bytes().all(is_token_byte) {
        return Err(refused(400, "malformed method"));
    }
    if !target.starts_with('/') || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(refused(400, "the request target must be a path"));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(refused(505, "only HTTP/1.0 and HTTP/1.1 are spoken here"));
    }
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        if headers.len() == MAX_HEADERS {
            return Err(refused(431, format!("more than {MAX_HEADERS} headers")));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(refused(400, "a header line without a colon"));
        };
        // Also refuses obsolete line folding (a line starting with a space).
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(refused(400, "malformed header name"));
        }
        if value.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
            return Err(refused(400, "a control character in a header value"));
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let mut content_length = None;
    for (_, value) in headers.iter().filter(|(n, _)| n == "content-length") {
        let len = value
            .parse::<u64>()
            .ok()
            .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| refused(400, "malformed Content-Length"))?;
        if content_length.is_some_and(|other| other != len) {
            return Err(refused(400, "conflicting Content-Length headers"));
        }
        content_length = Some(len);
    }
    if headers.iter().any(|(n, _)| n == "transfer-encoding") {
        return Err(refused(
            411,
            "Transfer-Encoding is not supported: send the body with a Content-Length",
        ));
    }
    let expects_continue = headers
        .iter()
        .any(|(n, v)| n == "expect" && v.eq_ignore_ascii_case("100-continue"));
    Ok(Head {
        method: method.to_string(),
        target: target.to_string(),
        headers,
        content_length,
        expects_continue,
    })
}

/// RFC 9110's `tchar`: what a method or a header name is made of.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl Request {
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The query string (after `?`), or "".
    pub fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, q)| q)
    }

    /// The values of every header named `name` (lower case).
    pub fn headers<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The declared body length (`None` without `Content-Length`).
    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The body, read as it is consumed: at most `Content-Length` bytes.
    /// A small body (at most `MAX_REQUEST_BODY`) must arrive whole within
    /// `SMALL_BODY_TIMEOUT`; a larger one may take as long as it needs,
    /// as long as it is never silent for `BODY_IDLE_TIMEOUT`.
    pub fn body(&mut self) -> Body<'_> {
        let deadline = (self.body_left <= MAX_REQUEST_BODY as u64)
            .then(|| Instant::now() + SMALL_BODY_TIMEOUT);
        Body {
            request: self,
            deadline,
        }
    }

    /// Reads the rest of a body of at most `MAX_REQUEST_BODY` bytes away,
    /// so that a client still sending it reads the answer instead of
    /// meeting a reset. A larger body is left unread: the connection ends
    /// after the answer.
    fn discard_small_body(&mut self) {
        if self.body_left > 0 && self.body_left <= MAX_REQUEST_BODY as u64 {
            let _ = io::copy(&mut self.body(), &mut io::sink());
        }
    }

    /// Reads the whole rest of the body away (an authorised import that is
    /// refused: its client sends everything before it reads the answer).
    pub fn discard_body(&mut self) {
        let _ = io::copy(&mut self.body(), &mut io::sink());
    }

    /// Answers with a plain-text `message` (a newline is added), then ends
    /// the connection.
    pub fn respond_text(
        self,
        status: u16,
        message: &str,
        extra: &[(&str, &str)],
    ) -> io::Result<()> {
        let body = format!("{message}\n");
        self.respond(status, "text/plain; charset=utf-8", body.as_bytes(), extra)
    }

    /// Answers with `body`, then ends the connection.
    pub fn respond(
        mut self,
        status: u16,
        content_type: &str,
        body: &[u8],
        extra: &[(&str, &str)],
    ) -> io::Result<()> {
        self.discard_small_body();
        let head = response_head(status, content_type, Some(body.len() as u64), extra);
        self.stream.tcp().set_write_timeout(Some(WRITE_TIMEOUT))?;
        let mut out = io::BufWriter::new(&mut self.stream);
        out.write_all(head.as_bytes())?;
        out.write_all(body)?;
        out.flush()?;
        drop(out);
        self.stream.close();
        Ok(())
    }

    /// Answers 200 with the `len` bytes of `file`, then ends the connection.
    pub fn respond_file(
        mut self,
        content_type: &str,
        file: impl io::Read,
        len: u64,
    ) -> io::Result<()> {
        self.discard_small_body();
        let head = response_head(200, content_type, Some(len), &[]);
        self.stream.tcp().set_write_timeout(Some(WRITE_TIMEOUT))?;
        let mut out = io::BufWriter::with_capacity(64 * 1024, &mut self.stream);
        out.write_all(head.as_bytes())?;
        let copied = io::copy(&mut file.take(len), &mut out)?;
        out.flush()?;
        drop(out);
        if copied < len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the file ended after {copied} of {len} bytes"),
            ));
        }
        self.stream.close();
        Ok(())
    }

    /// Hands the connection over to a handler that writes its own answer
    /// (a replication stream); the body must have been read.
    pub fn into_stream(self) -> Conn {
        self.stream
    }
}

/// A request's body: see [`Request::body`].
pub(in crate::http) struct Body<'a> {
    request: &'a mut Request,
    deadline: Option<Instant>,
}

impl Read for Body<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let request = &mut *self.request;
        if request.body_left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(request.body_left).unwrap_or(usize::MAX));
        let buffered = &request.buffered[request.buffered_at..];
        let n = if !buffered.is_empty() {
            let n = want.min(buffered.len());
            buf[..n].copy_from_slice(&buffered[..n]);
            request.buffered_at += n;
            n
        } else {
            if request.expects_continue {
                request.expects_continue = false;
                request
                    .stream
                    .tcp()
                    .set_write_timeout(Some(WRITE_TIMEOUT))?;
                request.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
                request.stream.flush()?;
            }
            let mut timeout = BODY_IDLE_TIMEOUT;
            if let Some(deadline) = self.deadline {
                timeout = timeout.min(deadline.saturating_duration_since(Instant::now()));
                if timeout.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the request body did not arrive in time",
                    ));
                }
            }
            request.stream.tcp().set_read_timeout(Some(timeout))?;
            // Over TLS one read may take many reads of the socket.
            request.stream.set_deadline(self.deadline);
            let n = request.stream.read(&mut buf[..want]);
            request.stream.set_deadline(None);
            let n = n?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the client closed the connection {} bytes before the end of the body",
                        request.body_left
                    ),
                ));
            }
            n
        };
        request.body_left -= n as u64;
        Ok(n)
    }
}

/// The head of a response; `Connection: close` always.
pub(super) fn response_head(
    status: u16,
    content_type: &str,
    len: Option<u64>,
    extra: &[(&str, &str)],
) -> String {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\n",
        reason(status)
    );
    if let Some(len) = len {
        head.push_str(&format!("Content-Length: {len}\r\n"));
    }
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("Cache-Control: no-store\r\nConnection: close\r\n\r\n");
    head
}

/// Answers a connection whose request could not be read (or that is
/// refused before reading it) with a short plain-text message, without
/// ever blocking: the answer fits in an empty socket buffer, and if it
/// does not go out at once the client was not listening anyway.
pub(super) fn refuse(stream: &mut Conn, status: u16, message: &str) {
    let body = format!("{message}\n");
    let mut answer = response_head(
        status,
        "text/plain; charset=utf-8",
        Some(body.len() as u64),
        &[],
    );
    answer.push_str(&body);
    if stream.tcp().set_nonblocking(true).is_ok() {
        let _ = stream.write_all(answer.as_bytes());
        let _ = stream.flush();
    }
    stream.close();
}

/// The reason phrase of each status this server sends.
fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    fn limits() -> Limits {
        Limits {
            max_head: 1024,
            head_timeout: Duration::from_millis(500),
            ..Limits::default()
        }
    }

    /// A connected pair: (client side, server side).
    fn pair() -> (TcpStream, TcpStream, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        (client, server, peer)
    }

    fn read(client_sends: &[u8]) -> Result<Request, ReadError> {
        let (mut client, server, peer) = pair();
        client.write_all(client_sends).unwrap();
        read_request(server, peer, &limits(), &AtomicBool::new(false)).map_err(|(_, e)| e)
    }

    fn status(result: Result<Request, ReadError>) -> u16 {
        match result {
            Ok(_) => 200,
            Err(ReadError::Refused { status, .. }) => status,
            Err(ReadError::TimedOut) => 408,
            Err(ReadError::Gone(_)) => 0,
        }
    }

    #[test]
    fn a_request_is_read_with_its_headers_and_body() {
        let mut request = read(
            b"POST /import?name=a.db HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n\
              Content-Length: 5\r\n\r\nhello",
        )
        .unwrap();
        assert_eq!(request.method(), "POST");
        assert_eq!(request.path(), "/import");
        assert_eq!(request.query(), "name=a.db");
        assert_eq!(
            request.headers("authorization").collect::<Vec<_>>(),
            ["Bearer t"]
        );
        assert_eq!(request.content_length(), Some(5));
        let mut body = String::new();
        request.body().read_to_string(&mut body).unwrap();
        assert_eq!(body, "hello");
    }

    #[test]
    fn an_oversized_head_is_refused_with_431_after_reading_the_limit() {
        let (mut client, server, peer) = pair();
        let writer = std::thread::spawn(move || {
            // Far more than the limit; the server stops reading long before.
            let _ = client.write_all(b"GET / HTTP/1.1\r\nX: ");
            let line = vec![b'a'; 64 * 1024];
            let mut sent = 0;
            while sent < 64 << 20 && client.write_all(&line).is_ok() {
                sent += line.len();
            }
            sent
        });
        let result = read_request(server, peer, &limits(), &AtomicBool::new(false));
        let (server, err) = result.err().unwrap();
        assert!(
            matches!(err, ReadError::Refused { status: 431, .. }),
            "{err:?}"
        );
        drop(server);
        // The writer was cut off instead of sending its 64 MiB.
        assert!(writer.join().unwrap() < 64 << 20);
        // Too many headers is the same status.
        let many: String = (0..100).map(|i| format!("h{i}: v\r\n")).collect();
        let head = format!("GET / HTTP/1.1\r\n{many}\r\n");
        let limits = Limits {
            max_head: 16 * 1024,
            ..limits()
        };
        let (mut client, server, peer) = pair();
        client.write_all(head.as_bytes()).unwrap();
        let result = read_request(server, peer, &limits, &AtomicBool::new(false));
        assert_eq!(status(result.map_err(|(_, e)| e)), 431);
    }

    #[test]
    fn a_slow_head_is_cut_off_at_the_deadline() {
        // Silent after half a line.
        let started = Instant::now();
        assert_eq!(status(read(b"GET /info HT")), 408);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(500) && took < Duration::from_secs(3),
            "{took:?}"
        );

        // A byte every 50 ms never times out a single read, but the whole
        // head still has the same deadline.
        let (mut client, server, peer) = pair();
        let trickle = std::thread::spawn(move || {
            for b in b"GET /info HTTP/1.1\r\nX-Slow: ".iter().cycle().take(200) {
                if client.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let started = Instant::now();
        let result = read_request(server, peer, &limits(), &AtomicBool::new(false));
        assert_eq!(status(result.map_err(|(_, e)| e)), 408);
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "{took:?}");
        trickle.join().unwrap();

        // A shutdown ends the wait early.
        let (mut client, server, peer) = pair();
        client.write_all(b"GET").unwrap();
        let stop = AtomicBool::new(true);
        let slow = Limits {
            head_timeout: Duration::from_secs(60),
            ..limits()
        };
        let started = Instant::now();
        let result = read_request(server, peer, &slow, &stop);
        assert_eq!(status(result.map_err(|(_, e)| e)), 0);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_body_is_not_read_until_asked_for() {
        // A huge declared body, of which only a few bytes ever come.
        let started = Instant::now();
        let request =
            read(b"POST /stream HTTP/1.1\r\nContent-Length: 999999999999999\r\n\r\nabc").unwrap();
        assert!(started.elapsed() < Duration::from_millis(400));
        assert_eq!(request.content_length(), Some(999_999_999_999_999));
        assert!(request.buffered.len() <= READ_CHUNK);
        // Answering it does not read it either.
        let (mut client, server, peer) = pair();
        client
            .write_all(b"POST /x HTTP/1.1\r\nContent-Length: 999999999999999\r\n\r\n")
            .unwrap();
        let request = read_request(server, peer, &limits(), &AtomicBool::new(false))
            .map_err(|(_, e)| e)
            .unwrap();
        let started = Instant::now();
        request.respond_text(413, "too large", &[]).unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
        assert!(answer.contains("Connection: close\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\ntoo large\n"), "{answer}");
    }

    #[test]
    fn malformed_heads_get_400_411_or_505() {
        for (head, want) in [
            (&b"\x00\x01 garbage\r\n\r\n"[..], 400),
            (b"GET\r\n\r\n", 400),
            (b"GET http://x/ HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\n\r\n", 505),
            (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", 400),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                400,
            ),
            (b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n", 400),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                411,
            ),
            (b"GET / HTTP/1.0\n\n", 200),
        ] {
            assert_eq!(
                status(read(head)),
                want,
                "{}",
                String::from_utf8_lossy(head)
            );
        }
        // A client that leaves mid-head is simply gone.
        let (mut client, server, peer) = pair();
        client
            .write_all(b"POST /stream HTTP/1.1\r\nContent-Le")
            .unwrap();
        drop(client);
        let result = read_request(server, peer, &limits(), &AtomicBool::new(false));
        assert_eq!(status(result.map_err(|(_, e)| e)), 0);
    }

    #[test]
    fn a_short_body_is_an_error_not_a_short_read() {
        let (mut client, server, peer) = pair();
        client
            .write_all(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
            .unwrap();
        drop(client);
        let mut request = read_request(server, peer, &limits(), &AtomicBool::new(false))
            .map_err(|(_, e)| e)
            .unwrap();
        let mut body = Vec::new();
        let err = request.body().read_to_end(&mut body).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(body, b"abc");
    }
}
