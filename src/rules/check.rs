//! The pure rules of active health checks: the parameters of `check` (as
//! `nginx_upstream_check_module` takes them), the HTTP answer a check expects, and how passes
//! and failures move a server between up and down (`rise`, `fall`).

use thiserror::Error;

/// What a check sends and expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckType {
    /// A TCP connection that opens.
    Tcp,
    /// `check_http_send`, then a status line whose class `check_http_expect_alive` accepts.
    Http,
    /// A TLS ClientHello, then a TLS handshake record in reply (the server speaks TLS).
    SslHello,
    /// A TLS handshake (certificate verified if asked), then the `http` check over it.
    Https,
}

/// The parameters of `check`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckSpec {
    /// Milliseconds between two checks of a server.
    pub interval: u64,
    /// Consecutive passes that bring a server that is down back.
    pub rise: u32,
    /// Consecutive failures that take a server that is up out.
    pub fall: u32,
    /// Milliseconds a check may take (connect, send and answer).
    pub timeout: u64,
    /// Whether a server is down until its first check passes.
    pub default_down: bool,
    /// What a check does.
    pub kind: CheckType,
    /// The port checked (0: the server's own).
    pub port: u16,
}

impl Default for CheckSpec {
    /// `nginx_upstream_check_module`'s defaults.
    fn default() -> Self {
        CheckSpec {
            interval: 30_000,
            rise: 2,
            fall: 5,
            timeout: 1_000,
            default_down: true,
            kind: CheckType::Tcp,
            port: 0,
        }
    }
}

/// A bad `check` parameter.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CheckError {
    /// A parameter that `check` does not know.
    #[error("invalid parameter \"{0}\" in \"check\" directive")]
    Unknown(String),
    /// A parameter given twice.
    #[error("duplicate parameter \"{0}\" in \"check\" directive")]
    Duplicate(String),
    /// A value out of range or not a number.
    #[error("invalid value \"{value}\" of \"{name}\" in \"check\" directive: {why}")]
    Value {
        /// The parameter.
        name: String,
        /// Its value as written.
        value: String,
        /// What is allowed.
        why: &'static str,
    },
    /// A check type this module does not run.
    #[error(
        "invalid type \"{0}\" in \"check\" directive: use \"tcp\", \"http\", \"https\" or \
         \"ssl_hello\" (mysql, ajp and fastcgi checks of nginx_upstream_check_module are not \
         supported)"
    )]
    Type(String),
    /// A status class `check_http_expect_alive` does not know.
    #[error(
        "invalid value \"{0}\" in \"check_http_expect_alive\" directive: use http_2xx, \
         http_3xx, http_4xx or http_5xx"
    )]
    Expect(String),
}

fn number(
    name: &str,
    value: &[u8],
    min: u64,
    max: u64,
    why: &'static str,
) -> Result<u64, CheckError> {
    let bad = || CheckError::Value {
        name: name.to_owned(),
        value: String::from_utf8_lossy(value).into_owned(),
        why,
    };
    if value.is_empty() || value.len() > 12 || !value.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let n: u64 = std::str::from_utf8(value).map_err(|_| bad())?.parse().map_err(|_| bad())?;
    if n < min || n > max {
        return Err(bad());
    }
    Ok(n)
}

/// Parses the parameters of `check` (each `name=value`).
pub fn parse_check(params: &[&[u8]]) -> Result<CheckSpec, CheckError> {
    let mut spec = CheckSpec::default();
    let mut seen: Vec<&[u8]> = Vec::new();
    for &param in params {
        let (name, value) = match param.iter().position(|&b| b == b'=') {
            Some(eq) => (&param[..eq], &param[eq + 1..]),
            None => return Err(CheckError::Unknown(String::from_utf8_lossy(param).into_owned())),
        };
        if seen.contains(&name) {
            return Err(CheckError::Duplicate(String::from_utf8_lossy(name).into_owned()));
        }
        seen.push(name);
        match name {
            b"interval" => {
                spec.interval =
                    number("interval", value, 100, 86_400_000, "milliseconds, 100 or more")?;
            }
            b"timeout" => {
                spec.timeout = number("timeout", value, 1, 3_600_000, "milliseconds, 1 or more")?;
            }
            b"rise" => spec.rise = number("rise", value, 1, 1_000, "1 to 1000")? as u32,
            b"fall" => spec.fall = number("fall", value, 1, 1_000, "1 to 1000")? as u32,
            b"port" => spec.port = number("port", value, 0, 65_535, "0 to 65535")? as u16,
            b"default_down" => {
                spec.default_down = match value {
                    b"true" | b"on" => true,
                    b"false" | b"off" => false,
                    _ => {
                        return Err(CheckError::Value {
                            name: "default_down".into(),
                            value: String::from_utf8_lossy(value).into_owned(),
                            why: "true or false",
                        })
                    }
                }
            }
            b"type" => {
                spec.kind = match value {
                    b"tcp" => CheckType::Tcp,
                    b"http" => CheckType::Http,
                    b"ssl_hello" => CheckType::SslHello,
                    b"https" => CheckType::Https,
                    _ => return Err(CheckError::Type(String::from_utf8_lossy(value).into_owned())),
                }
            }
            _ => return Err(CheckError::Unknown(String::from_utf8_lossy(param).into_owned())),
        }
    }
    Ok(spec)
}

/// `check_http_expect_alive` classes as a mask: bit N for status class N (2 for 2xx).
pub fn parse_expect(values: &[&[u8]]) -> Result<u8, CheckError> {
    let mut mask = 0;
    for &v in values {
        mask |= match v {
            b"http_2xx" => 1 << 2,
            b"http_3xx" => 1 << 3,
            b"http_4xx" => 1 << 4,
            b"http_5xx" => 1 << 5,
            _ => return Err(CheckError::Expect(String::from_utf8_lossy(v).into_owned())),
        };
    }
    Ok(mask)
}

/// The default of `check_http_expect_alive`: 2xx and 3xx.
pub const EXPECT_DEFAULT: u8 = (1 << 2) | (1 << 3);

/// The default of `check_http_send`.
pub const SEND_DEFAULT: &[u8] = b"GET / HTTP/1.0\r\n\r\n";

/// What a check request looks like on the wire: `send`, with a `Host: host` line added when it
/// is an HTTP request whose head has no `Host` (HTTP/1.1 servers answer 400 without one).
pub fn with_host(send: &[u8], host: &[u8]) -> Vec<u8> {
    let Some(end) = find(send, b"\r\n\r\n") else { return send.to_vec() };
    let head = &send[..end];
    let has_host = head
        .split(|&b| b == b'\n')
        .skip(1)
        .any(|line| line.len() >= 5 && line[..5].eq_ignore_ascii_case(b"host:"));
    let first_line_end = find(head, b"\r\n").unwrap_or(head.len());
    let is_http = head[..first_line_end].windows(5).any(|w| w == b"HTTP/");
    if has_host || !is_http || host.is_empty() {
        return send.to_vec();
    }
    let mut out = Vec::with_capacity(send.len() + host.len() + 8);
    out.extend_from_slice(&send[..end]);
    out.extend_from_slice(b"\r\nHost: ");
    out.extend_from_slice(host);
    out.extend_from_slice(&send[end..]);
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What the bytes read so far say of an HTTP answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Not a whole status line yet.
    Incomplete,
    /// The status code.
    Status(u16),
    /// Not an HTTP status line.
    Invalid,
}

/// Reads the status line at the start of `data` (`HTTP/1.x NNN ...`).
pub fn status_line(data: &[u8]) -> Answer {
    const PREFIX: &[u8] = b"HTTP/";
    let n = data.len().min(PREFIX.len());
    if data[..n] != PREFIX[..n] {
        return Answer::Invalid;
    }
    // "HTTP/1.1 200": 12 bytes; the code ends at a space or the line's end.
    if data.len() < 13 {
        return Answer::Incomplete;
    }
    let Some(space) = data[5..].iter().position(|&b| b == b' ') else {
        return if data.len() > 64 { Answer::Invalid } else { Answer::Incomplete };
    };
    let code = &data[5 + space + 1..];
    if code.len() < 4 {
        return Answer::Incomplete;
    }
    let digits = &code[..3];
    if !digits.iter().all(u8::is_ascii_digit) || !matches!(code[3], b' ' | b'\r' | b'\n') {
        return Answer::Invalid;
    }
    let value = digits.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    if !(100..=599).contains(&value) {
        return Answer::Invalid;
    }
    Answer::Status(value)
}

/// Where an HTTP answer ends, for a connection that may carry another check
/// (`check_keepalive_requests`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// The head or the body is not all there yet.
    More,
    /// The answer is whole and takes exactly the bytes read; the server keeps the connection
    /// open for another request.
    Reusable,
    /// The connection carries no other check: the server closes it (`Connection: close`, or
    /// HTTP/1.0 without `keep-alive`), the body's end is not known by a length (chunked, or
    /// read to the close), the head or the body does not fit in `room` bytes, or more bytes
    /// came than the answer has.
    Close,
}

/// How the answer in `data` (from its status line on) ends, for a request that was a `HEAD`
/// (`head`: no body) or not, within `room` bytes of buffer. Only what decides reuse is read:
/// the version, the status, `Connection`, `Content-Length` and `Transfer-Encoding`.
pub fn framing(data: &[u8], head: bool, room: usize) -> Framing {
    let Some(end) = find(data, b"\r\n\r\n") else {
        return if data.len() >= room { Framing::Close } else { Framing::More };
    };
    let body_at = end + 4;
    let mut lines = data[..end].split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status = lines.next().unwrap_or_default();
    let http11 = status.starts_with(b"HTTP/1.1 ");
    let code = match status_line(data) {
        Answer::Status(code) => code,
        _ => return Framing::Close,
    };
    let mut keep_alive = http11;
    let mut length: Option<usize> = None;
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else { return Framing::Close };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(trim) {
                if token.eq_ignore_ascii_case(b"close") {
                    return Framing::Close;
                }
                if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Framing::Close;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let valid =
                !value.is_empty() && value.len() <= 9 && value.iter().all(u8::is_ascii_digit);
            let n = if valid {
                value.iter().fold(0usize, |n, d| n * 10 + usize::from(d - b'0'))
            } else {
                return Framing::Close;
            };
            if length.is_some_and(|l| l != n) {
                return Framing::Close;
            }
            length = Some(n);
        }
    }
    if !keep_alive || code < 200 {
        return Framing::Close;
    }
    let body = if head || code == 204 || code == 304 {
        0
    } else {
        match length {
            Some(n) => n,
            None => return Framing::Close,
        }
    };
    let total = body_at.saturating_add(body);
    if total > room || data.len() > total {
        Framing::Close
    } else if data.len() < total {
        Framing::More
    } else {
        Framing::Reusable
    }
}

/// `s` without the spaces and tabs around it.
fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| b != b' ' && b != b'\t').unwrap_or(s.len());
    let end = s.iter().rposition(|&b| b != b' ' && b != b'\t').map_or(start, |i| i + 1);
    &s[start..end]
}

/// Whether the request of `check_http_send` is a `HEAD` (its answer has no body).
pub fn is_head(send: &[u8]) -> bool {
    send.starts_with(b"HEAD ")
}

/// Whether `code` is in a class of `mask` ([`parse_expect`]).
pub fn alive(code: u16, mask: u8) -> bool {
    let class = code / 100;
    class < 8 && mask & (1 << class) != 0
}

/// Why a check failed, as the zone keeps it (0: it did not).
pub mod error {
    /// No failure.
    pub const NONE: u64 = 0;
    /// The connection was refused (or reset while connecting).
    pub const REFUSED: u64 = 1;
    /// No answer within `timeout`.
    pub const TIMEOUT: u64 = 2;
    /// The server closed the connection before a whole answer.
    pub const CLOSED: u64 = 3;
    /// Another error of the socket.
    pub const SOCKET: u64 = 4;
    /// An answer that is not HTTP (or not TLS, for `ssl_hello`).
    pub const INVALID: u64 = 5;
    /// The TLS handshake failed (`type=https`).
    pub const TLS: u64 = 6;
    /// The server's certificate did not verify, or does not name the server (`type=https`
    /// with `check_ssl_verify on`).
    pub const CERTIFICATE: u64 = 7;
    /// A status code outside `check_http_expect_alive`: 1000 + the code.
    pub const STATUS: u64 = 1000;

    /// The text for the status page and the log.
    pub fn describe(code: u64) -> String {
        match code {
            NONE => "-".into(),
            REFUSED => "connection refused".into(),
            TIMEOUT => "timed out".into(),
            CLOSED => "connection closed".into(),
            SOCKET => "socket error".into(),
            INVALID => "invalid answer".into(),
            TLS => "TLS handshake failed".into(),
            CERTIFICATE => "certificate not verified".into(),
            c if (STATUS + 100..STATUS + 600).contains(&c) => format!("status {}", c - STATUS),
            _ => "error".into(),
        }
    }
}

/// A server's check state: up or down, and the consecutive passes or failures that count
/// towards the next change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Health {
    /// Whether the server is down (out of service).
    pub down: bool,
    /// Consecutive passes since the last failure.
    pub passes: u32,
    /// Consecutive failures since the last pass.
    pub fails: u32,
}

impl Health {
    /// The state before any check: `default_down` says.
    pub fn initial(spec: &CheckSpec) -> Health {
        Health { down: spec.default_down, passes: 0, fails: 0 }
    }

    /// The state after one more check (`passed` or not); and whether it changed between up and
    /// down. A server that is down comes back after `rise` consecutive passes (a server never
    /// checked, down by `default_down`, after its first pass), one that is up goes after `fall`
    /// consecutive failures.
    pub fn after(self, passed: bool, spec: &CheckSpec) -> (Health, bool) {
        let mut h = self;
        // Never checked yet (`default_down`): the first pass is enough. `rise` is for coming
        // back after the checks took the server out.
        let first = self.passes == 0 && self.fails == 0;
        if passed {
            h.passes = h.passes.saturating_add(1);
            h.fails = 0;
            if h.down && (h.passes >= spec.rise || first) {
                h.down = false;
            }
        } else {
            h.fails = h.fails.saturating_add(1);
            h.passes = 0;
            if !h.down && h.fails >= spec.fall {
                h.down = true;
            }
        }
        (h, h.down != self.down)
    }

    /// As one word of the zone: bit 63 down, then 31 bits of passes and 31 of failures.
    pub fn to_word(self) -> u64 {
        (u64::from(self.down) << 63)
            | (u64::from(self.passes.min(0x7fff_ffff)) << 31)
            | u64::from(self.fails.min(0x7fff_ffff))
    }

    /// [`to_word`](Self::to_word) read back.
    pub fn from_word(w: u64) -> Health {
        Health {
            down: w >> 63 != 0,
            passes: ((w >> 31) & 0x7fff_ffff) as u32,
            fails: (w & 0x7fff_ffff) as u32,
        }
    }
}

/// A TLS 1.2 ClientHello for `ssl_hello` checks: a fixed random, common ECDHE and RSA cipher
/// suites, and the extensions servers need to pick one (supported groups, point formats,
/// signature algorithms). A TLS server answers it with a handshake record (`0x16`).
pub const CLIENT_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x00, 0x69, // record: handshake, TLS 1.0 framing, 105 bytes
    0x01, 0x00, 0x00, 0x65, // ClientHello, 101 bytes
    0x03, 0x03, // TLS 1.2
    0x6a, 0x76, 0x6d, 0x5f, 0x72, 0x6f, 0x75, 0x74, 0x65, 0x20, 0x63, 0x68, 0x65, 0x63, 0x6b, 0x20,
    0x6a, 0x76, 0x6d, 0x5f, 0x72, 0x6f, 0x75, 0x74, 0x65, 0x20, 0x63, 0x68, 0x65, 0x63, 0x6b,
    0x21, // random (32 bytes)
    0x00, // no session id
    0x00, 0x10, // 8 cipher suites
    0xc0, 0x2f, 0xc0, 0x30, 0xc0, 0x2b, 0xc0, 0x2c, 0x00, 0x9e, 0x00, 0x9f, 0x00, 0x9c, 0x00,
    0x9d, //
    0x01, 0x00, // compression: null
    0x00, 0x2c, // extensions: 44 bytes
    0x00, 0x0a, 0x00, 0x08, 0x00, 0x06, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x18, // groups
    0x00, 0x0b, 0x00, 0x02, 0x01, 0x00, // point formats: uncompressed
    0x00, 0x0d, 0x00, 0x12, 0x00, 0x10, 0x04, 0x03, 0x05, 0x03, 0x06, 0x03, 0x08, 0x04, 0x08, 0x05,
    0x08, 0x06, 0x04, 0x01, 0x05, 0x01, // signature algorithms
    0x00, 0x17, 0x00, 0x00, // extended master secret
];

/// What a server's first bytes in answer to [`CLIENT_HELLO`] say: a TLS handshake record
/// passes, an alert or anything else fails.
pub fn tls_answer(data: &[u8]) -> Answer {
    match data {
        [] => Answer::Incomplete,
        [0x16, ..] => Answer::Status(200),
        _ => Answer::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_of_answers() {
        use Framing::*;
        let tomcat = "HTTP/1.1 200 \r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n";
        let junk = format!("{tomcat}HTTP/1.1");
        let cases: [(&str, bool, Framing); 21] = [
            // A Tomcat's answer to GET: reusable once the whole body is there.
            (tomcat, false, Reusable),
            (&tomcat[..tomcat.len() - 1], false, More),
            (&tomcat[..20], false, More),
            (&junk, false, Close),
            // HEAD, 204 and 304 have no body, whatever the length says.
            ("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n", true, Reusable),
            ("HTTP/1.1 204 No Content\r\n\r\n", false, Reusable),
            ("HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", false, Reusable),
            // The server closes, or the end is not known by a length.
            ("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", false, Close),
            (
                "HTTP/1.1 200 OK\r\nconnection: Upgrade, Close\r\nContent-Length: 0\r\n\r\n",
                false,
                Close,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
                false,
                Close,
            ),
            ("HTTP/1.1 200 OK\r\n\r\nok", false, Close),
            ("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", false, Close),
            (
                "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nok",
                false,
                Reusable,
            ),
            ("HTTP/1.1 100 Continue\r\n\r\n", false, Close),
            // Lengths that disagree or are not numbers; a header line without a colon.
            ("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", false, Close),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
                false,
                Reusable,
            ),
            ("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", false, Close),
            ("HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n", false, Close),
            ("HTTP/1.1 200 OK\r\nbroken\r\nContent-Length: 0\r\n\r\n", false, Close),
            // Not HTTP.
            ("SSH-2.0-OpenSSH\r\n\r\n", false, Close),
            ("", false, More),
        ];
        for (answer, head, want) in cases {
            assert_eq!(framing(answer.as_bytes(), head, 1024), want, "{answer:?}");
        }
        // A head or a body larger than the room.
        assert_eq!(framing(tomcat.as_bytes(), false, tomcat.len()), Reusable);
        assert_eq!(framing(tomcat.as_bytes(), false, tomcat.len() - 1), Close);
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\nX: aaaa", false, 20), Close);
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\nX: aaaa", false, 40), More);
        assert!(is_head(b"HEAD /health HTTP/1.1\r\n\r\n") && !is_head(b"GET / HTTP/1.1\r\n\r\n"));
    }

    use proptest::prelude::*;

    #[test]
    fn the_check_module_examples_parse() {
        let spec =
            parse_check(&[b"interval=3000", b"rise=2", b"fall=5", b"timeout=1000", b"type=http"])
                .unwrap();
        assert_eq!(
            spec,
            CheckSpec { interval: 3000, kind: CheckType::Http, ..CheckSpec::default() }
        );
        let spec = parse_check(&[b"interval=1000", b"default_down=false", b"port=8081"]).unwrap();
        assert!(!spec.default_down);
        assert_eq!((spec.port, spec.kind), (8081, CheckType::Tcp));
        assert_eq!(parse_check(&[]).unwrap(), CheckSpec::default());
    }

    #[test]
    fn bad_parameters_say_what_is_wrong() {
        let e = |p: &[&[u8]]| parse_check(p).unwrap_err().to_string();
        assert!(e(&[b"interval=abc"]).contains("invalid value \"abc\" of \"interval\""));
        assert!(e(&[b"interval=50"]).contains("100 or more"));
        assert!(e(&[b"rise=0"]).contains("1 to 1000"));
        assert!(e(&[b"port=70000"]).contains("0 to 65535"));
        assert!(e(&[b"type=mysql"]).contains("mysql, ajp and fastcgi"));
        assert!(e(&[b"fall=1", b"fall=2"]).contains("duplicate parameter \"fall\""));
        assert!(e(&[b"bogus=1"]).contains("invalid parameter \"bogus=1\""));
        assert!(e(&[b"interval"]).contains("invalid parameter \"interval\""));
        assert!(e(&[b"default_down=maybe"]).contains("true or false"));
        assert!(e(&[b"timeout=99999999999999"]).contains("timeout"));
        assert!(parse_expect(&[b"http_6xx"]).unwrap_err().to_string().contains("http_2xx"));
    }

    #[test]
    fn expect_classes() {
        let mask = parse_expect(&[b"http_2xx", b"http_3xx"]).unwrap();
        assert_eq!(mask, EXPECT_DEFAULT);
        assert!(alive(200, mask) && alive(302, mask) && alive(204, mask));
        assert!(!alive(404, mask) && !alive(503, mask) && !alive(101, mask));
        assert!(alive(503, parse_expect(&[b"http_5xx"]).unwrap()));
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_line(b"HTTP/1.1 200 OK\r\n"), Answer::Status(200));
        assert_eq!(status_line(b"HTTP/1.0 503 Service Unavailable\r\n"), Answer::Status(503));
        assert_eq!(status_line(b"HTTP/1.1 204\r\n"), Answer::Status(204));
        assert_eq!(status_line(b"HTTP/1.1 20"), Answer::Incomplete);
        assert_eq!(status_line(b"HTT"), Answer::Incomplete);
        assert_eq!(status_line(b""), Answer::Incomplete);
        assert_eq!(status_line(b"SSH-2.0-OpenSSH"), Answer::Invalid);
        assert_eq!(status_line(b"HTTP/1.1 2x0 OK\r\n"), Answer::Invalid);
        assert_eq!(status_line(b"HTTP/1.1 999 X\r\n"), Answer::Invalid);
        assert_eq!(status_line(b"HTTP/1.1 2000 X\r\n"), Answer::Invalid);
    }

    #[test]
    fn a_host_line_is_added_only_where_missing() {
        assert_eq!(
            with_host(b"HEAD /health HTTP/1.0\r\n\r\n", b"10.0.0.1:8080"),
            b"HEAD /health HTTP/1.0\r\nHost: 10.0.0.1:8080\r\n\r\n".to_vec()
        );
        let given = b"GET / HTTP/1.1\r\nhost: a\r\nConnection: close\r\n\r\n";
        assert_eq!(with_host(given, b"b"), given.to_vec());
        // Not HTTP, or no end of head: as written.
        assert_eq!(with_host(b"PING\r\n\r\n", b"b"), b"PING\r\n\r\n".to_vec());
        assert_eq!(with_host(b"GET / HTTP/1.0", b"b"), b"GET / HTTP/1.0".to_vec());
    }

    #[test]
    fn rise_and_fall() {
        let spec = CheckSpec { rise: 2, fall: 3, ..CheckSpec::default() };
        let mut h = Health::initial(&spec);
        assert!(h.down);
        // Never checked: up at the first pass.
        let (next, changed) = h.after(true, &spec);
        assert!(!next.down && changed);
        h = next;
        // A first failure, then two passes: `rise` applies.
        let (first_failed, _) = Health::initial(&spec).after(false, &spec);
        let (next, changed) = first_failed.after(true, &spec);
        assert!(next.down && !changed);
        let (next, changed) = next.after(true, &spec);
        assert!(!next.down && changed);
        for i in 1..=3 {
            let (next, changed) = h.after(false, &spec);
            assert_eq!((next.down, changed), (i == 3, i == 3), "failure {i}");
            h = next;
        }
        // A pass in between starts the count again.
        let spec = CheckSpec { default_down: false, fall: 2, ..spec };
        let h = Health::initial(&spec);
        let (h, _) = h.after(false, &spec);
        let (h, _) = h.after(true, &spec);
        let (h, changed) = h.after(false, &spec);
        assert!(!h.down && !changed);
    }

    #[test]
    fn the_client_hello_is_well_formed() {
        let record_len = usize::from(CLIENT_HELLO[3]) << 8 | usize::from(CLIENT_HELLO[4]);
        assert_eq!(CLIENT_HELLO.len(), 5 + record_len);
        let hello_len = usize::from(CLIENT_HELLO[7]) << 8 | usize::from(CLIENT_HELLO[8]);
        assert_eq!(record_len, 4 + hello_len);
        let ext_at = 9 + 2 + 32 + 1 + 2 + 16 + 2;
        let ext_len =
            usize::from(CLIENT_HELLO[ext_at]) << 8 | usize::from(CLIENT_HELLO[ext_at + 1]);
        assert_eq!(CLIENT_HELLO.len(), ext_at + 2 + ext_len);
        assert_eq!(tls_answer(&[0x16, 3, 3]), Answer::Status(200));
        assert_eq!(tls_answer(&[0x15, 3, 3]), Answer::Invalid);
    }

    proptest! {
        #[test]
        fn words_round_trip(down: bool, passes in 0u32..0x7fff_ffff, fails in 0u32..0x7fff_ffff) {
            let h = Health { down, passes, fails };
            prop_assert_eq!(Health::from_word(h.to_word()), h);
        }

        /// Any bytes: the parsers never panic, and a status they report is a real one.
        #[test]
        fn any_bytes_are_safe(data in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Answer::Status(code) = status_line(&data) {
                prop_assert!((100..=599).contains(&code));
            }
            let _ = with_host(&data, b"h");
            let _ = parse_check(&[&data]);
            for room in [0, 10, 1024] {
                let _ = framing(&data, false, room);
                let _ = framing(&data, true, room);
            }
            let _ = error::describe(u64::from(data.first().copied().unwrap_or(0)) * 10);
        }

        /// An answer with a `Content-Length` is reusable exactly when all of it is there, and
        /// never before; any prefix of it wants more.
        #[test]
        fn a_length_frames_the_answer(body in proptest::collection::vec(any::<u8>(), 0..100),
                                      extra in proptest::collection::vec(any::<u8>(), 1..10)) {
            let mut answer =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            answer.extend_from_slice(&body);
            prop_assert_eq!(framing(&answer, false, 1024), Framing::Reusable);
            for cut in 0..answer.len() {
                prop_assert_eq!(framing(&answer[..cut], false, 1024), Framing::More);
            }
            answer.extend_from_slice(&extra);
            prop_assert_eq!(framing(&answer, false, 1024), Framing::Close);
        }

        /// `after` moves to down only after `fall` failures in a row, and back only after
        /// `rise` passes in a row.
        #[test]
        fn changes_need_runs(results in proptest::collection::vec(any::<bool>(), 0..60),
                             rise in 1u32..5, fall in 1u32..5) {
            let spec = CheckSpec { rise, fall, default_down: false, ..CheckSpec::default() };
            let mut h = Health::initial(&spec);
            let mut run = (false, 0u32);
            for ok in results {
                run = if run.0 == ok && run.1 > 0 { (ok, run.1 + 1) } else { (ok, 1) };
                let (next, changed) = h.after(ok, &spec);
                if changed {
                    if next.down { prop_assert!(!ok && run.1 >= fall); }
                    else { prop_assert!(ok && run.1 >= rise); }
                }
                h = next;
            }
        }
    }
}
