//! The admin API's routes: which scope each needs, what each returns, and
//! the `admin_call` audit record every authenticated call leaves.
//!
//! All routes are read-only GETs. Health (`/healthz`, `/readyz`) needs no
//! token; `/metrics` needs `metrics:read` unless the operator chose to
//! serve it openly; everything else needs the scope in [`ROUTES`]. Nothing
//! here returns a payload, a key or a token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::AdminState;
use super::auth::{AuthError, Principal, scope};
use super::http::{Request, Response};
use crate::audit::{Decision, Event, Record};
use crate::router::core::Command;
use crate::router::introspect::Snapshot;

/// How long the routing core may take to answer an introspection request.
const CORE_TIMEOUT: Duration = Duration::from_secs(2);

/// Every route and the scope it needs (`None`: no token).
pub const ROUTES: &[(&str, Option<&str>)] = &[
    ("/healthz", None),
    ("/readyz", None),
    ("/metrics", Some(scope::METRICS_READ)),
    ("/clients", Some(scope::CLIENTS_READ)),
    ("/routes", Some(scope::ROUTES_READ)),
    ("/queues", Some(scope::ROUTES_READ)),
    ("/policy", Some(scope::POLICY_EXPLAIN)),
    ("/policy/explain", Some(scope::POLICY_EXPLAIN)),
    ("/audit/status", Some(scope::AUDIT_READ)),
];

/// Answers one request.
pub(crate) async fn handle(req: &Request, state: &AdminState, remote: SocketAddr) -> Response {
    let Some(&(path, needed)) = ROUTES.iter().find(|(p, _)| *p == req.path) else {
        return Response::error(404, "not_found", "no such route; see docs/OPERATIONS.md for the admin API");
    };
    if req.method != "GET" {
        let mut r = Response::error(405, "method_not_allowed", "only GET is served");
        r.headers.push(("allow", "GET".into()));
        return r;
    }
    let needed = match needed {
        Some(scope::METRICS_READ) if state.metrics_public => None,
        other => other,
    };
    let Some(needed) = needed else {
        return match path {
            "/healthz" => Response::json(200, &json!({"status": "ok"})),
            "/readyz" => readyz(state).await,
            _ => metrics(state).await,
        };
    };
    let principal = match state.verifier.authorize(req.authorization.as_deref(), needed) {
        Ok(p) => p,
        Err(err) => {
            // Refusals are audited too: a stream of them is something to look at.
            let claimed = state.verifier.verify(req.authorization.as_deref()).ok();
            let _ = audit_call(state, remote, req, claimed.as_ref(), err.status(), Some(&err));
            return refuse(&err);
        }
    };
    if audit_call(state, remote, req, Some(&principal), 200, None).is_err() {
        return Response::error(
            503,
            "audit_unavailable",
            "the audit log cannot record admin calls; refusing",
        );
    }
    match path {
        "/metrics" => metrics(state).await,
        "/clients" => with_snapshot(state, clients).await,
        "/routes" => {
            with_snapshot(state, |s| json!({ "taken_at_ms": s.taken_at_ms, "routes": s.routes })).await
        }
        "/queues" => with_snapshot(state, queues).await,
        "/policy" => policy(state),
        "/policy/explain" => explain(state, req),
        _ => audit_status(state),
    }
}

fn refuse(err: &AuthError) -> Response {
    let mut r = Response::error(err.status(), err.code(), &err.to_string());
    if err.status() == 401 {
        r.headers
            .push(("www-authenticate", "Bearer realm=\"exocom-admin\", error=\"invalid_token\"".to_string()));
    } else {
        r.headers
            .push(("www-authenticate", "Bearer realm=\"exocom-admin\", error=\"insufficient_scope\"".into()));
    }
    r
}

/// Writes the `admin_call` record: who (`sub` as identity), which token
/// (`jti`: in `id` when it is a UUID, always in `reason`), what and the outcome.
fn audit_call(
    state: &AdminState,
    remote: SocketAddr,
    req: &Request,
    who: Option<&Principal>,
    status: u16,
    err: Option<&AuthError>,
) -> Result<(), crate::audit::AuditError> {
    let mut r = Record::new(Event::AdminCall);
    r.remote = Some(remote);
    r.identity = who.map(|p| Arc::from(p.sub.as_str()));
    r.id = who.and_then(|p| p.jti.as_deref()).and_then(|j| Uuid::parse_str(j).ok());
    r.decision = Some(if status < 400 { Decision::Allow } else { Decision::Deny });
    let mut reason = format!("{} {} {status}", req.method, req.path);
    if let Some(e) = err {
        reason.push(' ');
        reason.push_str(e.code());
    }
    if let Some(j) = who.and_then(|p| p.jti.as_deref()) {
        reason.push_str(" jti=");
        reason.push_str(j);
    }
    r.reason = Some(Arc::from(reason));
    state.audit.note(r)
}

async fn snapshot(state: &AdminState) -> Option<Snapshot> {
    let (tx, rx) = oneshot::channel();
    state.core.send_timeout(Command::Introspect(tx), CORE_TIMEOUT).await.ok()?;
    tokio::time::timeout(CORE_TIMEOUT, rx).await.ok()?.ok()
}

async fn with_snapshot(state: &AdminState, f: impl FnOnce(Snapshot) -> serde_json::Value) -> Response {
    match snapshot(state).await {
        Some(s) => Response::json(200, &f(s)),
        None => Response::error(503, "core_unavailable", "the routing core did not answer"),
    }
}

fn clients(s: Snapshot) -> serde_json::Value {
    let services: Vec<_> = s
        .services
        .into_iter()
        .filter(|svc| !svc.instances.is_empty())
        .map(|svc| {
            let instances: Vec<_> = svc
                .instances
                .into_iter()
                .map(|i| {
                    json!({
                        "instance": i.instance,
                        "identity": i.identity,
                        "remote": i.remote,
                        "connected_at": rfc3339(i.connected_at_ms),
                        "connected_at_ms": i.connected_at_ms,
                        "subscriptions": i.subscriptions,
                        "prefetch": i.prefetch,
                        "in_flight": i.in_flight,
                    })
                })
                .collect();
            json!({ "service": svc.service, "instances": instances })
        })
        .collect();
    json!({ "taken_at_ms": s.taken_at_ms, "services": services })
}

fn queues(s: Snapshot) -> serde_json::Value {
    let queues: Vec<_> = s
        .services
        .into_iter()
        .map(|svc| {
            json!({
                "service": svc.service,
                "depth": svc.queue_depth,
                "bytes": svc.queue_bytes,
                "oldest_age_ms": svc.oldest_queued_age_ms,
                "in_flight": svc.in_flight,
                "instances": svc.instances.len(),
            })
        })
        .collect();
    json!({ "taken_at_ms": s.taken_at_ms, "queues": queues })
}

fn policy(state: &AdminState) -> Response {
    let p = state.policy.load();
    let loaded = state.policy_loaded_at_ms();
    Response::json(
        200,
        &json!({
            "sha256": p.sha256_hex(),
            "serial": p.serial(),
            "loaded_at": rfc3339(loaded),
            "loaded_at_ms": loaded,
        }),
    )
}

fn explain(state: &AdminState, req: &Request) -> Response {
    let (Some(sender), Some(name)) = (req.param("sender"), req.param("name")) else {
        return Response::error(400, "bad_request", "give ?sender=SERVICE&name=NAME[&version=N]");
    };
    let version = match req.param("version").map(str::parse::<u32>) {
        None => 1,
        Some(Ok(v)) if v >= 1 => v,
        Some(_) => return Response::error(400, "bad_request", "version must be a whole number ≥ 1"),
    };
    let p = state.policy.load();
    let e = match crate::policy::explain::explain(&p, sender, name, version, None) {
        Ok(e) => e,
        Err(err) => return Response::error(400, "bad_request", &err.to_string()),
    };
    let deliveries: Vec<_> = e
        .deliveries
        .iter()
        .map(|d| json!({ "service": &*d.service, "allowed": d.decision.allowed, "rule": &*d.decision.rule }))
        .collect();
    Response::json(
        200,
        &json!({
            "sender": e.sender, "name": e.name, "version": e.version,
            "send": { "allowed": e.send.allowed, "rule": &*e.send.rule },
            "receivers": e.receivers(),
            "deliveries": deliveries,
            "policy_sha256": p.sha256_hex(),
            "policy_serial": p.serial(),
        }),
    )
}

fn audit_status(state: &AdminState) -> Response {
    let s = state.audit.stats();
    Response::json(
        200,
        &json!({
            "available": state.audit.is_available(),
            "pending_records": state.audit.pending(),
            "records_written": s.records,
            "lines_written": s.lines,
            "bytes_written": s.bytes,
            "fsyncs": s.fsyncs,
            "failed_batches": s.failed_batches,
            "rotations": s.rotations,
        }),
    )
}

async fn readyz(state: &AdminState) -> Response {
    let audit = state.audit.is_available();
    // The core answers only after the store's contents were loaded at start.
    let core = snapshot(state).await.is_some();
    let policy = state.policy.load();
    let ready = audit && core;
    Response::json(
        if ready { 200 } else { 503 },
        &json!({
            "ready": ready,
            "checks": {
                "policy_loaded": true,
                "policy_serial": policy.serial(),
                "audit_writable": audit,
                "store_open_and_core_running": core,
            }
        }),
    )
}

async fn metrics(state: &AdminState) -> Response {
    let Some(snap) = snapshot(state).await else {
        return Response::error(503, "core_unavailable", "the routing core did not answer");
    };
    match state.metrics.encode(&snap, &state.audit) {
        Ok(body) => Response {
            status: 200,
            content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
            headers: Vec::new(),
            body,
        },
        Err(_) => Response::error(500, "encode_failed", "metrics could not be encoded"),
    }
}

/// RFC 3339 UTC for Unix ms (empty when out of range).
fn rfc3339(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}
