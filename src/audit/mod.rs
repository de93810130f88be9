//! The audit log. (Temporary shim with the agreed API; replaced by the audit work.)
#![allow(missing_docs)]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log unavailable")]
    Unavailable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Connect,
    Disconnect,
    HandshakeFailed,
    Send,
    Deliver,
    Ack,
    Reply,
    Deny,
    Redeliver,
    Expire,
    DeadLetter,
    Drop,
    PolicyLoaded,
    PolicyRejected,
    KeyAnnounced,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
}

#[derive(Clone, Debug)]
pub struct Record {
    pub event: Event,
    pub id: Option<uuid::Uuid>,
    pub name: Option<Arc<str>>,
    pub version: Option<u32>,
    pub origin_id: Option<uuid::Uuid>,
    pub response_to: Option<uuid::Uuid>,
    pub sender: Option<Arc<str>>,
    pub sender_instance: Option<Arc<str>>,
    pub receiver: Option<Arc<str>>,
    pub receiver_instance: Option<Arc<str>>,
    pub decision: Option<Decision>,
    pub rule: Option<Arc<str>>,
    pub bytes: Option<u64>,
    pub remote: Option<SocketAddr>,
    pub reason: Option<Arc<str>>,
}

impl Record {
    pub fn new(event: Event) -> Self {
        Record {
            event,
            id: None,
            name: None,
            version: None,
            origin_id: None,
            response_to: None,
            sender: None,
            sender_instance: None,
            receiver: None,
            receiver_instance: None,
            decision: None,
            rule: None,
            bytes: None,
            remote: None,
            reason: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct AuditHandle;

pub struct Ticket;

impl Future for Ticket {
    type Output = Result<(), AuditError>;
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(()))
    }
}

impl AuditHandle {
    pub fn disabled() -> Self {
        AuditHandle
    }
    pub fn record(&self, _rec: Record) -> Result<Ticket, AuditError> {
        Ok(Ticket)
    }
    pub fn is_available(&self) -> bool {
        true
    }
}
