//! A hostile router stand-in: a TLS proxy that a relay connects to as if it
//! were the router (it serves the router's certificate and key from the
//! test PKI) and that connects upstream to the real router with the client
//! identity of the relay it fronts. Every frame in both directions is
//! decoded, recorded, and handed to a tamper function that may pass,
//! change, drop or inject frames.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use exocom::tls::{self, ServerFiles};
use exocom::wire::frame::to_bytes;
use exocom::wire::{Frame, FrameReader, FrameWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::TestBus;

/// Which way a frame travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// From the relay to the router.
    ToRouter,
    /// From the router to the relay.
    ToRelay,
}

/// Decides what to do with each frame: returns the frames to forward (in
/// either direction). `vec![(dir, frame)]` passes it unchanged.
pub type Tamper = Box<dyn FnMut(Dir, Frame) -> Vec<(Dir, Frame)> + Send>;

/// Passes every frame unchanged.
pub fn pass() -> Tamper {
    Box::new(|dir, frame| vec![(dir, frame)])
}

/// A running proxy.
pub struct Proxy {
    /// Where relays connect.
    pub addr: SocketAddr,
    /// Every frame seen, as it arrived (before tampering), encoded.
    pub seen: Arc<Mutex<Vec<(Dir, Bytes)>>>,
    /// Every frame forwarded (after tampering), encoded.
    pub sent: Arc<Mutex<Vec<(Dir, Frame)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// A proxy in front of the real router of `bus` for relays of `service`.
    pub async fn start(bus: &TestBus, service: &str, tamper: Tamper) -> Proxy {
        let mut files = ServerFiles::from_certs_dir(bus.certs());
        files.trust_domain = Some("example.org".into());
        let server = tokio_rustls::TlsAcceptor::from(tls::server_config(&files).unwrap());
        let client = tokio_rustls::TlsConnector::from(tls::client_config(&bus.identity(service)).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream = bus.addr;
        let tamper = Arc::new(Mutex::new(tamper));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let (seen2, sent2) = (Arc::clone(&seen), Arc::clone(&sent));
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (server, client) = (server.clone(), client.clone());
                let (tamper, seen, sent) = (Arc::clone(&tamper), Arc::clone(&seen2), Arc::clone(&sent2));
                tokio::spawn(async move {
                    let Ok(down) = server.accept(tcp).await else { return };
                    let Ok(up_tcp) = TcpStream::connect(upstream).await else { return };
                    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
                    let Ok(up) = client.connect(name, up_tcp).await else { return };
                    let (down_r, down_w) = tokio::io::split(down);
                    let (up_r, up_w) = tokio::io::split(up);
                    let (to_relay, to_relay_rx) = mpsc::unbounded_channel::<Frame>();
                    let (to_router, to_router_rx) = mpsc::unbounded_channel::<Frame>();
                    let writers = [
                        tokio::spawn(write_all(FrameWriter::new(down_w), to_relay_rx)),
                        tokio::spawn(write_all(FrameWriter::new(up_w), to_router_rx)),
                    ];
                    let route = Route { tamper, seen, sent, to_relay, to_router };
                    let mut a =
                        tokio::spawn(pump(FrameReader::new(down_r, 64 << 20), Dir::ToRouter, route.clone()));
                    let mut b = tokio::spawn(pump(FrameReader::new(up_r, 64 << 20), Dir::ToRelay, route));
                    // Either side closing closes both, as a router or relay would.
                    tokio::select! {
                        _ = &mut a => {}
                        _ = &mut b => {}
                    }
                    a.abort();
                    b.abort();
                    for w in writers {
                        w.abort();
                    }
                });
            }
        });
        Proxy { addr, seen, sent, task }
    }

    /// The frames forwarded in `dir`.
    pub fn sent(&self, dir: Dir) -> Vec<Frame> {
        self.sent.lock().unwrap().iter().filter(|(d, _)| *d == dir).map(|(_, f)| f.clone()).collect()
    }
}

#[derive(Clone)]
struct Route {
    tamper: Arc<Mutex<Tamper>>,
    seen: Arc<Mutex<Vec<(Dir, Bytes)>>>,
    sent: Arc<Mutex<Vec<(Dir, Frame)>>>,
    to_relay: mpsc::UnboundedSender<Frame>,
    to_router: mpsc::UnboundedSender<Frame>,
}

async fn pump<R: tokio::io::AsyncRead + Unpin>(mut reader: FrameReader<R>, dir: Dir, route: Route) {
    while let Ok(Some(frame)) = reader.read_frame().await {
        route.seen.lock().unwrap().push((dir, to_bytes(&frame)));
        let out = (route.tamper.lock().unwrap())(dir, frame);
        for (d, f) in out {
            route.sent.lock().unwrap().push((d, f.clone()));
            let tx = if d == Dir::ToRelay { &route.to_relay } else { &route.to_router };
            if tx.send(f).is_err() {
                return;
            }
        }
    }
}

async fn write_all<W: tokio::io::AsyncWrite + Unpin>(
    mut writer: FrameWriter<W>,
    mut frames: mpsc::UnboundedReceiver<Frame>,
) {
    while let Some(frame) = frames.recv().await {
        if writer.write_frame(&frame).await.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}
