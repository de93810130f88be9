//! Buffered frame I/O over any byte stream (a TLS stream in practice).
//!
//! Reads fill a buffer and split frames off it without copying; a large
//! frame is read into a block of its own, taken from the buffer pool
//! ([`super::pool`]) and given back once the last part of the frame is
//! dropped.
//! Writes append to a buffer that is flushed once per batch, so a burst of
//! frames costs one `write` (and one TLS record run), not one per frame; a
//! large payload is not copied into that buffer but written from its own,
//! right after the rest of its frame.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::encode::{self, DeliverRef};
use super::frame::{self, Check, FrameError};
use super::messages::Frame;
use super::pool;

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
    /// The large frame being read (length prefix included), empty between
    /// large frames. Kept here, not in the read future, so a read that is
    /// cancelled (in a `select!`) loses nothing.
    block: Vec<u8>,
    max_frame: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a reader; frames over `max_frame` bytes are refused.
    pub fn new(inner: R, max_frame: usize) -> Self {
        Self { inner, buf: BytesMut::with_capacity(SMALL_FRAME), block: Vec::new(), max_frame }
    }

    /// The next frame; `Ok(None)` when the peer closed cleanly between frames.
    ///
    /// Cancel-safe: what was read before a cancelled call is kept for the next.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, ConnectionError> {
        loop {
            if !self.block.is_empty() {
                if let Some(frame) = self.read_block().await? {
                    return Ok(Some(frame));
                }
                continue;
            }
            let total = match frame::check(&self.buf, self.max_frame)? {
                Check::Ready(_) => return Ok(frame::decode(&mut self.buf, self.max_frame)?),
                Check::Incomplete(total) => total,
            };
            if total > SMALL_FRAME && total <= PREALLOCATE_MAX {
                // The rest of this frame goes into a block of its size; what
                // is buffered is its beginning (the check found no whole
                // frame), and the buffer stays for the small frames after it.
                self.block = pool::take(total);
                self.block.extend_from_slice(&self.buf);
                self.buf.clear();
                continue;
            }
            self.make_room(total);
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() { Ok(None) } else { Err(ConnectionError::Truncated) };
            }
        }
    }

    /// Reads more of the large frame in `block`, and returns it once whole.
    /// Reads no further than its end, so the block is exactly the frame.
    async fn read_block(&mut self) -> Result<Option<Frame>, ConnectionError> {
        match frame::check(&self.block, self.max_frame)? {
            Check::Ready(len) => {
                let block = pool::freeze(std::mem::take(&mut self.block));
                Ok(Some(frame::parse(block.slice(frame::LENGTH_PREFIX..frame::LENGTH_PREFIX + len))?))
            }
            Check::Incomplete(total) => {
                let missing = total - self.block.len();
                if self.inner.read_buf(&mut bytes::BufMut::limit(&mut self.block, missing)).await? == 0 {
                    return Err(ConnectionError::Truncated);
                }
                Ok(None)
            }
        }
    }

    /// Makes room in the buffer to read more of a frame `total` bytes long
    /// (prefix included; just the prefix while the length is unknown): a
    /// small one, or one over [`PREALLOCATE_MAX`] (larger ones up to that
    /// get a block of their own, see [`read_frame`](Self::read_frame)).
    ///
    /// A large frame is never read by growing the buffer step by step: that
    /// copies the frame several times and leaves it in a block up to twice
    /// its size, held as long as any part of the frame is referenced (in
    /// the router, until the message is acknowledged). With 64 KiB messages,
    /// faults under that growth were a third of the router's CPU
    /// (docs/PERFORMANCE-HISTORY.md, fifth round). A frame over
    /// [`PREALLOCATE_MAX`] gets memory only as its bytes arrive, so a peer
    /// announcing a huge frame gets nothing up front.
    fn make_room(&mut self, total: usize) {
        let missing = total.saturating_sub(self.buf.len());
        let spare = self.buf.capacity() - self.buf.len();
        if total > SMALL_FRAME {
            if spare < missing {
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
        !self.buf.is_empty() || !self.block.is_empty()
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
    /// Pushed since the last completed flush.
    dirty: bool,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Wraps a writer.
    pub fn new(inner: W) -> Self {
        Self { inner, buf: BytesMut::with_capacity(16 * 1024), parts: VecDeque::new(), dirty: false }
    }

    /// Appends a frame to the batch; nothing is written until [`flush`](Self::flush).
    /// A large payload is not copied into the batch but written from its
    /// own buffer ([`frame::encode_split`]).
    pub fn push(&mut self, frame: &Frame) {
        let payload = frame::encode_split(frame, &mut self.buf);
        self.pushed(payload);
    }

    /// Appends a `Deliver` frame, encoded from its parts, to the batch (a
    /// large payload written from its own buffer, as by [`push`](Self::push)).
    pub fn push_deliver(&mut self, deliver: &DeliverRef<'_>) {
        let payload = encode::deliver(deliver, &mut self.buf);
        self.pushed(payload);
    }

    /// A frame was encoded into `buf`; `payload`, if any, follows it from
    /// its own buffer.
    fn pushed(&mut self, payload: Option<Bytes>) {
        self.dirty = true;
        if let Some(payload) = payload {
            self.parts.push_back(self.buf.split().freeze());
            self.parts.push_back(payload);
        }
    }

    /// Bytes waiting in the batch.
    pub fn pending(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum::<usize>() + self.buf.len()
    }

    /// Whether something pushed has not been flushed yet (it may sit in the
    /// batch, or in the stream's own buffer, as TLS records not yet sent).
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Writes the batch and flushes the stream. Cancel-safe: what was
    /// written stays written, and the next call goes on from there.
    pub async fn flush(&mut self) -> Result<(), ConnectionError> {
        std::future::poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Writes as much of the batch as the stream takes now, then flushes
    /// it. Progress is kept in the batch, so a caller may poll this beside
    /// other work (reading, say) and push more frames between polls.
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectionError>> {
        while let Some(part) = self.parts.front_mut() {
            ready!(poll_write_out(&mut self.inner, cx, part))?;
            self.parts.pop_front();
        }
        ready!(poll_write_out(&mut self.inner, cx, &mut self.buf))?;
        // Written in full: start the next batch at the front of the buffer.
        self.buf.clear();
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        self.dirty = false;
        Poll::Ready(Ok(()))
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

/// Writes `data` out, advancing it past what the stream took, until it is
/// empty; what was written stays consumed if this returns `Pending`.
fn poll_write_out<W: AsyncWrite + Unpin>(
    inner: &mut W,
    cx: &mut Context<'_>,
    data: &mut impl Buf,
) -> Poll<Result<(), ConnectionError>> {
    while data.has_remaining() {
        let n = ready!(Pin::new(&mut *inner).poll_write(cx, data.chunk()))?;
        if n == 0 {
            let zero = std::io::Error::new(std::io::ErrorKind::WriteZero, "the stream took no bytes");
            return Poll::Ready(Err(ConnectionError::Io(zero)));
        }
        data.advance(n);
    }
    Poll::Ready(Ok(()))
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
            // The frame went into a block of its own, handed over whole;
            // the buffer for small frames did not grow.
            assert!(reader.block.is_empty() && reader.block.capacity() == 0);
            let held = reader.buf.capacity();
            assert!(held <= SMALL_FRAME, "{held} bytes held for small frames after a 100 KiB frame");
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

    /// A flush cancelled while the stream is full (as `select!` does when a
    /// frame arrives first) loses nothing and sends nothing twice; frames
    /// pushed in between go out after the ones before them.
    #[tokio::test]
    async fn a_cancelled_flush_resumes_where_it_stopped() {
        let frame = |corr, len| Frame {
            body: Some(Body::Send(Send {
                corr,
                payload: Bytes::from((0..len).map(|i| (i % 253) as u8).collect::<Vec<u8>>()),
                ..Default::default()
            })),
        };
        let first = vec![frame(1, 100), frame(2, 40 * 1024), frame(3, 300)];
        let (tx, rx) = tokio::io::duplex(4 * 1024);
        let mut writer = FrameWriter::new(tx);
        for f in &first {
            writer.push(f);
        }
        let total = writer.pending();
        let cut = tokio::time::timeout(std::time::Duration::from_millis(50), writer.flush()).await;
        assert!(cut.is_err(), "a 4 KiB pipe nobody reads cannot take the batch");
        let left = writer.pending();
        assert!(left > 0 && left < total, "{left} of {total} bytes left: the flush made progress");
        assert!(writer.is_dirty());
        // More frames join the batch while it is half written.
        let later = vec![frame(4, 20 * 1024), frame(5, 10)];
        for f in &later {
            writer.push(f);
        }
        let writing = tokio::spawn(async move { writer.flush().await.map(|()| writer.is_dirty()) });
        let mut reader = FrameReader::new(rx, 1 << 20);
        for f in first.iter().chain(&later) {
            assert_eq!(&reader.read_frame().await.unwrap().unwrap(), f);
        }
        assert!(!writing.await.unwrap().unwrap(), "clean after a completed flush");
    }

    /// A read cancelled in the middle of a large frame (as `select!` does)
    /// loses nothing: the next read finishes the same frame.
    #[tokio::test]
    async fn a_cancelled_read_of_a_large_frame_resumes_where_it_stopped() {
        let payload = Bytes::from((0..80 * 1024).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        let frame = Frame {
            body: Some(Body::Send(Send { corr: 9, payload: payload.clone(), ..Default::default() })),
        };
        let encoded = frame::to_bytes(&frame);
        let (mut tx, rx) = tokio::io::duplex(256 * 1024);
        let mut reader = FrameReader::new(rx, 1 << 20);
        tx.write_all(&encoded[..30_000]).await.unwrap();
        let cut = tokio::time::timeout(std::time::Duration::from_millis(50), reader.read_frame()).await;
        assert!(cut.is_err(), "the frame cannot be complete yet");
        assert!(reader.has_partial_frame() && !reader.has_buffered_frame());
        tx.write_all(&encoded[30_000..]).await.unwrap();
        tx.write_all(&frame::to_bytes(&Frame {
            body: Some(Body::Send(Send { corr: 10, ..Default::default() })),
        }))
        .await
        .unwrap();
        assert_eq!(reader.read_frame().await.unwrap().unwrap(), frame);
        let next = reader.read_frame().await.unwrap().unwrap();
        assert!(matches!(next.body, Some(Body::Send(Send { corr: 10, .. }))), "the frame behind it is whole");
        drop(tx);
        assert!(reader.read_frame().await.unwrap().is_none());
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
