//! A minimal service on the relay: answers `todos.list` and `todos.create`.
//!
//! Run a router first (see the README), then:
//! `cargo run --example todo_service -- 127.0.0.1:7443 certs-example/todo`

use std::sync::{Arc, Mutex};

use exocom::relay::{Error, Incoming, Relay, Responder};
use exocom::tls::IdentityDir;

#[derive(serde::Deserialize)]
struct NewTodo {
    text: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let router = args.next().unwrap_or_else(|| "127.0.0.1:7443".into());
    let identity = args.next().unwrap_or_else(|| "certs-example/todo".into());

    let todos = Arc::new(Mutex::new(vec!["try exocom".to_owned()]));
    let listing = Arc::clone(&todos);
    let relay = Relay::builder(router, IdentityDir::new(identity))
        .handle("todos.list", [1], move |_msg: Incoming, responder: Responder| {
            let snapshot = listing.lock().map(|t| t.clone()).unwrap_or_default();
            async move { responder.reply("todos.listing", &snapshot).await }
        })
        .handle("todos.create", [1], move |msg: Incoming, responder: Responder| {
            let todos = Arc::clone(&todos);
            async move {
                let new: NewTodo = msg.json()?;
                if let Ok(mut list) = todos.lock() {
                    list.push(new.text.clone());
                }
                responder.publish("todo.created", &new.text).await?;
                responder.reply("todos.created", &new.text).await?;
                Ok::<(), Error>(())
            }
        })
        .connect()
        .await?;
    eprintln!("todo service connected as {:?}; Ctrl-C to stop", relay.service());
    tokio::signal::ctrl_c().await?;
    relay.close().await;
    Ok(())
}
