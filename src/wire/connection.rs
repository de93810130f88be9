//! Buffered frame I/O over any byte stream (a TLS stream in practice).
//!
//! Reads fill a buffer (a large frame gets a block of its own) and split
//! frames off it without copying.
//! Writes append to a buffer that is flushed once per batch, so a burst of
//! frames costs one `write` (and one TLS record run), not one per frame; a
//! large payload is not copied into that buffer but written from its own,
//! right after the rest of its frame.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::frame::{self, Check, FrameError};
use super::messages::Frame;

/// Why reading or writing frames failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The bytes on the wire are not a valid frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The peer closed the stream in the middle of a frame.
    #[error("connection closed in the middle of a frame")]
    Truncated,
    /// The transport failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Frames up to this size are read many to a buffer.
const SMALL_FRAME: usize = 16 * 1024;

/// The largest frame given its whole block before its bytes arrive.
const PREALLOCATE_MAX: usize = 1024 * 1024;

/// Read half: turns a byte stream into frames.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max_frame: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a reader; frames over `max_frame` bytes are refused.
    pub fn new(inner: R, max_frame: usize) -> Self {
        Self { inner, buf: BytesMut::with_capacity(SMALL_FRAME), max_frame }
    }

    /// The next frame; `Ok(None)` when the peer closed cleanly between frames.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, ConnectionError> {
        loop {
            let total = match frame::check(&self.buf, self.max_frame)? {
                Check::Ready(_) => return Ok(frame::decode(&mut self.buf, self.max_frame)?),
                Check::Incomplete(total) => total,
            };
            self.make_room(total);
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() { Ok(None) } else { Err(ConnectionError::Truncated) };
            }
        }
    }

    /// Makes room to read more of a frame `total` bytes long (prefix
    /// included; just the prefix while the length is unknown).
    ///
    /// A large frame gets one block of exactly its size. Growing the buffer
    /// step by step instead copies the frame several times and leaves it in a
    /// block up to twice its size, held as long as any part of the frame is
    /// referenced (in the router, until the message is acknowledged): twice
    /// the fresh memory to fault in and zero. With 64 KiB messages, faults
    /// under this function were a third of the router's CPU; the exact block
    /// cut its CPU per message by about a fifth (docs/PERFORMANCE.md, fifth
    /// round). The block is allocated up front only up to
    /// [`PREALLOCATE_MAX`], so a peer announcing a huge frame gets memory
    /// only as the bytes arrive.
    fn make_room(&mut self, total: usize) {
        let missing = total.saturating_sub(self.buf.len());
        let spare = self.buf.capacity() - self.buf.len();
        if total > SMALL_FRAME {
            if spare >= missing {
                return;
            }
            if total <= PREALLOCATE_MAX {
                let mut block = BytesMut::with_capacity(total);
                block.extend_from_slice(&self.buf);
                self.buf = block;
            } else {
                self.buf.reserve(missing.min(PREALLOCATE_MAX));
            }
        } else if spare < 4096 && !self.buf.try_reclaim(SMALL_FRAME) {
            // Small frames are read many at a time into a fresh 16 KiB
            // buffer, not by growing this one: that would copy it into a
            // block twice its size or, after a large frame, one as large.
            let mut fresh = BytesMut::with_capacity(self.buf.len() + SMALL_FRAME);
            fresh.extend_from_slice(&self.buf);
            self.buf = fresh;
        }
    }

    /// Whether a whole frame is already buffered (so a batch can keep going
    /// without waiting on the socket).
    pub fn has_buffered_frame(&self) -> bool {
        matches!(frame::check(&self.buf, self.max_frame), Ok(frame::Check::Ready(_)) | Err(_))
    }

    /// Whether part of a frame is buffered, waiting for the rest.
    pub fn has_partial_frame(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The wrapped reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }
}

/// Write half: batches frames into one buffer.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
    buf: BytesMut,
    /// Finished parts of the batch, in order, ahead of `buf`: encoded
    /// frames and the large payloads written from their own buffers.
    parts: VecDeque<Bytes>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Wraps a writer.
    pub fn new(inner: W) -> Self {
        Self { inner, buf: BytesMut::with_capacity(16 * 1024), parts: VecDeque::new() }
    }

    /// Appends a frame to the batch; nothing is written until [`flush`](Self::flush).
    /// A large payload is not copied into the batch but written from its
    /// own buffer ([`frame::encode_split`]).
    pub fn push(&mut self, frame: &Frame) {
        if let Some(payload) = frame::encode_split(frame, &mut self.buf) {
            self.parts.push_back(self.buf.split().freeze());
            self.parts.push_back(payload);
        }
    }

    /// Bytes waiting in the batch.
    pub fn pending(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum::<usize>() + self.buf.len()
    }

    /// Writes the batch and flushes the stream.
    pub async fn flush(&mut self) -> Result<(), ConnectionError> {
        while let Some(part) = self.parts.pop_front() {
            self.inner.write_all(&part).await?;
        }
        if !self.buf.is_empty() {
            self.inner.write_all(&self.buf).await?;
            self.buf.clear();
        }
        self.inner.flush().await?;
        Ok(())
    }

    /// Pushes one frame and flushes.
    pub async fn write_frame(&mut self, frame: &Frame) -> Result<(), ConnectionError> {
        self.push(frame);
        self.flush().await
    }

    /// Flushes and shuts the write side down (TLS close_notify).
    pub async fn shutdown(&mut self) -> Result<(), ConnectionError> {
        self.flush().await?;
        self.inner.shutdown().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::wire::messages::{Body, Send};

    #[tokio::test]
    async fn a_large_frame_arriving_in_pieces_is_read_into_one_block_of_its_size() {
        let payload = Bytes::from(vec![7u8; 100 * 1024]);
        let frame = Frame {
            body: Some(Body::Send(Send { corr: 1, payload: payload.clone(), ..Default::default() })),
        };
        let mut encoded = BytesMut::new();
        frame::encode(&frame, &mut encoded);
        encoded.extend_from_slice(&encoded.clone()); // a second frame behind it

        // The pipe holds 4 KiB at a time: the reader sees the frame in pieces.
        let (mut tx, rx) = tokio::io::duplex(4096);
        let writing = tokio::spawn(async move { tx.write_all(&encoded).await });
        let mut reader = FrameReader::new(rx, 1 << 20);
        for _ in 0..2 {
            let got = reader.read_frame().await.unwrap().unwrap();
            assert_eq!(got, frame);
            // Growing step by step would have left the block twice the
            // frame's size, the unused half still behind the frame.
            let spare = reader.buf.capacity();
            assert!(spare < 4096, "{spare} bytes of spare room left after a 100 KiB frame");
        }
        writing.await.unwrap().unwrap();
        assert!(reader.read_frame().await.unwrap().is_none());
    }

    /// Large payloads go out from their own buffers, between the frames
    /// around them: the reader gets every frame back, in order.
    #[tokio::test]
    async fn a_batch_with_large_payloads_reads_back_in_order() {
        let large = |corr, fill| Frame {
            body: Some(Body::Send(Send {
                corr,
                payload: Bytes::from(vec![fill; 70 * 1024]),
                ..Default::default()
            })),
        };
        let small = |corr| Frame { body: Some(Body::Send(Send { corr, ..Default::default() })) };
        let frames = vec![small(1), large(2, 0xaa), large(3, 0xbb), small(4), large(5, 0xcc), small(6)];
        let (tx, rx) = tokio::io::duplex(8 * 1024);
        let mut writer = FrameWriter::new(tx);
        for f in &frames {
            writer.push(f);
        }
        assert_eq!(writer.pending(), frames.iter().map(|f| frame::to_bytes(f).len()).sum::<usize>());
        let writing = tokio::spawn(async move { writer.flush().await.map(|()| writer.pending()) });
        let mut reader = FrameReader::new(rx, 1 << 20);
        for f in &frames {
            assert_eq!(&reader.read_frame().await.unwrap().unwrap(), f);
        }
        assert_eq!(writing.await.unwrap().unwrap(), 0, "nothing left after a flush");
    }

    #[tokio::test]
    async fn a_huge_announced_frame_gets_memory_only_as_its_bytes_arrive() {
        let (mut tx, rx) = tokio::io::duplex(64 * 1024);
        // Announces 8 MiB, then sends 10 bytes and stalls.
        tx.write_all(&(8u32 << 20).to_be_bytes()).await.unwrap();
        tx.write_all(&[0u8; 10]).await.unwrap();
        let mut reader = FrameReader::new(rx, 16 << 20);
        let stalled = tokio::time::timeout(std::time::Duration::from_millis(100), reader.read_frame()).await;
        assert!(stalled.is_err(), "the frame cannot be complete");
        let held = reader.buf.capacity();
        assert!(held <= 2 * PREALLOCATE_MAX, "{held} bytes held for 14 bytes received");
        drop(tx);
    }
}
