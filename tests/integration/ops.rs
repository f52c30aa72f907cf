//! The operations kit checked against the code: the OpenAPI document (served, complete, in sync
//! with the routes and the response bodies), the Dockerfile (copies what the build and the
//! binary need, runs as non-root), the alert rules and dashboard (only metrics that exist), and
//! secrets (never in the logs of the real binary).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{event, TestServer, ADMIN_KEY};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub fn document() -> Value {
    serde_json::from_str(&read("openapi.json")).expect("openapi.json is JSON")
}

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

/// Every (path template, method) of the document.
pub fn documented_operations(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(move |m| (path.clone(), m.to_string()))
        })
        .collect()
}

/// A route registered in `src/api`: path template, method, and whether its handler calls
/// `require_admin`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Registered {
    path: String,
    method: String,
    admin: bool,
}

/// Every route registered by the `configure` functions of `src/api/*.rs`, read from the
/// source: a route literal (`"/…"` in `.route(` or `web::resource(`) followed by the
/// `web::get().to(handler)`-style routes that belong to it; the handler is looked up in the
/// same file.
fn registered_routes() -> BTreeSet<Registered> {
    let mut routes = BTreeSet::new();
    let dir = root().join("src/api");
    for entry in std::fs::read_dir(&dir).expect("src/api") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("source");
        let Some(start) = text.find("pub fn configure(") else {
            continue;
        };
        let body = &text[start..];
        let body = &body[..body.find("\n}\n").unwrap_or(body.len())];
        for (route, method, handler) in scan_configure(body) {
            let name = handler.rsplit("::").next().unwrap_or(&handler);
            let signature = format!("async fn {name}(");
            let at = text.find(&signature).unwrap_or_else(|| {
                panic!("{}: no `{signature}` for {method} {route}", path.display())
            });
            let handler_body = &text[at..];
            let handler_body = &handler_body[..handler_body.find("\n}\n").unwrap_or(0)];
            routes.insert(Registered {
                path: route,
                method,
                admin: handler_body.contains("require_admin("),
            });
        }
    }
    routes
}

/// (path, method, handler) triples of one `configure` body.
fn scan_configure(body: &str) -> Vec<(String, String, String)> {
    let mut found = Vec::new();
    let mut current: Option<String> = None;
    let mut rest = body;
    loop {
        let call = ["route(", "resource("]
            .iter()
            .filter_map(|p| rest.find(p).map(|i| (i, p.len())))
            .min();
        let method = METHODS
            .iter()
            .filter_map(|m| rest.find(&format!("web::{m}()")).map(|i| (i, *m)))
            .min();
        match (call, method) {
            (Some((ci, len)), m) if m.is_none_or(|(mi, _)| ci < mi) => {
                // `.route("/path", …)` or `web::resource("/path")`, possibly wrapped by
                // rustfmt; `.route(web::get()…)` inside a resource has no literal.
                let args = rest[ci + len..].trim_start();
                if let Some(lit) = args.strip_prefix("\"/") {
                    let end = lit.find('"').expect("closing quote");
                    current = Some(format!("/{}", &lit[..end]));
                }
                rest = &rest[ci + len..];
            }
            (_, Some((mi, m))) => {
                let path = current.clone().expect("a method before any route literal");
                let after = &rest[mi..];
                let to = after.find(".to(").expect("`.to(handler)` after the method") + 4;
                let end = after[to..].find(')').expect("closing paren");
                let handler = after[to..to + end].trim().to_string();
                found.push((path, m.to_string(), handler));
                rest = &rest[mi + 1..];
            }
            _ => break,
        }
    }
    found
}

/// A concrete path for a template: `{version}` → `1`, any other parameter → `x`.
pub fn concrete(template: &str) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').expect("closing brace") + open;
        out.push_str(&rest[..open]);
        out.push_str(if &rest[open + 1..close] == "version" {
            "1"
        } else {
            "x"
        });
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// The documented operations that declare the admin key.
pub fn documented_admin_operations() -> Vec<(String, String)> {
    let doc = document();
    documented_operations(&doc)
        .into_iter()
        .filter(|(path, method)| {
            doc["paths"][path][method]["security"] == json!([{"adminKey": []}])
        })
        .collect()
}

#[actix_web::test]
async fn openapi_document_is_served_and_well_formed() {
    let s = TestServer::start();
    let res = s
        .client
        .get(s.url("/openapi.json"))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status().as_u16(), 200);
    assert!(res
        .headers()
        .get("content-type")
        .is_some_and(|v| v == "application/json"));
    let served: Value = res.json().await.expect("json");
    let doc = document();
    assert_eq!(served, doc, "the served document is the checked-in file");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    assert_eq!(
        doc["components"]["securitySchemes"]["adminKey"],
        json!({"type": "apiKey", "in": "header", "name": "X-Admin-Key",
            "description": doc["components"]["securitySchemes"]["adminKey"]["description"]})
    );
    // Every $ref resolves.
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(refs.len() > 20);
    for r in refs {
        assert!(resolve(&doc, &r).is_some(), "dangling $ref {r}");
    }
    // Every operation has a summary, an operationId, responses with a description, and admin
    // operations (the ones documenting a 401) declare the admin key.
    let mut ids = BTreeSet::new();
    for (path, method) in documented_operations(&doc) {
        let op = &doc["paths"][&path][&method];
        assert!(op["summary"].is_string(), "{method} {path}: summary");
        let id = op["operationId"].as_str().expect("operationId");
        assert!(ids.insert(id.to_string()), "duplicate operationId {id}");
        for (status, res) in op["responses"].as_object().expect("responses") {
            let res = resolve_value(&doc, res);
            assert!(res["description"].is_string(), "{method} {path} {status}");
        }
        // The console's login takes the key in its body (a wrong one is its 401); its logout is
        // authenticated by the session cookie alone.
        let login = path == "/console/login" && method == "post";
        let admin = op["responses"].get("401").is_some() && !login;
        let secured = op["security"] == json!([{"adminKey": []}])
            || op["security"] == json!([{"consoleSession": []}]);
        assert_eq!(
            admin, secured,
            "{method} {path}: a 401 response and the adminKey (or consoleSession) security go together"
        );
    }
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r.clone());
            }
            m.values().for_each(|v| collect_refs(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    doc.pointer(reference.strip_prefix('#')?)
}

fn resolve_value<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve_value(doc, resolve(doc, r).expect("resolvable $ref")),
        None => v,
    }
}

/// (b): a route added in `src/api` without documenting it fails here.
#[test]
fn every_registered_route_is_documented() {
    let registered = registered_routes();
    // The scanner must see the routes that exist today, or it proves nothing.
    for (path, method, admin) in [
        ("/v1/events", "post", false),
        ("/v1/items/{id}", "delete", true),
        ("/v1/items/{id}", "get", false),
        ("/v1/users/{id}/recommendations", "get", false),
        ("/v1/experiments/{id}/stop", "post", true),
        ("/healthz", "get", false),
        ("/openapi.json", "get", false),
    ] {
        let want = Registered {
            path: path.into(),
            method: method.into(),
            admin,
        };
        assert!(
            registered.contains(&want),
            "the source scan missed {want:?}: {registered:?}"
        );
    }
    let doc = document();
    let documented = documented_operations(&doc);
    let missing: Vec<_> = registered
        .iter()
        .filter(|r| !documented.contains(&(r.path.clone(), r.method.clone())))
        .collect();
    assert!(
        missing.is_empty(),
        "routes registered in src/api but not in openapi.json: {missing:?}"
    );
    // Admin routes (handlers calling `require_admin`) are exactly the ones documented with the
    // admin key.
    for r in &registered {
        let declared = doc["paths"][&r.path][&r.method]["security"] == json!([{"adminKey": []}]);
        assert_eq!(
            declared,
            r.admin,
            "{} {}: the handler {} the admin key but openapi.json {} it",
            r.method,
            r.path,
            if r.admin {
                "requires"
            } else {
                "does not require"
            },
            if declared {
                "declares"
            } else {
                "does not declare"
            }
        );
    }
}

/// (a): every documented operation exists on a running server.
#[actix_web::test]
async fn every_documented_operation_exists() {
    let s = TestServer::start();
    let doc = document();
    for (path, method) in documented_operations(&doc) {
        let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
        let res = s
            .client
            .request(m, s.url(&concrete(&path)))
            .header("x-admin-key", ADMIN_KEY)
            .send()
            .await
            .expect("request");
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        // The fallback's message (api::not_found); `not_found` alone is also the code of
        // resources that do not exist.
        let unrouted = status == 405
            || (status == 404
                && body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("no route for")));
        assert!(
            !unrouted,
            "{method} {path} is documented but the server has no such route ({status} {body})"
        );
    }
}

/// A small JSON Schema checker for the subset the document uses. Strict on objects: a
/// property the schema does not list is an error unless `additionalProperties` allows it, so
/// a response field added without documenting it fails the test.
fn check_schema(doc: &Value, schema: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
    let schema = resolve_value(doc, schema);
    if let Some(options) = schema.get("oneOf").and_then(Value::as_array) {
        let matching = options
            .iter()
            .filter(|o| {
                let mut e = Vec::new();
                check_schema(doc, o, v, at, &mut e);
                e.is_empty()
            })
            .count();
        if matching != 1 {
            errors.push(format!("{at}: {matching} oneOf branches match {v}"));
        }
    }
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let ok = types.iter().any(|t| match *t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            _ => false,
        });
        if !ok {
            errors.push(format!("{at}: {v} is not of type {types:?}"));
            return;
        }
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        if !values.contains(v) {
            errors.push(format!("{at}: {v} is not one of {values:?}"));
        }
    }
    if let Some(n) = v.as_f64() {
        if schema["minimum"].as_f64().is_some_and(|min| n < min)
            || schema["maximum"].as_f64().is_some_and(|max| n > max)
        {
            errors.push(format!("{at}: {n} is out of range"));
        }
    }
    if let Some(obj) = v.as_object() {
        for r in schema["required"].as_array().into_iter().flatten() {
            let r = r.as_str().unwrap_or_default();
            if !obj.contains_key(r) {
                errors.push(format!("{at}: missing required {r}"));
            }
        }
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            let extra = &schema["additionalProperties"];
            for (k, val) in obj {
                match props.get(k) {
                    Some(p) => check_schema(doc, p, val, &format!("{at}.{k}"), errors),
                    None if extra.is_object() => {
                        check_schema(doc, extra, val, &format!("{at}.{k}"), errors)
                    }
                    None if extra == &json!(true) => {}
                    None => errors.push(format!("{at}: undocumented field {k}")),
                }
            }
        }
    }
    if let Some(items) = v.as_array() {
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                check_schema(doc, item_schema, item, &format!("{at}[{i}]"), errors);
            }
        }
        if schema["maxItems"]
            .as_u64()
            .is_some_and(|m| items.len() as u64 > m)
        {
            errors.push(format!("{at}: more than maxItems"));
        }
    }
}

/// A request of the response-schema scenario.
struct Step {
    method: &'static str,
    template: &'static str,
    path: String,
    body: Option<Value>,
    admin: bool,
    status: u16,
}

fn step(method: &'static str, template: &'static str, status: u16) -> Step {
    Step {
        method,
        template,
        path: template.to_string(),
        body: None,
        admin: false,
        status,
    }
}

impl Step {
    fn at(mut self, path: impl Into<String>) -> Step {
        self.path = path.into();
        self
    }
    fn body(mut self, body: Value) -> Step {
        self.body = Some(body);
        self
    }
    fn admin(mut self) -> Step {
        self.admin = true;
        self
    }
}

/// Runs a scenario through every route and checks each response against the schema the
/// document gives for its operation and status (which must be documented).
#[actix_web::test]
async fn responses_match_the_documented_schemas() {
    let s = TestServer::start();
    let doc = document();
    let item = json!({"title": "Run a 5k", "description": "Couch to 5k", "tags": ["fitness"], "type": "habit", "difficulty": 0.4});
    let experiment = json!({"id": "exp-doc", "variants": [
        {"name": "control", "weight": 50},
        {"name": "treated", "weight": 50, "hybrid_weights": {"cf": 0.3, "content": 0.7},
         "diversity": {"lambda": 0.7, "max_per_type": 3}}]});
    let events = json!([
        event("alice", "g1", "complete"), event("alice", "g2", "like"),
        event("bob", "g1", "complete"), event("bob", "g2", "like"), event("bob", "g3", "start"),
        {"event_id": "e-1", "user_id": "carol", "item_id": "g3", "kind": "rate", "value": 4, "ts": "2024-05-01T10:00:00Z"},
        {"user_id": "erin", "kind": "app_open", "ts": 1714557600000u64}
    ]);
    let steps = vec![
        step("GET", "/healthz", 200),
        step("GET", "/readyz", 200),
        step("GET", "/openapi.json", 200),
        step("GET", "/metrics", 200),
        step("PUT", "/v1/items/{id}", 201)
            .at("/v1/items/run-5k")
            .body(item.clone()),
        step("PUT", "/v1/items/{id}", 200)
            .at("/v1/items/run-5k")
            .body(json!({})),
        step("PUT", "/v1/items/{id}", 400)
            .at("/v1/items/run-5k")
            .body(json!({"difficulty": 2})),
        step("GET", "/v1/items/{id}", 200).at("/v1/items/run-5k"),
        step("GET", "/v1/items/{id}", 404).at("/v1/items/ghost"),
        step("POST", "/v1/events", 200).body(events),
        step("POST", "/v1/events", 200).body(json!([
            event("alice", "run-5k", "view"),
            {"user_id": "alice", "kind": "fly"}
        ])),
        step("POST", "/v1/events", 400).body(json!([{"user_id": "alice", "kind": "fly"}])),
        step("POST", "/v1/events", 400).body(json!({"not": "an array"})),
        step("GET", "/v1/items/{id}", 200).at("/v1/items/g1"),
        step("GET", "/v1/items/{id}/similar-items", 200).at("/v1/items/g1/similar-items"),
        step("PUT", "/v1/users/{id}", 201)
            .at("/v1/users/zoe")
            .body(json!({"preferences": {"goal": "health", "n": [1, 2]}, "signup_date": "2024-01-31", "locale": "en-GB"})),
        step("PUT", "/v1/users/{id}", 200)
            .at("/v1/users/zoe")
            .body(json!({})),
        step("GET", "/v1/users/{id}", 200).at("/v1/users/zoe"),
        step("GET", "/v1/users/{id}", 200).at("/v1/users/alice"),
        step("GET", "/v1/users/{id}", 400).at("/v1/users/bad%20id"),
        step("GET", "/v1/users/{id}", 404).at("/v1/users/ghost"),
        step("POST", "/v1/experiments", 401).body(experiment.clone()),
        step("POST", "/v1/experiments", 201)
            .body(experiment.clone())
            .admin(),
        step("POST", "/v1/experiments", 409)
            .body(experiment)
            .admin(),
        step("GET", "/v1/users/{id}/recommendations", 200)
            .at("/v1/users/alice/recommendations?n=5"),
        step("GET", "/v1/users/{id}/recommendations", 200).at("/v1/users/erin/recommendations"),
        step("GET", "/v1/users/{id}/recommendations", 400)
            .at("/v1/users/alice/recommendations?n=0"),
        step("GET", "/v1/users/{id}/similar-users", 200).at("/v1/users/alice/similar-users"),
        step("GET", "/v1/users/{id}/similar-users", 404).at("/v1/users/ghost/similar-users"),
        step("GET", "/v1/experiments", 200).admin(),
        step("GET", "/v1/experiments/{id}", 200)
            .at("/v1/experiments/exp-doc")
            .admin(),
        step("GET", "/v1/experiments/{id}/results", 200)
            .at("/v1/experiments/exp-doc/results")
            .admin(),
        step("POST", "/v1/experiments/{id}/stop", 200)
            .at("/v1/experiments/exp-doc/stop")
            .admin(),
        step("GET", "/v1/experiments/{id}", 404)
            .at("/v1/experiments/nope")
            .admin(),
        step("DELETE", "/v1/experiments/{id}", 204)
            .at("/v1/experiments/exp-doc")
            .admin(),
        step("GET", "/v1/users/{id}/features", 200).at("/v1/users/alice/features"),
        step("GET", "/v1/users/{id}/forecast", 200).at("/v1/users/alice/forecast?days=3"),
        step("GET", "/v1/users/{id}/forecast", 400).at("/v1/users/alice/forecast?days=0"),
        step("GET", "/v1/users/{id}/churn", 503).at("/v1/users/alice/churn"),
        step("GET", "/v1/users/{id}/predictions/success", 400)
            .at("/v1/users/alice/predictions/success"),
        step("GET", "/v1/models", 200),
        step("GET", "/console/api/churn/history", 200)
            .at("/console/api/churn/history?days=7")
            .admin(),
        step("GET", "/console/api/churn/history", 400)
            .at("/console/api/churn/history?days=0")
            .admin(),
        step("GET", "/v1/models/{name}/versions/{version}", 404)
            .at("/v1/models/success/versions/1"),
        step("GET", "/v1/models/{name}/latest", 503).at("/v1/models/success/latest"),
        step("GET", "/v1/models/{name}/latest", 400)
            .at("/v1/models/success/latest?variant=fp16"),
        step("GET", "/v1/models/{name}/versions/{version}/model.tflite", 404)
            .at("/v1/models/success/versions/1/model.tflite"),
        step("GET", "/v1/interventions", 200).admin(),
        step("DELETE", "/v1/items/{id}", 401).at("/v1/items/run-5k"),
        step("DELETE", "/v1/items/{id}", 204)
            .at("/v1/items/run-5k")
            .admin(),
    ];
    for st in steps {
        let method = reqwest::Method::from_bytes(st.method.as_bytes()).expect("method");
        let mut req = s.client.request(method, s.url(&st.path));
        if let Some(body) = &st.body {
            req = req.json(body);
        }
        if st.admin {
            req = req.header("x-admin-key", ADMIN_KEY);
        }
        let res = req.send().await.expect("request");
        let status = res.status().as_u16();
        let content_type = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = res.text().await.expect("body");
        let what = format!("{} {} → {status}", st.method, st.path);
        assert_eq!(status, st.status, "{what}: {text}");
        let op = &doc["paths"][st.template][st.method.to_lowercase()];
        assert!(op.is_object(), "{what}: operation not documented");
        let documented = op["responses"]
            .get(status.to_string())
            .unwrap_or_else(|| panic!("{what}: status not documented"));
        let documented = resolve_value(&doc, documented);
        let Some(content) = documented.get("content").and_then(Value::as_object) else {
            assert!(text.is_empty(), "{what}: documented without a body: {text}");
            continue;
        };
        let media = content_type.split(';').next().unwrap_or("").trim();
        let media = content
            .get(media)
            .unwrap_or_else(|| panic!("{what}: content type {content_type} not documented"));
        if content.get("application/json") != Some(media) {
            continue;
        }
        let body: Value = serde_json::from_str(&text).expect("JSON body");
        let mut errors = Vec::new();
        check_schema(&doc, &media["schema"], &body, "$", &mut errors);
        assert!(errors.is_empty(), "{what}: {errors:#?}\n{body}");
    }
}

#[test]
fn schema_checker_catches_drift() {
    let doc = document();
    let schema = json!({"$ref": "#/components/schemas/IngestReport"});
    let mut errors = Vec::new();
    check_schema(
        &doc,
        &schema,
        &json!({"accepted": 1, "duplicates": 0, "rejected": []}),
        "$",
        &mut errors,
    );
    assert!(errors.is_empty(), "{errors:?}");
    for bad in [
        json!({"accepted": 1, "duplicates": 0}),
        json!({"accepted": "1", "duplicates": 0, "rejected": []}),
        json!({"accepted": 1, "duplicates": 0, "rejected": [], "new_field": 1}),
        json!({"accepted": 1, "duplicates": 0, "rejected": [{"index": 0, "code": "x"}]}),
    ] {
        let mut errors = Vec::new();
        check_schema(&doc, &schema, &bad, "$", &mut errors);
        assert!(!errors.is_empty(), "{bad} passed");
    }
}

/// Lines of the runtime stage (after the last `FROM`) and of the whole file, with line
/// continuations joined.
fn dockerfile() -> (Vec<String>, Vec<String>) {
    let text = read("Dockerfile");
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                lines.push(std::mem::take(&mut current));
            }
        }
    }
    let last_from = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("FROM");
    (lines[last_from..].to_vec(), lines)
}

/// Sources of the `COPY` instructions (without `--from`) among `lines`, trailing `/` removed.
fn copied(lines: &[String]) -> BTreeSet<String> {
    lines
        .iter()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
        .flat_map(|l| {
            let words: Vec<&str> = l.split_whitespace().skip(1).collect();
            let n = words.len().saturating_sub(1);
            words[..n]
                .iter()
                .map(|w| w.trim_end_matches('/').trim_start_matches("./").to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn dockerfile_builds_from_what_the_code_needs_and_runs_as_non_root() {
    let (runtime, all) = dockerfile();
    let build = &all[..all.len() - runtime.len()];
    assert!(
        build.iter().any(|l| l.starts_with("FROM rust:")),
        "a Rust builder stage"
    );
    assert!(runtime[0].starts_with("FROM debian:") && runtime[0].contains("slim"));

    // The builder copies every workspace member (cargo needs all their manifests), every file
    // the code embeds at compile time, and a dependency layer comes before the sources.
    let build_copies = copied(build);
    let manifest = read("Cargo.toml");
    let members_line = manifest
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .expect("workspace members");
    let members: Vec<&str> = members_line.split('"').skip(1).step_by(2).collect();
    assert!(members.len() >= 3, "{members:?}");
    for member in &members {
        assert!(
            build_copies.contains(&format!("{member}/Cargo.toml")),
            "the dependency layer copies {member}/Cargo.toml"
        );
        assert!(
            build_copies.contains(*member) || build_copies.contains(&format!("{member}/src")),
            "the builder copies {member}'s sources"
        );
    }
    for needed in ["Cargo.toml", "Cargo.lock", "src"] {
        assert!(build_copies.contains(needed), "the builder copies {needed}");
    }
    for embedded in embedded_paths() {
        let top = embedded
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .expect("path")
            .to_string();
        assert!(
            build_copies.contains(&top) || build_copies.contains(&embedded.display().to_string()),
            "the code embeds {} but the builder does not copy it",
            embedded.display()
        );
    }
    let first_build = build
        .iter()
        .position(|l| l.starts_with("RUN") && l.contains("cargo build"))
        .expect("cargo build");
    let sources = build
        .iter()
        .position(|l| l.starts_with("COPY src"))
        .expect("COPY src");
    assert!(
        first_build < sources,
        "dependencies are built before the sources are copied"
    );

    // The runtime image: config, migrations, non-root user, health check, volumes.
    let runtime_copies = copied(&runtime);
    for needed in ["config", "migrations"] {
        assert!(
            runtime_copies.contains(needed),
            "the runtime image copies {needed}/"
        );
        assert!(root().join(needed).is_dir(), "{needed}/ exists");
    }
    assert!(
        runtime.iter().any(|l| l.starts_with("COPY --from=")),
        "the binary comes from the builder"
    );
    let user = runtime
        .iter()
        .rfind(|l| l.starts_with("USER "))
        .expect("USER");
    let user = user.trim_start_matches("USER ").trim();
    assert!(
        !["root", "0", "0:0", "root:root"].contains(&user),
        "runs as {user}"
    );
    assert!(runtime
        .iter()
        .any(|l| l.starts_with("HEALTHCHECK ") && l.contains("/healthz")));
    let volume = runtime
        .iter()
        .find(|l| l.starts_with("VOLUME "))
        .expect("VOLUME");
    for path in ["/var/lib/momentum", "/etc/momentum"] {
        assert!(volume.contains(path), "{volume}");
    }
    let env: String = runtime
        .iter()
        .filter(|l| l.starts_with("ENV "))
        .cloned()
        .collect();
    for setting in [
        "MOMENTUM__SERVER__BIND=0.0.0.0:8080",
        "MOMENTUM__STORE__PATH=/var/lib/momentum",
    ] {
        assert!(env.contains(setting), "{setting}");
    }
    assert!(runtime.iter().any(|l| l.starts_with("EXPOSE 8080")));

    // Everything copied exists and is not excluded by .dockerignore.
    let ignore = read(".dockerignore");
    let ignored: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
        .map(|l| l.trim_end_matches('/').trim_start_matches('/'))
        .collect();
    for path in build_copies.iter().chain(runtime_copies.iter()) {
        assert!(root().join(path).exists(), "COPY {path}: no such path");
        assert!(
            !ignored
                .iter()
                .any(|i| path == i || path.starts_with(&format!("{i}/"))),
            ".dockerignore excludes {path}"
        );
    }
    assert!(
        ignored.contains(&"target"),
        ".dockerignore keeps target/ out"
    );
}

/// Paths (relative to the repository root) that Rust sources of the server embed at compile
/// time: `include_str!`, `include_bytes!`, `embed_migrations!`.
fn embedded_paths() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root().join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("source");
            for (macro_name, relative_to_manifest) in [
                ("include_str!(\"", false),
                ("include_bytes!(\"", false),
                ("embed_migrations!(\"", true),
            ] {
                for (i, _) in text.match_indices(macro_name) {
                    let arg = &text[i + macro_name.len()..];
                    let arg = &arg[..arg.find('"').expect("quote")];
                    let full = if relative_to_manifest {
                        root().join(arg)
                    } else {
                        path.parent().expect("parent").join(arg)
                    };
                    let full = normalise(&full);
                    let rel = full
                        .strip_prefix(root())
                        .unwrap_or_else(|_| panic!("{} outside the repository", full.display()))
                        .to_path_buf();
                    out.push(rel);
                }
            }
        }
    }
    assert!(
        out.iter().any(|p| p == Path::new("config/default.toml")),
        "{out:?}"
    );
    out
}

fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Metric names (without `_bucket`/`_count`/`_sum`) used in PromQL text.
fn metric_names(promql: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = promql;
    while let Some(i) = rest.find("momentum_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(base.to_string());
        rest = &tail[end..];
    }
    names
}

/// Every metric name defined in the Rust sources (string literals `"momentum_…"`).
fn defined_metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut dirs: Vec<PathBuf> = ["src", "actors/src", "models/src"]
        .iter()
        .map(|d| root().join(d))
        .collect();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("source");
                for (i, _) in text.match_indices("\"momentum_") {
                    let lit = &text[i + 1..];
                    let end = lit.find('"').unwrap_or(0);
                    names.insert(lit[..end].to_string());
                }
            }
        }
    }
    names
}

#[test]
fn alerts_and_dashboard_use_metrics_that_exist() {
    let defined = defined_metrics();
    assert!(defined.contains("momentum_http_request_duration_seconds"));
    let known = |name: &str| defined.contains(name);

    let alerts = read("config/alerts.yml");
    let used = metric_names(&alerts);
    assert!(used.len() >= 7, "{used:?}");
    for name in &used {
        assert!(known(name), "config/alerts.yml uses unknown metric {name}");
    }
    for alert in [
        "MomentumInferenceLatencyHigh",
        "MomentumPredictionLatencyHigh",
        "MomentumErrorRateHigh",
        "MomentumPredictionAccuracyDrop",
        "MomentumRecommendationCacheHitRateLow",
        "MomentumMailboxSaturated",
        "MomentumSnapshotLagging",
        "MomentumClusterLagHigh",
        "MomentumClusterPartitionsUnready",
    ] {
        assert!(alerts.contains(&format!("alert: {alert}")), "{alert}");
        assert!(
            read("config/alerts_test.yml").contains(&format!("alertname: {alert}")),
            "{alert} has a promtool unit test"
        );
    }

    let dashboard: Value =
        serde_json::from_str(&read("config/grafana-dashboard.json")).expect("dashboard JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    for panel in panels {
        assert!(ids.insert(panel["id"].as_u64().expect("panel id")));
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().expect("expr").to_string());
        }
    }
    assert!(exprs.len() >= 8, "{exprs:?}");
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{expr}");
        for name in names {
            assert!(known(&name), "dashboard uses unknown metric {name}");
        }
    }
}

/// Starts the real binary with an admin key and a database URL, drives requests with right and
/// wrong keys, stops it with SIGTERM, and checks that no secret appears in what it printed.
#[test]
fn secrets_never_reach_the_logs() {
    const KEY: &str = "sEcReT-admin-key-7f3a9c";
    const NEAR_MISS: &str = "sEcReT-admin-key-7f3a9d";
    const DB_PASSWORD: &str = "db-pw-91c2e5";
    const MODEL_KEY: &str = "6d6f64656c2d6b65792d736563726574216d6f64656c2d6b65792d7365637265";
    const DEVICE_KEY: &str = "646576696365206b6579202d20736563726574202d20646576696365206b6579";
    for format in ["plain", "json"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(env!("CARGO_BIN_EXE_momentum"))
            .current_dir(dir.path())
            .env_remove("RUST_LOG")
            .env("MOMENTUM__SECURITY__ADMIN_KEY", KEY)
            .env("MOMENTUM__SECURITY__MODEL_KEY", MODEL_KEY)
            .env("MOMENTUM__SECURITY__DEVICE_KEY", DEVICE_KEY)
            .env("MOMENTUM__SERVER__BIND", "127.0.0.1:0")
            .env("MOMENTUM__SERVER__WORKERS", "1")
            .env("MOMENTUM__ACTORS__THREADS", "1")
            .env("MOMENTUM__LOGGING__LEVEL", "debug")
            .env("MOMENTUM__LOGGING__FORMAT", format)
            .env(
                "DATABASE_URL",
                format!("postgres://momentum:{DB_PASSWORD}@127.0.0.1:1/momentum"),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn momentum");
        let mut stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let err_reader = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening") {
                    if let Some(i) = line.find("127.0.0.1:") {
                        let port: String = line[i + 10..]
                            .chars()
                            .take_while(char::is_ascii_digit)
                            .collect();
                        addr_tx.send(format!("127.0.0.1:{port}")).ok();
                    }
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        let out_reader = std::thread::spawn(move || {
            let mut all = String::new();
            stdout.read_to_string(&mut all).ok();
            all
        });
        let Ok(addr) = addr_rx.recv_timeout(Duration::from_secs(60)) else {
            child.kill().ok();
            panic!(
                "no listening line; stderr:\n{}",
                err_reader.join().unwrap_or_default()
            );
        };
        drive_with_keys(&addr, KEY, NEAR_MISS);
        // Graceful stop, so shutdown logging is captured too.
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let exit = child.wait().expect("wait");
        let logs = format!(
            "{}{}",
            err_reader.join().expect("stderr"),
            out_reader.join().expect("stdout")
        );
        assert!(exit.success(), "{format}: exit {exit:?}\n{logs}");
        assert!(logs.contains("listening"), "{logs}");
        // SIGTERM drains, flushes and writes the final snapshot before the actors stop.
        assert!(logs.contains("final snapshot written"), "{logs}");
        assert!(!logs.contains("final snapshot failed"), "{logs}");
        assert!(
            logs.lines().count() >= 3,
            "debug logging is captured: {logs}"
        );
        for secret in [KEY, NEAR_MISS, DB_PASSWORD, MODEL_KEY, DEVICE_KEY] {
            assert!(
                !logs.contains(secret),
                "{format} logs contain the secret {secret}:\n{logs}"
            );
        }
    }
}

/// Admin requests with the right key, a near miss and no key, some of them failing.
fn drive_with_keys(addr: &str, key: &str, near_miss: &str) {
    actix_web::rt::System::new().block_on(async {
        let client = reqwest::Client::new();
        let url = |p: &str| format!("http://{addr}{p}");
        // The data API answers once the start-up restore is done.
        for _ in 0..1000 {
            let ready = client.get(url("/readyz")).send().await;
            if ready.is_ok_and(|r| r.status().as_u16() == 200) {
                break;
            }
            actix_web::rt::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let experiment = json!({"id": "exp-secret", "variants": [{"name": "a", "weight": 1}]});
        let mut statuses = BTreeMap::new();
        for (label, k) in [
            ("right", Some(key)),
            ("wrong", Some(near_miss)),
            ("none", None),
        ] {
            let mut requests = vec![
                client.post(url("/v1/experiments")).json(&experiment),
                client.get(url("/v1/experiments/exp-secret/results")),
                client.delete(url("/v1/items/ghost")),
                client.get(url("/v1/experiments/bad%20id")),
                // Reaches the trainer (which holds the model key); no events: 409.
                client.post(url("/v1/models/train?wait=true")),
            ];
            for req in requests.drain(..) {
                let req = match k {
                    Some(k) => req.header("x-admin-key", k),
                    None => req,
                };
                let res = req.send().await.expect("request");
                statuses
                    .entry(label)
                    .or_insert_with(Vec::new)
                    .push(res.status().as_u16());
            }
        }
        assert_eq!(statuses["right"], vec![201, 200, 404, 400, 409]);
        assert_eq!(statuses["wrong"], vec![401, 401, 401, 401, 401]);
        assert_eq!(statuses["none"], vec![401, 401, 401, 401, 401]);
    });
}
