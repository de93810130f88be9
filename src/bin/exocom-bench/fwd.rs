//! The workloads through the bare forwarder: the same `Send` frames our
//! relay writes (routing header + 256-byte or 64 KiB payload), the same
//! mTLS client certificates, batched writes like the relay's writer; the
//! forwarder copies them to the other side of its pair.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::{Bytes, BytesMut};
use exocom::tls::{self, IdentityDir};
use exocom::wire::frame::{self, encode_header};
use exocom::wire::{Body, Frame, FrameReader, FrameWriter, Kind, RoutingHeader, Send};
use futures_util::future::try_join;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::measure::{Outcome, Plan, json_text, sequential_latency};
use crate::setup::cert_dir;

type Stream = TlsStream<TcpStream>;

/// The forwarder at `addr`, certificates under `dir`.
pub struct Forwarder {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The benchmark directory.
    pub dir: PathBuf,
}

/// The encoded `Send` frame (length prefix included) for a payload of `len` bytes.
pub fn send_frame(name: &str, len: usize) -> Bytes {
    let header = RoutingHeader {
        name: name.into(),
        version: 1,
        id: Bytes::copy_from_slice(uuid::Uuid::now_v7().as_bytes()),
        kind: Kind::Command as i32,
        ..Default::default()
    };
    let payload = Bytes::from(format!("\"{}\"", json_text(len)));
    let send = Send { corr: 1, header: encode_header(&header), payload, tags: vec![], grants: vec![] };
    frame::to_bytes(&Frame { body: Some(Body::Send(send)) })
}

impl Forwarder {
    async fn connect(&self, service: &str) -> Result<Stream> {
        let config = tls::client_config(&IdentityDir::new(cert_dir(&self.dir, service)))?;
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let name = rustls_pki_types::ServerName::try_from("localhost")?;
        Ok(tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?)
    }

    /// A connected pair: (A, B); the forwarder joins them.
    async fn pair(&self, a: &str, b: &str) -> Result<(Stream, Stream)> {
        let a = self.connect(a).await.context("forwarder side A")?;
        let b = self.connect(b).await.context("forwarder side B")?;
        Ok((a, b))
    }

    /// W2/W5: A writes `n` frames in 64 KiB batches, B reads them.
    pub async fn one_way(&self, plan: &Plan, len: usize, full: u64) -> Result<(u64, u64, Duration, String)> {
        let (a, b) = self.pair("load", "sink1").await?;
        let n = plan.n(full);
        let frame = send_frame("bench.one", len);
        let deadline = plan.deadline();
        let start = Instant::now();
        let (_, mut aw) = tokio::io::split(a);
        let (br, _bw) = tokio::io::split(b);
        let write = async move {
            let mut batch = BytesMut::with_capacity(128 * 1024);
            let mut sent = 0;
            while sent < n {
                batch.clear();
                while sent < n && batch.len() < 64 * 1024 {
                    batch.extend_from_slice(&frame);
                    sent += 1;
                }
                aw.write_all(&batch).await?;
                aw.flush().await?;
                if Instant::now() > deadline {
                    break;
                }
            }
            Ok::<_, anyhow::Error>(aw)
        };
        let read = async move {
            let mut reader = FrameReader::new(br, 16 << 20);
            let mut got = 0;
            while got < n && Instant::now() < deadline {
                match tokio::time::timeout_at(deadline.into(), reader.read_frame()).await {
                    Ok(Ok(Some(_))) => got += 1,
                    Ok(Ok(None)) => break,
                    Ok(Err(e)) => bail!("forwarder read: {e}"),
                    Err(_) => break,
                }
            }
            Ok(got)
        };
        let (_aw, got) = try_join(write, read).await?;
        Ok((got, n, start.elapsed(), String::new()))
    }

    /// An echo peer on B: writes every frame it reads back.
    fn spawn_echo(b: Stream) {
        let (br, bw) = tokio::io::split(b);
        tokio::spawn(echo_loop(FrameReader::new(br, 16 << 20), FrameWriter::new(bw)));
    }

    /// A pair whose B side echoes every frame; A's reader and writer, and
    /// the 256-byte `Send` frame the round-trip workloads write.
    async fn echoing(
        &self,
    ) -> Result<(FrameReader<ReadHalf<Stream>>, FrameWriter<WriteHalf<Stream>>, Frame)> {
        let (a, b) = self.pair("load", "echo").await?;
        Self::spawn_echo(b);
        let (ar, aw) = tokio::io::split(a);
        Ok((FrameReader::new(ar, 16 << 20), FrameWriter::new(aw), decode(&send_frame("bench.echo", 256))?))
    }

    /// W1: sequential round trips A → B → A.
    pub async fn w1(&self, plan: &Plan) -> Result<Outcome> {
        let (mut reader, mut writer, frame) = self.echoing().await?;
        sequential_latency!(plan, round_trip(&mut reader, &mut writer, &frame)).await
    }

    /// W4 on one connection pair: 32 round trips in flight.
    pub async fn w4(&self, plan: &Plan) -> Result<Outcome> {
        let (mut reader, mut writer, frame) = self.echoing().await?;
        let n = plan.n(50_000);
        let deadline = plan.deadline();
        let start = Instant::now();
        for _ in 0..32 {
            writer.push(&frame);
        }
        writer.flush().await?;
        let (mut issued, mut done) = (32u64, 0u64);
        while done < n && Instant::now() < deadline {
            if reader.read_frame().await?.is_none() {
                break;
            }
            done += 1;
            if issued < n {
                writer.push(&frame);
                issued += 1;
            }
            if !reader.has_buffered_frame() {
                writer.flush().await?;
            }
        }
        Ok(Outcome::rate(done, n, start.elapsed(), String::new()))
    }
}

fn decode(bytes: &Bytes) -> Result<Frame> {
    let mut buf = BytesMut::from(&bytes[..]);
    frame::decode(&mut buf, usize::MAX)?.context("frame did not decode")
}

async fn round_trip(
    reader: &mut FrameReader<ReadHalf<Stream>>,
    writer: &mut FrameWriter<WriteHalf<Stream>>,
    frame: &Frame,
) -> Result<()> {
    writer.write_frame(frame).await?;
    match reader.read_frame().await? {
        Some(_) => Ok(()),
        None => bail!("forwarder closed"),
    }
}

async fn echo_loop(
    mut reader: FrameReader<ReadHalf<Stream>>,
    mut writer: FrameWriter<WriteHalf<Stream>>,
) -> Result<()> {
    while let Some(frame) = reader.read_frame().await? {
        writer.push(&frame);
        if !reader.has_buffered_frame() {
            writer.flush().await?;
        }
    }
    Ok(())
}
