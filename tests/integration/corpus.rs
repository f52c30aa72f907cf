//! The bad-input corpus: malformed and hostile requests, table-driven. Each case is sent as raw
//! bytes over TCP (so paths, headers and bodies reach the server exactly as written, without a
//! client normalising `..` or re-encoding bytes), must get the expected 4xx status and error
//! code, and must leave the state exactly as it was: metrics of the hot state, a known user, a
//! known item, the experiments, all read back after every case.
//!
//! `bad_input.rs` holds the first cases (per-event reasons, 404s, oversized batches); this file
//! extends them without repeating them.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{settings, TestServer, ADMIN_KEY};

/// Body limit of `/v1/events` in these tests (`server.max_body_bytes`): large enough for the
/// deep-nesting cases, small enough that exceeding it is quick.
const MAX_BODY: usize = 1 << 20;
/// Fixed limits of the other JSON bodies (see `src/api`).
const ITEM_BODY_LIMIT: usize = 1 << 20;
const EXPERIMENT_BODY_LIMIT: usize = 64 * 1024;
/// Nesting depth of the deep-nesting cases; far beyond serde_json's recursion limit (128) and
/// deep enough to overflow a thread stack if anything recursed once per level.
const DEPTH: usize = 100_000;

/// How the body travels.
#[derive(Clone)]
pub enum Body {
    None,
    /// With a `Content-Length`.
    Bytes(Vec<u8>),
    /// `Transfer-Encoding: chunked`, 8 KiB chunks.
    Chunked(Vec<u8>),
    /// A `Content-Length` of this value and no body at all.
    DeclaredOnly(u64),
}

/// A header name and raw value.
type Header = (&'static str, Vec<u8>);

/// A request exactly as it goes on the wire.
#[derive(Clone)]
pub struct Req {
    pub method: &'static str,
    pub path: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Body,
}

impl Req {
    pub fn new(method: &'static str, path: impl Into<String>) -> Req {
        Req {
            method,
            path: path.into(),
            headers: Vec::new(),
            body: Body::None,
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Req {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    pub fn admin(self) -> Req {
        self.header("x-admin-key", ADMIN_KEY)
    }

    pub fn json(self, body: impl Into<Vec<u8>>) -> Req {
        self.header("content-type", "application/json")
            .body(Body::Bytes(body.into()))
    }

    pub fn body(mut self, body: Body) -> Req {
        self.body = body;
        self
    }
}

/// A response: status, JSON body (`Null` when the body is not JSON).
pub struct Res {
    pub status: u16,
    pub body: Value,
}

/// Sends `req` on a fresh connection (`Connection: close`) and reads the whole response. The
/// body is written from another thread while this one reads, so a server that answers before
/// reading the body (413) is heard before it closes the connection.
pub fn send(addr: &str, req: &Req) -> Res {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.path).into_bytes();
    head.extend_from_slice(format!("host: {addr}\r\nconnection: close\r\n").as_bytes());
    for (name, value) in &req.headers {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    let mut body = Vec::new();
    match &req.body {
        Body::None => {}
        Body::Bytes(b) => {
            head.extend_from_slice(format!("content-length: {}\r\n", b.len()).as_bytes());
            body.clone_from(b);
        }
        Body::Chunked(b) => {
            head.extend_from_slice(b"transfer-encoding: chunked\r\n");
            for chunk in b.chunks(8192) {
                body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                body.extend_from_slice(chunk);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"0\r\n\r\n");
        }
        Body::DeclaredOnly(n) => {
            head.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
        }
    }
    head.extend_from_slice(b"\r\n");
    head.extend_from_slice(&body);
    let mut writer = stream.try_clone().expect("clone");
    let write = std::thread::spawn(move || {
        // The server may close early (413): a broken pipe here is expected.
        let _ = writer.write_all(&head);
    });
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // A reset after the response arrived (the server closed with unread body bytes).
            Err(e) if !raw.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("{} {}: reading the response: {e}", req.method, req.path),
        }
    }
    write.join().ok();
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Res {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let mut body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Res {
        status,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&data[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || data.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[(eol + 4 + size).min(data.len())..];
    }
    out
}

/// What a case must get back.
#[derive(Clone, Copy)]
struct Expect {
    status: u16,
    /// `error.code`; `None` for protocol errors answered by the HTTP layer without a JSON body
    /// and for the `200` of duplicates.
    code: Option<&'static str>,
    /// `rejected[0].code` of an events batch.
    rejected: Option<&'static str>,
}

const fn err(status: u16, code: &'static str) -> Expect {
    Expect {
        status,
        code: Some(code),
        rejected: None,
    }
}

/// A one-event batch refused as a whole, the event for `reason`.
const fn refused(reason: &'static str) -> Expect {
    Expect {
        status: 400,
        code: Some("invalid_events"),
        rejected: Some(reason),
    }
}

/// A status only (the HTTP layer refused the request before the application saw it).
const fn status(status: u16) -> Expect {
    Expect {
        status,
        code: None,
        rejected: None,
    }
}

struct Case {
    name: String,
    req: Req,
    expect: Expect,
}

fn case(name: impl Into<String>, req: Req, expect: Expect) -> Case {
    Case {
        name: name.into(),
        req,
        expect,
    }
}

/// A valid event of the known user on the known item.
fn base_event() -> Value {
    json!({"user_id": "known", "item_id": "known-item", "kind": "view"})
}

/// A one-event batch: the base event with `field` set to `raw_value` (JSON text, which may be
/// invalid JSON on purpose).
fn event_with(field: &str, raw_value: &str) -> Vec<u8> {
    let mut parts: Vec<String> = [
        ("user_id", r#""known""#),
        ("item_id", r#""known-item""#),
        ("kind", r#""view""#),
    ]
    .iter()
    .filter(|(k, _)| *k != field)
    .map(|(k, v)| format!("\"{k}\":{v}"))
    .collect();
    parts.push(format!("\"{field}\":{raw_value}"));
    format!("[{{{}}}]", parts.join(",")).into_bytes()
}

fn post_events(body: impl Into<Vec<u8>>) -> Req {
    Req::new("POST", "/v1/events").json(body)
}

fn nested(open: &str, inner: &str, close: &str) -> Vec<u8> {
    let mut s = String::with_capacity(DEPTH * (open.len() + close.len()) + inner.len());
    for _ in 0..DEPTH {
        s.push_str(open);
    }
    s.push_str(inner);
    for _ in 0..DEPTH {
        s.push_str(close);
    }
    s.into_bytes()
}

/// Ids that break the alphabet `[A-Za-z0-9_.:@-]{1,128}` or address something else, as they
/// appear inside a JSON string.
const HOSTILE_JSON_IDS: &[&str] = &[
    r"a\u0000b",
    r"a\nb",
    r"\u001b[31mred",
    r"a\u007fb",
    "../../etc/passwd",
    "..",
    ".",
    "a/b",
    r"a\\b",
    "a%2Fb",
    "%2e%2e",
    "a b",
    " a",
    "a?b=c",
    "a#b",
    "ü",
    "\u{202e}evil",
    "a\u{200b}b",
    "ａｂｃ",
    "😀",
    "",
];

/// The same kind of ids in a URL path segment, percent-encoded or raw.
const HOSTILE_PATH_IDS: &[&str] = &[
    "..",
    ".",
    "%2e%2e",
    "%2E",
    "..%2F..%2Fetc%2Fpasswd",
    "a%2Fb",
    "a%5Cb",
    "a%00b",
    "a%0Ab",
    "a%0D%0Ab",
    "a%1B",
    "a%7F",
    "a%20b",
    "%C3%BC",
    "%E2%80%AE",
    "%EF%BC%A1",
    "%FF",
    "%C0%AF",
    "%ED%A0%80",
    "a%3Fb",
    "a%23b",
    "%25",
];

/// The routes that need the admin key, with a request each would otherwise accept.
fn admin_routes() -> Vec<Req> {
    let experiment = json!({"id": "exp-new", "variants": [{"name": "a", "weight": 1}]});
    vec![
        Req::new("DELETE", "/v1/items/known-item"),
        Req::new("POST", "/v1/experiments").json(experiment.to_string()),
        Req::new("GET", "/v1/experiments"),
        Req::new("GET", "/v1/experiments/exp-known"),
        Req::new("GET", "/v1/experiments/exp-known/results"),
        Req::new("POST", "/v1/experiments/exp-known/stop"),
        Req::new("DELETE", "/v1/experiments/exp-known"),
    ]
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut add = |name: &str, req: Req, expect: Expect| cases.push(case(name, req, expect));

    // Broken JSON.
    for (name, body) in [
        ("empty body", ""),
        ("truncated", r#"[{"user_id":"u","#),
        (
            "trailing garbage",
            r#"[{"user_id":"u","item_id":"i","kind":"view"}] x"#,
        ),
        ("two documents", r#"[] []"#),
        ("single quotes", r#"[{'user_id':'u'}]"#),
        (
            "trailing comma",
            r#"[{"user_id":"u","item_id":"i","kind":"view"},]"#,
        ),
        (
            "comment",
            r#"[/* hi */{"user_id":"u","item_id":"i","kind":"view"}]"#,
        ),
        ("byte order mark", "\u{feff}[]"),
        ("null", "null"),
        ("a string", r#""[]""#),
        ("an object", r#"{"events":[]}"#),
        ("unescaped newline in string", "[{\"user_id\":\"a\nb\"}]"),
        ("raw NUL in string", "[{\"user_id\":\"a\u{0}b\"}]"),
    ] {
        add(
            &format!("events: {name}"),
            post_events(body),
            err(400, "malformed_json"),
        );
    }
    for (path, what) in [("/v1/items/i1", "item"), ("/v1/users/u1", "profile")] {
        add(
            &format!("{what}: truncated"),
            Req::new("PUT", path).json(r#"{"title":"#),
            err(400, "malformed_json"),
        );
        add(
            &format!("{what}: duplicate key"),
            Req::new("PUT", path).json(r#"{"locale":"en","locale":"fr"}"#),
            err(400, "malformed_json"),
        );
    }
    add(
        "experiment: truncated",
        Req::new("POST", "/v1/experiments")
            .admin()
            .json(r#"{"id":"e","#),
        err(400, "malformed_json"),
    );

    // Wrong types.
    for (field, value) in [
        ("user_id", "5"),
        ("user_id", "null"),
        ("item_id", r#"["a"]"#),
        ("kind", "null"),
        ("kind", r#"{"view":true}"#),
        ("value", r#""4""#),
        ("value", "true"),
        ("ts", "true"),
        ("ts", "[1]"),
        ("event_id", "7"),
        ("recommendation_id", "{}"),
    ] {
        let body = event_with(field, value);
        add(
            &format!("events: {field} = {value}"),
            post_events(body),
            refused("invalid_event"),
        );
    }
    add(
        "events: [1, 2]",
        post_events("[1, 2]"),
        refused("invalid_event"),
    );
    add(
        "events: [null]",
        post_events("[null]"),
        refused("invalid_event"),
    );
    add(
        "events: duplicate user_id key smuggles a second user",
        post_events(r#"[{"user_id":"known","user_id":"other","item_id":"i","kind":"view"}]"#),
        refused("invalid_event"),
    );
    for (name, body) in [
        ("tags as a string", r#"{"tags":"fitness"}"#),
        ("difficulty as a string", r#"{"difficulty":"0.4"}"#),
        ("type as a number", r#"{"type":5}"#),
        ("body as an array", r#"[{"title":"t"}]"#),
    ] {
        add(
            &format!("item: {name}"),
            Req::new("PUT", "/v1/items/i1").json(body),
            err(400, "malformed_json"),
        );
    }
    for (name, body) in [
        ("preferences as an array", r#"{"preferences":[]}"#),
        ("locale as a number", r#"{"locale":5}"#),
        ("signup_date as a number", r#"{"signup_date":20240101}"#),
    ] {
        add(
            &format!("profile: {name}"),
            Req::new("PUT", "/v1/users/u1").json(body),
            err(400, "malformed_json"),
        );
    }
    for (name, body) in [
        ("variants as an object", r#"{"id":"e","variants":{}}"#),
        (
            "weight as a string",
            r#"{"id":"e","variants":[{"name":"a","weight":"50"}]}"#,
        ),
        (
            "fractional weight",
            r#"{"id":"e","variants":[{"name":"a","weight":1.5}]}"#,
        ),
        (
            "weight over u32",
            r#"{"id":"e","variants":[{"name":"a","weight":4294967296}]}"#,
        ),
        ("id as a number", r#"{"id":5,"variants":[]}"#),
    ] {
        add(
            &format!("experiment: {name}"),
            Req::new("POST", "/v1/experiments").admin().json(body),
            err(400, "invalid_experiment"),
        );
    }
    for (name, query) in [
        ("n twice", "n=5&n=6"),
        ("n negative", "n=-1"),
        ("n over usize", "n=99999999999999999999999"),
        ("n as a float", "n=2.5"),
        ("n empty", "n="),
    ] {
        add(
            &format!("recommendations: {name}"),
            Req::new("GET", format!("/v1/users/known/recommendations?{query}")),
            err(400, "invalid_query"),
        );
    }

    // Deep nesting: refused without recursing once per level.
    add(
        "events: 100k nested arrays",
        post_events(nested("[", "", "]")),
        refused("invalid_event"),
    );
    let mut deep_field = br#"[{"kind":"view","item_id":"i","user_id":"#.to_vec();
    deep_field.extend(nested(r#"{"a":"#, "1", "}"));
    deep_field.extend_from_slice(b"}]");
    add(
        "events: 100k nested objects in user_id",
        post_events(deep_field),
        refused("invalid_event"),
    );
    add(
        "events: 100k nested objects as the body",
        post_events(nested(r#"{"a":"#, "1", "}")),
        err(400, "malformed_json"),
    );
    let mut deep_prefs = br#"{"preferences":{"a":"#.to_vec();
    deep_prefs.extend(nested("[", "", "]"));
    deep_prefs.extend_from_slice(b"}}");
    add(
        "profile: 100k nested arrays in preferences (recursion limit)",
        Req::new("PUT", "/v1/users/u1").json(deep_prefs),
        err(400, "malformed_json"),
    );
    let mut deep_title = br#"{"title":"#.to_vec();
    deep_title.extend(nested("[", "", "]"));
    deep_title.push(b'}');
    add(
        "item: 100k nested arrays as the title",
        Req::new("PUT", "/v1/items/i1").json(deep_title),
        err(400, "malformed_json"),
    );
    let mut deep_variants = br#"{"id":"e","variants":"#.to_vec();
    deep_variants.extend(nested("[", "", "]"));
    deep_variants.push(b'}');
    add(
        "experiment: deeply nested arrays as variants",
        Req::new("POST", "/v1/experiments")
            .admin()
            .json(deep_variants[..EXPERIMENT_BODY_LIMIT / 2].to_vec()),
        err(400, "invalid_experiment"),
    );

    // Huge bodies.
    let big_batch = format!(
        "[{}]",
        vec![base_event().to_string(); MAX_BODY / 40].join(",")
    );
    assert!(big_batch.len() > MAX_BODY);
    add(
        "events: body over server.max_body_bytes",
        post_events(big_batch.clone()),
        err(413, "body_too_large"),
    );
    add(
        "events: chunked body over server.max_body_bytes",
        Req::new("POST", "/v1/events")
            .header("content-type", "application/json")
            .body(Body::Chunked(big_batch.into_bytes())),
        err(413, "body_too_large"),
    );
    add(
        "events: declared Content-Length of 1 TB, no body",
        Req::new("POST", "/v1/events")
            .header("content-type", "application/json")
            .body(Body::DeclaredOnly(1 << 40)),
        err(413, "body_too_large"),
    );
    let big_title = format!(r#"{{"title":"{}"}}"#, "x".repeat(ITEM_BODY_LIMIT));
    add(
        "item: body over 1 MiB",
        Req::new("PUT", "/v1/items/i1").json(big_title.clone()),
        err(413, "body_too_large"),
    );
    add(
        "profile: body over 1 MiB",
        Req::new("PUT", "/v1/users/u1").json(big_title),
        err(413, "body_too_large"),
    );
    let big_experiment = format!(
        r#"{{"id":"e","salt":"{}","variants":[{{"name":"a","weight":1}}]}}"#,
        "s".repeat(EXPERIMENT_BODY_LIMIT)
    );
    add(
        "experiment: body over 64 KiB",
        Req::new("POST", "/v1/experiments")
            .admin()
            .json(big_experiment.clone()),
        err(413, "body_too_large"),
    );
    add(
        "experiment: body over 64 KiB without the key is a 401 first",
        Req::new("POST", "/v1/experiments").json(big_experiment),
        err(401, "unauthorized"),
    );

    // Invalid UTF-8 and bad escapes.
    add(
        "events: invalid UTF-8 inside a string",
        post_events(b"[{\"user_id\":\"\xff\xfe\",\"item_id\":\"i\",\"kind\":\"view\"}]".to_vec()),
        err(400, "malformed_json"),
    );
    add(
        "events: overlong UTF-8 encoding of '/'",
        post_events(b"[{\"user_id\":\"a\xc0\xafb\",\"item_id\":\"i\",\"kind\":\"view\"}]".to_vec()),
        err(400, "malformed_json"),
    );
    add(
        "events: UTF-16 body",
        post_events(
            "[]".encode_utf16()
                .flat_map(u16::to_le_bytes)
                .collect::<Vec<u8>>(),
        ),
        err(400, "malformed_json"),
    );
    add(
        "events: lone surrogate escape in user_id",
        post_events(event_with("event_id", r#""\ud800""#)),
        refused("invalid_event"),
    );
    add(
        "item: invalid UTF-8 in the title",
        Req::new("PUT", "/v1/items/i1").json(b"{\"title\":\"\xff\"}".to_vec()),
        err(400, "malformed_json"),
    );
    add(
        "profile: invalid UTF-8 in a preference",
        Req::new("PUT", "/v1/users/u1").json(b"{\"preferences\":{\"a\":\"\xe2\x82\"}}".to_vec()),
        err(400, "malformed_json"),
    );
    add(
        "experiment: invalid UTF-8 in the id",
        Req::new("POST", "/v1/experiments")
            .admin()
            .json(b"{\"id\":\"\xff\",\"variants\":[{\"name\":\"a\",\"weight\":1}]}".to_vec()),
        err(400, "malformed_json"),
    );

    // Control characters, path tricks and unicode in ids: in event bodies...
    for id in HOSTILE_JSON_IDS {
        for field in ["user_id", "item_id", "event_id", "recommendation_id"] {
            add(
                &format!("events: {field} = {id:?}"),
                post_events(event_with(field, &format!("\"{id}\""))),
                refused("invalid_id"),
            );
        }
    }
    add(
        "events: 10k-character user_id",
        post_events(event_with(
            "user_id",
            &format!("\"{}\"", "u".repeat(10_000)),
        )),
        refused("invalid_id"),
    );
    add(
        "experiment: id \"..\"",
        Req::new("POST", "/v1/experiments")
            .admin()
            .json(r#"{"id":"..","variants":[{"name":"a","weight":1}]}"#),
        err(400, "invalid_id"),
    );
    // ...and in paths, on every route that takes an id.
    for id in HOSTILE_PATH_IDS {
        for (method, template, admin) in [
            ("PUT", "/v1/items/{}", false),
            ("GET", "/v1/items/{}", false),
            ("DELETE", "/v1/items/{}", true),
            ("GET", "/v1/items/{}/similar-items", false),
            ("PUT", "/v1/users/{}", false),
            ("GET", "/v1/users/{}", false),
            ("GET", "/v1/users/{}/recommendations", false),
            ("GET", "/v1/users/{}/similar-users", false),
            ("GET", "/v1/experiments/{}", true),
            ("GET", "/v1/experiments/{}/results", true),
            ("POST", "/v1/experiments/{}/stop", true),
            ("DELETE", "/v1/experiments/{}", true),
        ] {
            let mut req = Req::new(method, template.replace("{}", id));
            if method == "PUT" {
                req = req.json("{}");
            }
            if admin {
                req = req.admin();
            }
            add(
                &format!("{method} {template} with id {id}"),
                req,
                err(400, "invalid_id"),
            );
        }
    }
    add(
        "PUT /v1/items/{id} with a 10k-character id",
        Req::new("PUT", format!("/v1/items/{}", "i".repeat(10_000))).json("{}"),
        err(400, "invalid_id"),
    );
    add(
        "dot segments are not resolved into another route",
        Req::new("GET", "/v1/items/../users/known"),
        err(404, "not_found"),
    );
    add(
        "an encoded slash does not split the id",
        Req::new("GET", "/v1/users/known%2Frecommendations"),
        err(400, "invalid_id"),
    );
    add(
        "admin check comes before id validation",
        Req::new("DELETE", "/v1/items/a%00b"),
        err(401, "unauthorized"),
    );

    // NaN, infinities, overflowing numbers.
    for raw in ["NaN", "Infinity", "-Infinity", "+1", "0x10", ".5"] {
        add(
            &format!("events: value {raw}"),
            post_events(event_with("value", raw)),
            err(400, "malformed_json"),
        );
    }
    for raw in ["1e309", "-1e309"] {
        add(
            &format!("events: value {raw} (overflows f64)"),
            post_events(event_with("value", raw)),
            refused("invalid_event"),
        );
    }
    for raw in ["1e300", "-3.5e38"] {
        add(
            &format!("events: view with value {raw} (not a finite f32)"),
            post_events(event_with("value", raw)),
            refused("invalid_value"),
        );
    }
    add(
        "item: difficulty NaN",
        Req::new("PUT", "/v1/items/i1").json(r#"{"difficulty":NaN}"#),
        err(400, "malformed_json"),
    );
    add(
        "item: difficulty 1e309",
        Req::new("PUT", "/v1/items/i1").json(r#"{"difficulty":1e309}"#),
        err(400, "malformed_json"),
    );
    add(
        "item: difficulty -0.0001",
        Req::new("PUT", "/v1/items/i1").json(r#"{"difficulty":-0.0001}"#),
        err(400, "invalid_item"),
    );
    add(
        "experiment: hybrid weight 1e309",
        Req::new("POST", "/v1/experiments").admin().json(
            r#"{"id":"e","variants":[{"name":"a","weight":1,"hybrid_weights":{"cf":1e309,"content":1}}]}"#,
        ),
        err(400, "malformed_json"),
    );

    // Negative and absurd timestamps.
    for raw in [
        "-1",
        "-9223372036854775808",
        "32503680000000",
        "9223372036854775807",
        r#""3000-01-01T00:00:00Z""#,
        r#""1969-12-31T23:59:59Z""#,
        r#""0000-01-01T00:00:00Z""#,
        r#""2024-02-30T00:00:00Z""#,
        r#""2024-01-01""#,
        r#""2024-01-01T00:00:00""#,
        r#""+275760-09-13T00:00:00Z""#,
        r#""""#,
        r#""1714557600000""#,
    ] {
        add(
            &format!("events: ts {raw}"),
            post_events(event_with("ts", raw)),
            refused("invalid_timestamp"),
        );
    }
    // A number that is not a whole i64 of milliseconds is a timestamp out of range.
    for raw in ["18446744073709551615", "1e20", "-1e20", "1.5"] {
        add(
            &format!("events: ts {raw} (not an i64)"),
            post_events(event_with("ts", raw)),
            refused("invalid_timestamp"),
        );
    }

    // Unknown fields.
    add(
        "events: unknown field",
        post_events(event_with("admin", "true")),
        refused("invalid_event"),
    );
    add(
        "events: __proto__",
        post_events(event_with("__proto__", r#"{"admin":true}"#)),
        refused("invalid_event"),
    );
    add(
        "profile: unknown field",
        Req::new("PUT", "/v1/users/u1").json(r#"{"nickname":"x"}"#),
        err(400, "malformed_json"),
    );
    add(
        "experiment: unknown top-level field",
        Req::new("POST", "/v1/experiments")
            .admin()
            .json(r#"{"id":"e","variants":[{"name":"a","weight":1}],"owner":"me"}"#),
        err(400, "invalid_experiment"),
    );
    add(
        "similar-users: a query string is ignored, not an error",
        Req::new("GET", "/v1/users/ghost/similar-users?x=1"),
        err(404, "unknown_user"),
    );

    // Wrong content type.
    let event_body = format!("[{}]", base_event());
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/xml"),
        Some("json"),
    ] {
        let label = ct.unwrap_or("none");
        let with = |req: Req| match ct {
            Some(ct) => req.header("content-type", ct),
            None => req,
        };
        add(
            &format!("events: content-type {label}"),
            with(Req::new("POST", "/v1/events")).body(Body::Bytes(event_body.clone().into())),
            err(415, "unsupported_media_type"),
        );
        add(
            &format!("item: content-type {label}"),
            with(Req::new("PUT", "/v1/items/i1")).body(Body::Bytes(br#"{"title":"t"}"#.to_vec())),
            err(415, "unsupported_media_type"),
        );
        add(
            &format!("profile: content-type {label}"),
            with(Req::new("PUT", "/v1/users/u1")).body(Body::Bytes(b"{}".to_vec())),
            err(415, "unsupported_media_type"),
        );
        add(
            &format!("experiment: content-type {label}"),
            with(Req::new("POST", "/v1/experiments").admin()).body(Body::Bytes(
                br#"{"id":"e","variants":[{"name":"a","weight":1}]}"#.to_vec(),
            )),
            err(415, "unsupported_media_type"),
        );
    }

    // Missing or wrong admin key, on every admin route.
    let wrong_keys: Vec<(&str, Option<Header>)> = vec![
        ("no header", None),
        ("empty key", Some(("x-admin-key", Vec::new()))),
        ("wrong key", Some(("x-admin-key", b"wrong".to_vec()))),
        (
            "a prefix of the key",
            Some(("x-admin-key", ADMIN_KEY[..ADMIN_KEY.len() - 1].into())),
        ),
        (
            "the key plus a byte",
            Some(("x-admin-key", format!("{ADMIN_KEY}x").into_bytes())),
        ),
        (
            "the key in upper case",
            Some(("x-admin-key", ADMIN_KEY.to_uppercase().into_bytes())),
        ),
        (
            "the key with a NUL byte after it",
            Some(("x-admin-key", format!("{ADMIN_KEY}\u{0}").into_bytes())),
        ),
        (
            "the key with a non-UTF-8 byte after it",
            Some(("x-admin-key", [ADMIN_KEY.as_bytes(), b"\xff"].concat())),
        ),
        (
            "the key as a bearer token",
            Some(("authorization", format!("Bearer {ADMIN_KEY}").into_bytes())),
        ),
        (
            "the key under another header",
            Some(("x-api-key", ADMIN_KEY.into())),
        ),
    ];
    for route in admin_routes() {
        for (label, header) in &wrong_keys {
            let mut req = route.clone();
            if let Some((name, value)) = header {
                req = req.header(name, value.clone());
            }
            let expect = if label.contains("NUL") {
                // Not a valid header value: the HTTP layer refuses the request.
                status(400)
            } else {
                err(401, "unauthorized")
            };
            add(
                &format!("{} {}: {label}", route.method, route.path),
                req,
                expect,
            );
        }
        let mut req = route.clone();
        req.path = format!("{}?admin_key={ADMIN_KEY}", req.path);
        add(
            &format!(
                "{} {}: the key in the query string",
                route.method, route.path
            ),
            req,
            err(401, "unauthorized"),
        );
    }

    // Methods and framing. A known path with another method is a 405 (with `Allow`), whichever
    // methods it has (`contract.rs` enumerates every path and method).
    for (method, path) in [
        ("PATCH", "/v1/items/known-item"),
        ("POST", "/v1/items/known-item"),
        ("POST", "/v1/users/known"),
        ("PUT", "/v1/experiments"),
        ("PATCH", "/v1/experiments/exp-known"),
        ("DELETE", "/v1/users/known/recommendations"),
        ("PUT", "/v1/events"),
        ("TRACE", "/v1/events"),
        ("DELETE", "/v1/events"),
    ] {
        add(
            &format!("{method} {path}"),
            Req::new(method, path).admin(),
            err(405, "method_not_allowed"),
        );
    }
    add(
        "Content-Length and Transfer-Encoding together (request smuggling)",
        Req::new("POST", "/v1/events")
            .header("content-type", "application/json")
            .header("content-length", "4")
            .body(Body::Chunked(event_body.clone().into_bytes())),
        status(400),
    );
    add(
        "two Content-Length headers",
        Req::new("POST", "/v1/events")
            .header("content-type", "application/json")
            .header("content-length", "2")
            .body(Body::Bytes(b"[]".to_vec())),
        status(400),
    );

    cases
}

/// Everything a refused request must not change.
#[derive(Debug, PartialEq)]
struct State {
    metrics: Vec<(String, String)>,
    user: Value,
    item: Value,
    experiments: Value,
}

async fn state(s: &TestServer) -> State {
    let text = s.metrics().await;
    let metrics = text
        .lines()
        .filter(|l| {
            [
                "momentum_events_accepted_total",
                "momentum_users",
                "momentum_items",
                "momentum_interactions",
                "momentum_ab_",
            ]
            .iter()
            .any(|m| l.starts_with(m))
        })
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let experiments = s
        .client
        .get(s.url("/v1/experiments"))
        .header("x-admin-key", ADMIN_KEY)
        .send()
        .await
        .expect("experiments")
        .json()
        .await
        .expect("json");
    State {
        metrics,
        user: s.get("/v1/users/known").await.1,
        item: s.get("/v1/items/known-item").await.1,
        experiments,
    }
}

/// A server with a known user, item, event id and running experiment.
async fn seeded(mut settings: momentum::Settings) -> TestServer {
    settings.server.max_body_bytes = MAX_BODY;
    let s = TestServer::start_with(settings);
    let (status, body) = s
        .put_json(
            "/v1/items/known-item",
            &json!({"title": "Known", "tags": ["t"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = s
        .post_json(
            "/v1/events",
            &json!([{"event_id": "dup-1", "user_id": "known", "item_id": "known-item", "kind": "like"}]),
        )
        .await;
    assert_eq!((status, &body["accepted"]), (200, &json!(1)), "{body}");
    // 403 on a server without an admin key.
    let res = s
        .client
        .post(s.url("/v1/experiments"))
        .header("x-admin-key", ADMIN_KEY)
        .json(&json!({"id": "exp-known", "variants": [{"name": "a", "weight": 1}]}))
        .send()
        .await
        .expect("create");
    let status = res.status().as_u16();
    assert!(status == 201 || status == 403, "experiment: {status}");
    s
}

fn check(res: &Res, expect: Expect) -> Result<(), String> {
    let code = res.body["error"]["code"].as_str();
    let rejected = res.body["rejected"][0]["code"].as_str();
    let ok = res.status == expect.status
        && expect.code.is_none_or(|c| code == Some(c))
        && expect.rejected.is_none_or(|r| rejected == Some(r));
    if ok {
        Ok(())
    } else {
        let mut shown = res.body.to_string();
        shown.truncate(400);
        Err(format!(
            "got {} {code:?} (rejected {rejected:?}), want {} {:?} (rejected {:?}): {shown}",
            res.status, expect.status, expect.code, expect.rejected
        ))
    }
}

/// Runs every case on one server, reading the state back after each.
#[actix_web::test]
async fn hostile_requests_get_the_right_4xx_and_change_nothing() {
    let s = seeded(settings()).await;
    let addr = s.addr();
    let before = state(&s).await;
    let cases = cases();
    assert!(cases.len() > 300, "{} cases", cases.len());
    let mut failures = Vec::new();
    for c in cases {
        let req = c.req.clone();
        let res = actix_web::rt::task::spawn_blocking({
            let addr = addr.clone();
            move || send(&addr, &req)
        })
        .await
        .expect("send");
        if let Err(e) = check(&res, c.expect) {
            failures.push(format!("{}: {e}", c.name));
        }
        let now = state(&s).await;
        assert_eq!(now, before, "{} changed the state", c.name);
    }
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Still healthy after all that.
    assert_eq!(s.get("/healthz").await.0, 200);
}

/// A retried event id is a duplicate, whatever the retry carries: nothing changes.
#[actix_web::test]
async fn duplicate_event_ids_change_nothing() {
    let s = seeded(settings()).await;
    let before = state(&s).await;
    for batch in [
        json!([{"event_id": "dup-1", "user_id": "known", "item_id": "known-item", "kind": "like"}]),
        json!([
            {"event_id": "dup-1", "user_id": "known", "item_id": "known-item", "kind": "like"},
            {"event_id": "dup-1", "user_id": "known", "item_id": "known-item", "kind": "like"}
        ]),
    ] {
        let (status, body) = s.post_json("/v1/events", &batch).await;
        let n = batch.as_array().map_or(0, Vec::len);
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (&body["accepted"], &body["duplicates"]),
            (&json!(0), &json!(n)),
            "{batch}: {body}"
        );
        assert_eq!(state(&s).await, before, "{batch}");
    }
    // Same id and user, different content: still the event already applied, so nothing about
    // the user or the matrix changes. (The engine interns the new item id before the shard
    // recognises the duplicate, so `momentum_items` does count `new-item`.)
    let (status, body) = s
        .post_json(
            "/v1/events",
            &json!([{"event_id": "dup-1", "user_id": "known", "item_id": "new-item", "kind": "complete"}]),
        )
        .await;
    assert_eq!(
        (status, &body["accepted"], &body["duplicates"]),
        (200, &json!(0), &json!(1)),
        "{body}"
    );
    let after = state(&s).await;
    assert_eq!(after.user, before.user);
    for metric in ["momentum_events_accepted_total", "momentum_interactions"] {
        let value = |st: &State| st.metrics.iter().find(|(k, _)| k == metric).cloned();
        assert_eq!(value(&after), value(&before), "{metric}");
    }
    assert_eq!(s.metric("momentum_events_duplicate_total").await, 4.0);
}

/// With no admin key configured, every admin route answers 403 whatever the request sends.
#[actix_web::test]
async fn admin_routes_answer_403_without_a_configured_key() {
    let mut cfg = settings();
    cfg.security.admin_key = String::new();
    let s = seeded(cfg).await;
    let addr = s.addr();
    let before = state(&s).await;
    for route in admin_routes() {
        for key in [None, Some(""), Some(ADMIN_KEY), Some("anything")] {
            let mut req = route.clone();
            if let Some(key) = key {
                req = req.header("x-admin-key", key);
            }
            let res = actix_web::rt::task::spawn_blocking({
                let addr = addr.clone();
                move || send(&addr, &req)
            })
            .await
            .expect("send");
            check(&res, err(403, "admin_disabled"))
                .unwrap_or_else(|e| panic!("{} {} key {key:?}: {e}", route.method, route.path));
            assert_eq!(state(&s).await, before);
        }
    }
    assert_eq!(s.get("/v1/items/known-item").await.0, 200);
}

/// Every operation the API document marks as admin (so routes added later are covered too)
/// answers 401 without the key or with a wrong one, and 403 when no key is configured, before
/// it looks at ids, queries or bodies; none of them changes anything.
#[actix_web::test]
async fn every_documented_admin_operation_refuses_missing_and_wrong_keys() {
    let operations = crate::ops::documented_admin_operations();
    assert!(operations.len() >= 7, "{operations:?}");
    for (configured, expect) in [
        (true, err(401, "unauthorized")),
        (false, err(403, "admin_disabled")),
    ] {
        let mut cfg = settings();
        if !configured {
            cfg.security.admin_key = String::new();
        }
        let s = seeded(cfg).await;
        let addr = s.addr();
        let before = state(&s).await;
        for (path, method) in &operations {
            let verb = match method.as_str() {
                "get" => "GET",
                "post" => "POST",
                "put" => "PUT",
                "delete" => "DELETE",
                other => panic!("method {other}"),
            };
            for key in [None, Some("wrong")] {
                let mut req = Req::new(verb, crate::ops::concrete(path));
                if verb == "POST" || verb == "PUT" {
                    req = req.json("{}");
                }
                if let Some(key) = key {
                    req = req.header("x-admin-key", key);
                }
                let res = actix_web::rt::task::spawn_blocking({
                    let addr = addr.clone();
                    move || send(&addr, &req)
                })
                .await
                .expect("send");
                check(&res, expect).unwrap_or_else(|e| {
                    panic!("{verb} {path} key {key:?} (configured: {configured}): {e}")
                });
                assert_eq!(state(&s).await, before, "{verb} {path}");
            }
        }
    }
}
