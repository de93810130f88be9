//! The policy file: who may send and receive which message names.
//! (Temporary shim with the agreed API; replaced by the policy work.)
#![allow(missing_docs)]

use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(String);

#[derive(Clone, Debug)]
pub struct Decision {
    pub allowed: bool,
    pub rule: Arc<str>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Limits {
    pub max_size: Option<u64>,
}

#[derive(Debug, serde::Deserialize)]
struct File {
    services: std::collections::BTreeMap<String, Svc>,
}
#[derive(Debug, serde::Deserialize)]
struct Svc {
    id: String,
    #[serde(default)]
    send: Vec<String>,
    #[serde(default)]
    receive: Vec<String>,
}

#[derive(Debug)]
pub struct Policy {
    file: File,
}

fn matches(p: &str, name: &str) -> bool {
    let mut pt = p.split('.');
    let mut nt = name.split('.');
    loop {
        match (pt.next(), nt.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

impl Policy {
    pub fn from_file(path: &Path) -> Result<Policy, PolicyError> {
        let s = std::fs::read_to_string(path).map_err(|e| PolicyError(e.to_string()))?;
        Self::parse(&s, &path.display().to_string())
    }
    pub fn parse(source: &str, _file: &str) -> Result<Policy, PolicyError> {
        Ok(Policy { file: toml::from_str(source).map_err(|e| PolicyError(e.to_string()))? })
    }
    pub fn sha256_hex(&self) -> &str {
        ""
    }
    pub fn serial(&self) -> u64 {
        0
    }
    pub fn service_for_identity(&self, uri: &str) -> Option<&str> {
        self.file.services.iter().find(|(_, s)| s.id == uri).map(|(n, _)| n.as_str())
    }
    pub fn check_send(&self, service: &str, name: &str, _v: u32) -> Decision {
        let ok = self.file.services.get(service).is_some_and(|s| s.send.iter().any(|p| matches(p, name)));
        Decision { allowed: ok, rule: Arc::from(if ok { "send rule" } else { "default deny" }) }
    }
    pub fn check_receive(&self, service: &str, name: &str, _v: u32) -> Decision {
        let ok = self.file.services.get(service).is_some_and(|s| s.receive.iter().any(|p| matches(p, name)));
        Decision { allowed: ok, rule: Arc::from(if ok { "receive rule" } else { "default deny" }) }
    }
    pub fn receivers(&self, name: &str, version: u32) -> Arc<[Arc<str>]> {
        self.file
            .services
            .keys()
            .filter(|s| self.check_receive(s, name, version).allowed)
            .map(|s| Arc::from(s.as_str()))
            .collect()
    }
    pub fn limits(&self, _service: &str, _name: &str) -> Limits {
        Limits::default()
    }
}
