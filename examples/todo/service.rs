//! The todo service: keeps todos in memory, answers `todos.list` with
//! `todos.listing` and `todos.create` with `todos.created`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use exocom::relay::{E2eOptions, Error, ErrorKind, Relay};
use exocom::tls::IdentityDir;
use serde::{Deserialize, Serialize};

/// One todo.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Todo {
    pub id: u64,
    pub text: String,
}

/// What `todos.create` carries.
#[derive(Debug, Deserialize, Serialize)]
pub struct NewTodo {
    pub text: String,
}

pub async fn start(router: SocketAddr, identity: PathBuf, sealing: Option<PathBuf>) -> Result<Relay, Error> {
    let todos: Arc<Mutex<Vec<Todo>>> =
        Arc::new(Mutex::new(vec![Todo { id: 1, text: "read DESIGN.md".into() }]));
    let list = todos.clone();
    let identity = IdentityDir::new(identity);
    let mut builder = Relay::builder(router.to_string(), identity.clone());
    if let Some(policy) = sealing {
        builder = builder.end_to_end(E2eOptions::new(&identity, policy));
    }
    builder
        .handle("todos.list", [1], move |_msg, reply| {
            let snapshot = list.lock().map(|t| t.clone()).unwrap_or_default();
            async move { reply.reply("todos.listing", &snapshot).await }
        })
        .handle("todos.create", [1], move |msg, reply| {
            let todos = todos.clone();
            async move {
                let new: NewTodo = msg.json()?;
                let text = new.text.trim().to_string();
                if text.is_empty() || text.len() > 500 {
                    return Err(Error::new(ErrorKind::Serialization, "a todo needs 1 to 500 characters"));
                }
                let todo = {
                    let mut t = todos.lock().map_err(|_| Error::new(ErrorKind::Io, "todo list poisoned"))?;
                    let todo = Todo { id: t.len() as u64 + 1, text };
                    t.push(todo.clone());
                    todo
                };
                reply.reply("todos.created", &todo).await
            }
        })
        .connect()
        .await
}
