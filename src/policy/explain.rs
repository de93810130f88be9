//! `explain`: the decision for one send and for every possible delivery,
//! each with the rule that made it, for people reviewing a policy.
//!
//! Pure: it asks the [`Policy`] the same questions the router asks, so what
//! it prints is what the router enforces. It never prints itself.

use std::fmt;
use std::sync::Arc;

use crate::policy::diagnostic::did_you_mean;
use crate::policy::pattern::{PatternError, check_name};
use crate::policy::{Decision, Policy};

/// Why an explanation could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The sender or receiver is not in the policy.
    #[error("unknown service \"{name}\"{}", suggestion.as_ref().map_or(String::new(), |s| format!(" (did you mean \"{s}\"?)")))]
    UnknownService {
        /// The name given.
        name: String,
        /// The closest service name, if any is close.
        suggestion: Option<String>,
    },
    /// The message name is not a valid name.
    #[error("invalid message name: {0} ({hint})", hint = .0.hint)]
    InvalidName(#[from] PatternError),
}

/// One service's receive decision.
#[derive(Clone, Debug)]
pub struct ReceiveVerdict {
    /// The service.
    pub service: Arc<str>,
    /// Whether it may receive the message, and why.
    pub decision: Decision,
}

/// The answer to "what happens when `sender` sends `name`@`version`?".
#[derive(Clone, Debug)]
pub struct Explanation {
    /// The sending service.
    pub sender: String,
    /// The message name.
    pub name: String,
    /// The message version.
    pub version: u32,
    /// The send decision.
    pub send: Decision,
    /// Each service's receive decision (one service with `--receiver`).
    pub deliveries: Vec<ReceiveVerdict>,
}

impl Explanation {
    /// The services that would get a copy (none when the send is denied).
    pub fn receivers(&self) -> Vec<&str> {
        if !self.send.allowed {
            return Vec::new();
        }
        self.deliveries.iter().filter(|d| d.decision.allowed).map(|d| &*d.service).collect()
    }
}

/// Explains a send by `sender` of `name`@`version`, and its delivery to
/// `receiver` (or to every service when `None`).
pub fn explain(
    policy: &Policy,
    sender: &str,
    name: &str,
    version: u32,
    receiver: Option<&str>,
) -> Result<Explanation, ExplainError> {
    check_name(name)?;
    known(policy, sender)?;
    let deliveries = match receiver {
        Some(r) => {
            known(policy, r)?;
            vec![ReceiveVerdict { service: Arc::from(r), decision: policy.check_receive(r, name, version) }]
        }
        None => policy
            .services()
            .map(|s| ReceiveVerdict {
                service: s.name.clone(),
                decision: policy.check_receive(&s.name, name, version),
            })
            .collect(),
    };
    Ok(Explanation {
        sender: sender.to_string(),
        name: name.to_string(),
        version,
        send: policy.check_send(sender, name, version),
        deliveries,
    })
}

fn known(policy: &Policy, service: &str) -> Result<(), ExplainError> {
    if policy.service(service).is_some() {
        return Ok(());
    }
    Err(ExplainError::UnknownService {
        name: service.to_string(),
        suggestion: did_you_mean(service, policy.services().map(|s| &*s.name)).map(str::to_string),
    })
}

fn verdict(d: &Decision) -> &'static str {
    if d.allowed { "ALLOW" } else { "DENY " }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "send    {}@{} from {}: {} by {}",
            self.name,
            self.version,
            self.sender,
            verdict(&self.send),
            self.send.rule
        )?;
        let width = self.deliveries.iter().map(|d| d.service.len()).max().unwrap_or(0);
        for d in &self.deliveries {
            writeln!(
                f,
                "receive {:width$}: {} by {}",
                d.service,
                verdict(&d.decision),
                d.decision.rule,
                width = width
            )?;
        }
        let receivers = self.receivers();
        if !self.send.allowed {
            write!(f, "receivers: none (the send is denied)")
        } else if receivers.is_empty() {
            write!(f, "receivers: none (no service may receive it)")
        } else {
            write!(f, "receivers: {}", receivers.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "[meta]\ntrust_domain = \"example.org\"\n\n[services.web]\nid = \"spiffe://example.org/svc/web\"\nsend = [\"todos.list\"]\nreceive = [\"todos.listing\"]\n\n[services.todo]\nid = \"spiffe://example.org/svc/todo\"\nreceive = [\"todos.list@1\"]\nsend = [\"todos.listing\"]\n";

    #[test]
    fn explains_send_and_each_delivery() {
        let p = Policy::parse(SRC, "todo.toml").unwrap();
        let e = explain(&p, "web", "todos.list", 1, None).unwrap();
        assert_eq!(e.receivers(), ["todo"]);
        assert_eq!(
            e.to_string(),
            "send    todos.list@1 from web: ALLOW by todo.toml:6:9 todos.list\n\
             receive todo: ALLOW by todo.toml:11:12 todos.list@1\n\
             receive web : DENY  by default deny (no rule matches)\n\
             receivers: todo"
        );
        let e = explain(&p, "web", "todos.list", 2, Some("todo")).unwrap();
        assert_eq!(e.deliveries.len(), 1);
        assert!(e.to_string().ends_with("receivers: none (no service may receive it)"), "{e}");
        let e = explain(&p, "todo", "todos.list", 1, None).unwrap();
        assert!(e.to_string().ends_with("receivers: none (the send is denied)"), "{e}");
    }

    #[test]
    fn unknown_services_and_bad_names() {
        let p = Policy::parse(SRC, "todo.toml").unwrap();
        let e = explain(&p, "wbe", "todos.list", 1, None).unwrap_err();
        assert_eq!(e.to_string(), "unknown service \"wbe\" (did you mean \"web\"?)");
        assert!(explain(&p, "web", "todos.list", 1, Some("nobody")).is_err());
        let e = explain(&p, "web", "Todos.list", 1, None).unwrap_err();
        assert!(e.to_string().contains("lowercase"), "{e}");
    }
}
