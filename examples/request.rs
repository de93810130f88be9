//! Sends a request on the relay and prints every reply until the stream ends.
//!
//! `cargo run --example request -- 127.0.0.1:7443 certs-example/web todos.list`

use exocom::relay::Relay;
use exocom::tls::IdentityDir;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let router = args.next().unwrap_or_else(|| "127.0.0.1:7443".into());
    let identity = args.next().unwrap_or_else(|| "certs-example/web".into());
    let name = args.next().unwrap_or_else(|| "todos.list".into());

    let relay = Relay::builder(router, IdentityDir::new(identity)).connect().await?;
    let mut replies = relay.request(&name, &()).await?;
    while let Some(reply) = replies.next().await {
        let reply = reply?;
        println!("{} from {}: {}", reply.name(), reply.sender(), String::from_utf8_lossy(reply.payload()));
    }
    relay.close().await;
    Ok(())
}
