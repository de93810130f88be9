//! Buffered frame I/O over any byte stream (a TLS stream in practice).
//!
//! Reads fill one growing buffer and split frames off it without copying.
//! Writes append to a buffer that is flushed once per batch, so a burst of
//! frames costs one `write` (and one TLS record run), not one per frame.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::frame::{self, FrameError};
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
        Self { inner, buf: BytesMut::with_capacity(16 * 1024), max_frame }
    }

    /// The next frame; `Ok(None)` when the peer closed cleanly between frames.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, ConnectionError> {
        loop {
            if let Some(frame) = frame::decode(&mut self.buf, self.max_frame)? {
                return Ok(Some(frame));
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(16 * 1024);
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() { Ok(None) } else { Err(ConnectionError::Truncated) };
            }
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
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Wraps a writer.
    pub fn new(inner: W) -> Self {
        Self { inner, buf: BytesMut::with_capacity(16 * 1024) }
    }

    /// Appends a frame to the batch; nothing is written until [`flush`](Self::flush).
    pub fn push(&mut self, frame: &Frame) {
        frame::encode(frame, &mut self.buf);
    }

    /// Bytes waiting in the batch.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Writes the batch and flushes the stream.
    pub async fn flush(&mut self) -> Result<(), ConnectionError> {
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
