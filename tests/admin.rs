//! The admin API against a real router: real TLS, real HTTP requests, real
//! tokens signed with the development admin key from `certs::init`.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use common::*;
use exocom::admin::auth::{TokenRequest, issue};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response: status, body.
struct Reply {
    status: u16,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

async fn start(configure: Option<Configure>) -> TestBus {
    TestBus::start_with(BusOptions { admin: true, configure, ..Default::default() }).await
}

/// One HTTPS GET, trusting only the test CA.
async fn get(bus: &TestBus, path: &str, token: Option<&str>) -> Reply {
    let addr: SocketAddr = bus.admin_addr.expect("admin API on");
    let pem = std::fs::read(bus.certs().join("ca.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in <rustls_pki_types::CertificateDer as rustls_pki_types::pem::PemObject>::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut raw)).await.unwrap().unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Reply { status, body: body.to_string() }
}

fn admin_key(bus: &TestBus) -> Vec<u8> {
    std::fs::read(bus.certs().join("admin").join("key.pem")).unwrap()
}

fn token(bus: &TestBus, scopes: &[&str]) -> String {
    let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
    let req = TokenRequest {
        sub: "security-reviewer",
        scopes: &scopes,
        ttl: Duration::from_secs(600),
        iss: "exocom",
    };
    issue(&admin_key(bus), &req).unwrap()
}

/// A token with arbitrary claims, signed with the real admin key.
fn signed(bus: &TestBus, claims: Value) -> String {
    exocom::admin::jwt_ring::install();
    let key = jsonwebtoken::EncodingKey::from_ed_pem(&admin_key(bus)).unwrap();
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA), &claims, &key).unwrap()
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn claims() -> Value {
    json!({
        "iss": "exocom", "sub": "security-reviewer", "aud": "exocom-admin",
        "iat": now(), "exp": now() + 600, "jti": "test-token", "scope": "clients:read"
    })
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

fn assert_refused(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.json()["error"], code, "{}", r.body);
    assert!(!r.json()["message"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn no_token_is_401() {
    let bus = start(None).await;
    let r = get(&bus, "/clients", None).await;
    assert_refused(&r, 401, "missing_token");
    assert!(r.json()["message"].as_str().unwrap().contains("Bearer"));
}

#[tokio::test]
async fn an_hs256_token_is_401() {
    let bus = start(None).await;
    // Signed with HMAC, using the public key as the secret: the classic
    // algorithm-confusion attack. It must never reach a verifier.
    let secret = std::fs::read(bus.certs().join("admin").join("pub.pem")).unwrap();
    let input = format!("{}.{}", b64(r#"{"alg":"HS256","typ":"JWT"}"#), b64(&claims().to_string()));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
    let sig = ring::hmac::sign(&key, input.as_bytes());
    let token = format!("{input}.{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig.as_ref()));
    let r = get(&bus, "/clients", Some(&token)).await;
    assert_refused(&r, 401, "bad_algorithm");
    assert!(r.body.contains("HS256"), "{}", r.body);
}

#[tokio::test]
async fn an_alg_none_token_is_401() {
    let bus = start(None).await;
    let token = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(&claims().to_string()));
    assert_refused(&get(&bus, "/clients", Some(&token)).await, 401, "bad_algorithm");
}

#[tokio::test]
async fn a_wrong_audience_is_401() {
    let bus = start(None).await;
    let mut c = claims();
    c["aud"] = "some-other-api".into();
    assert_refused(&get(&bus, "/clients", Some(&signed(&bus, c))).await, 401, "bad_audience");
}

#[tokio::test]
async fn an_expired_token_is_401() {
    let bus = start(None).await;
    let mut c = claims();
    c["iat"] = (now() - 900).into();
    c["exp"] = (now() - 120).into();
    assert_refused(&get(&bus, "/clients", Some(&signed(&bus, c))).await, 401, "expired");
}

#[tokio::test]
async fn a_too_long_lifetime_is_401() {
    let bus = start(None).await;
    let mut c = claims();
    c["exp"] = (now() + 3600).into();
    assert_refused(&get(&bus, "/clients", Some(&signed(&bus, c))).await, 401, "lifetime_too_long");
}

#[tokio::test]
async fn a_missing_scope_is_403_and_audited() {
    let bus = start(None).await;
    let t = token(&bus, &["audit:read"]);
    let r = get(&bus, "/routes", Some(&t)).await;
    assert_refused(&r, 403, "missing_scope");
    assert!(r.body.contains("routes:read"), "{}", r.body);
    let line = bus.wait_audit(|v| v["event"] == "admin_call" && v["decision"] == "deny").await;
    assert_eq!(line["identity"], "security-reviewer");
}

#[tokio::test]
async fn clients_shows_a_connected_relay_and_the_call_is_audited_with_sub_and_jti() {
    let bus = start(None).await;
    let _todo = bus
        .builder("todo")
        .handle("todos.list", [1, 2], |_m, r| async move { r.reply("todos.listing", &json!([])).await })
        .connect()
        .await
        .unwrap();
    let t = token(&bus, &["clients:read"]);
    let jti = jsonwebtoken::dangerous::insecure_decode::<Value>(&t).unwrap().claims["jti"]
        .as_str()
        .unwrap()
        .to_string();
    // The subscription reaches the core shortly after connect.
    let mut body = Value::Null;
    for _ in 0..50 {
        let r = get(&bus, "/clients", Some(&t)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        body = r.json();
        if body["services"][0]["instances"][0]["subscriptions"].as_array().is_some_and(|s| !s.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let svc = &body["services"][0];
    assert_eq!(svc["service"], "todo", "{body}");
    let inst = &svc["instances"][0];
    assert_eq!(inst["identity"], "spiffe://example.org/svc/todo");
    assert!(inst["remote"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(inst["connected_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(inst["subscriptions"][0]["name"], "todos.list");
    assert_eq!(inst["subscriptions"][0]["versions"], json!([1, 2]));

    let line = bus.wait_audit(|v| v["event"] == "admin_call" && v["decision"] == "allow").await;
    assert_eq!(line["identity"], "security-reviewer");
    assert_eq!(line["id"], jti.as_str(), "the jti (a UUID) is the record's id");
    let reason = line["reason"].as_str().unwrap();
    assert!(reason.starts_with("GET /clients 200"), "{reason}");
    assert!(reason.contains(&format!("jti={jti}")), "{reason}");
    assert!(!std::fs::read_to_string(&bus.audit_path).unwrap().contains(&t), "the token is never logged");
}

#[tokio::test]
async fn metrics_count_a_routed_message_and_routes_queues_policy_answer() {
    let bus = start(None).await;
    let _todo = bus
        .builder("todo")
        .handle("todos.list", [1], |_m, r| async move { r.reply("todos.listing", &json!([])).await })
        .connect()
        .await
        .unwrap();
    let web = bus.relay("web").await;
    web.request_one("todos.list", &json!({})).await.unwrap();
    let _ = web.send("payments.refund", &json!({})).await.unwrap_err();

    let t = token(&bus, &["metrics:read", "routes:read", "policy:explain"]);
    let m = get(&bus, "/metrics", Some(&t)).await;
    assert_eq!(m.status, 200, "{}", m.body);
    assert!(
        m.body.contains(r#"exocom_messages_routed_total{name="todos.list",service="todo"} 1"#),
        "{}",
        m.body
    );
    assert!(m.body.contains(r#"exocom_deliveries_total{service="todo"}"#), "{}", m.body);
    assert!(m.body.contains(r#"name="payments.refund",service="web",reason="policy""#), "{}", m.body);
    assert!(m.body.contains(r#"exocom_connected_instances{service="todo"} 1"#), "{}", m.body);
    assert!(m.body.contains("exocom_routing_latency_seconds_count 1"), "{}", m.body);
    assert!(m.body.contains("exocom_audit_available 1"), "{}", m.body);
    assert!(m.body.contains("exocom_buffer_pool_bytes "), "{}", m.body);
    assert!(m.body.trim_end().ends_with("# EOF"));
    assert_eq!(get(&bus, "/metrics", None).await.status, 401, "metrics need a token by default");

    let routes = get(&bus, "/routes", Some(&t)).await.json();
    let list = routes["routes"].as_array().unwrap();
    let r = list.iter().find(|r| r["name"] == "todos.list").unwrap();
    assert_eq!(r["delivering"], json!(["todo"]));
    let queues = get(&bus, "/queues", Some(&t)).await.json();
    assert!(queues["queues"].as_array().unwrap().iter().any(|q| q["service"] == "todo" && q["depth"] == 0));
    let p = get(&bus, "/policy", Some(&t)).await.json();
    assert!(p["loaded_at"].as_str().unwrap().ends_with('Z'), "{p}");
    let e = get(&bus, "/policy/explain?sender=web&name=user.created&version=1", Some(&t)).await.json();
    assert_eq!(e["send"]["allowed"], true, "{e}");
    let mut receivers: Vec<&str> =
        e["receivers"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    receivers.sort();
    assert_eq!(receivers, ["mailer", "todo"], "{e}");
    assert!(e["send"]["rule"].as_str().unwrap().contains("policy.toml:"), "{e}");
    let denied = get(&bus, "/policy/explain?sender=web&name=payments.refund", Some(&t)).await.json();
    assert_eq!(denied["send"]["allowed"], false);
    assert_eq!(get(&bus, "/policy/explain?sender=web", Some(&t)).await.status, 400);
    let unknown = get(&bus, "/policy/explain?sender=wbe&name=todos.list", Some(&t)).await;
    assert_eq!(unknown.status, 400);
    assert!(unknown.body.contains("did you mean"), "{}", unknown.body);
    assert_eq!(p["sha256"].as_str().unwrap().len(), 64, "{p}");
}

#[tokio::test]
async fn health_and_readiness_need_no_token() {
    let bus = start(None).await;
    let h = get(&bus, "/healthz", None).await;
    assert_eq!(h.status, 200);
    let r = get(&bus, "/readyz", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    assert_eq!(body["ready"], true);
    assert_eq!(body["checks"]["audit_writable"], true);
    assert_eq!(get(&bus, "/nope", None).await.status, 404);
}

#[tokio::test]
async fn repeated_denials_raise_an_alert() {
    let bus = start(Some(Box::new(|cfg: &mut exocom::router::RouterConfig| {
        cfg.alerts.denials_per_minute = 3;
    })))
    .await;
    let intruder = bus.relay("intruder").await;
    for _ in 0..4 {
        let _ = intruder.send("todos.list", &json!({})).await.unwrap_err();
    }
    let line = bus.wait_audit(|v| v["event"] == "alert").await;
    assert_eq!(line["identity"], "intruder");
    assert!(line["reason"].as_str().unwrap().contains("3 denials"), "{line}");
    let alerts = bus.audit().into_iter().filter(|v| v["event"] == "alert").count();
    assert_eq!(alerts, 1, "one alert per identity per minute");
    let t = token(&bus, &["metrics:read"]);
    let m = get(&bus, "/metrics", Some(&t)).await;
    assert!(m.body.contains(r#"exocom_alerts_total{kind="denials"} 1"#), "{}", m.body);
}
