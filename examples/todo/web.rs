//! The web server: a tiny HTTP/1.1 front end whose every page is a message
//! on the bus. `GET /` sends `todos.list`; `POST /todos` sends `todos.create`.

use std::net::SocketAddr;
use std::path::PathBuf;

use exocom::relay::{E2eOptions, Relay};
use exocom::shutdown::Shutdown;
use exocom::tls::IdentityDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::service::{NewTodo, Todo};

pub struct Web {
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}

pub async fn start(
    http: SocketAddr,
    router: SocketAddr,
    identity: PathBuf,
    sealing: Option<PathBuf>,
    mut shutdown: Shutdown,
) -> Result<Web, Box<dyn std::error::Error>> {
    let identity = IdentityDir::new(identity);
    let mut builder = Relay::builder(router.to_string(), identity.clone());
    if let Some(policy) = sealing {
        builder = builder.end_to_end(E2eOptions::new(&identity, policy));
    }
    let relay = builder.connect().await?;
    let listener = TcpListener::bind(http).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                conn = listener.accept() => {
                    if let Ok((stream, _)) = conn {
                        let relay = relay.clone();
                        tokio::spawn(async move { let _ = serve(stream, relay).await; });
                    }
                }
                _ = shutdown.wait() => break,
            }
        }
        relay.close().await;
    });
    Ok(Web { addr, task })
}

async fn serve(mut stream: TcpStream, relay: Relay) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return respond(&mut stream, "431 Request Header Fields Too Large", "text/plain", "too large")
                .await;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.lines();
    let request = lines.next().unwrap_or_default().to_string();
    let length: usize = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
        .min(64 * 1024);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..buf.len().min(head_end + length)]).to_string();
    let mut parts = request.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some("GET"), Some("/")) => match relay.request_one("todos.list", &serde_json::json!({})).await {
            Ok(reply) => match reply.json::<Vec<Todo>>() {
                Ok(todos) => {
                    respond(&mut stream, "200 OK", "text/html; charset=utf-8", &page(&todos, None)).await
                }
                Err(e) => respond(&mut stream, "502 Bad Gateway", "text/plain", &e.to_string()).await,
            },
            Err(e) => {
                respond(
                    &mut stream,
                    "502 Bad Gateway",
                    "text/html; charset=utf-8",
                    &page(&[], Some(&e.to_string())),
                )
                .await
            }
        },
        (Some("POST"), Some("/todos")) => {
            let text = form_value(&body, "text").unwrap_or_default();
            match relay.request_one("todos.create", &NewTodo { text }).await {
                Ok(_) => {
                    let head = "HTTP/1.1 303 See Other\r\nLocation: /\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
                    stream.write_all(head.as_bytes()).await
                }
                Err(e) => {
                    respond(
                        &mut stream,
                        "502 Bad Gateway",
                        "text/html; charset=utf-8",
                        &page(&[], Some(&e.to_string())),
                    )
                    .await
                }
            }
        }
        _ => respond(&mut stream, "404 Not Found", "text/plain", "not found").await,
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await
}

fn page(todos: &[Todo], error: Option<&str>) -> String {
    let items: String = todos.iter().map(|t| format!("<li>{}</li>\n", escape(&t.text))).collect();
    let error = error.map(|e| format!("<p class=\"error\">{}</p>", escape(e))).unwrap_or_default();
    format!(
        "<!doctype html><html><head><title>todos over exocom</title></head><body>\n\
         <h1>Todos</h1>{error}\n<ul id=\"todos\">\n{items}</ul>\n\
         <form method=\"post\" action=\"/todos\"><input name=\"text\" autofocus> <button>Add</button></form>\n\
         <p><small>Every page is a <code>todos.list</code> request through the exocom router.</small></p>\n\
         </body></html>\n"
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The value of `key` in an `application/x-www-form-urlencoded` body.
fn form_value(body: &str, key: &str) -> Option<String> {
    body.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| url_decode(v))
}

fn url_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
