//! Framed messages over QUIC streams, shared by the daemon and the bridge.
//!
//! A frame is read in two bounded steps: the header first, checked against the frame limit, then the
//! body. A peer can therefore never make the reader allocate more than one maximal frame.

use serde::{de::DeserializeOwned, Serialize};
use sessionfs_proto::{
    decode, encode_frame, frame_body_len, CodecError, FRAME_HEADER_LEN, MAX_FRAME_LEN,
};

/// Why a frame could not cross a stream.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("stream read failed: {0}")]
    Read(#[from] quinn::ReadExactError),
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream already closed: {0}")]
    Closed(#[from] quinn::ClosedStream),
    #[error("stream read failed after the frame: {0}")]
    ReadEnd(#[from] quinn::ReadError),
    #[error("the peer sent data after the stream's last frame")]
    TrailingData,
}

/// Reads one frame and decodes it.
pub async fn read_frame<T: DeserializeOwned>(recv: &mut quinn::RecvStream) -> Result<T, WireError> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    recv.read_exact(&mut header).await?;
    let len = frame_body_len(header)?;
    let mut body = FrameBuffer::take();
    body.resize(len, 0);
    recv.read_exact(&mut body).await?;
    Ok(decode(&body)?)
}

/// Reads the one frame a stream carries and then its end. Observing the end lets the stream close
/// quietly: a receive stream dropped before its end is seen makes QUIC send STOP_SENDING, one more
/// frame (and often one more datagram) per request each way. Bytes after the frame are a protocol
/// error. The end normally arrives with the frame; callers bound the wait like any read.
pub async fn read_last_frame<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
) -> Result<T, WireError> {
    let msg = read_frame(recv).await?;
    let mut probe = [0u8; 1];
    match recv.read(&mut probe).await? {
        None => Ok(msg),
        Some(_) => Err(WireError::TrailingData),
    }
}

/// Encodes `msg` as one frame and writes it; `finish` also ends the stream.
pub async fn write_frame<T: Serialize>(
    send: &mut quinn::SendStream,
    msg: &T,
    finish: bool,
) -> Result<(), WireError> {
    let mut buf = FrameBuffer::take();
    encode_frame(msg, &mut buf)?;
    if buf.len() >= HANDED_OVER_MIN {
        // Handed to quinn as it is rather than copied into its send buffer.
        let frame = bytes::Bytes::from(std::mem::take(&mut buf.0));
        send.write_chunk(frame).await?;
    } else {
        send.write_all(&buf).await?;
    }
    if finish {
        send.finish()?;
    }
    Ok(())
}

/// Frames at least this long are handed to quinn whole instead of copied (see [`write_frame`]).
const HANDED_OVER_MIN: usize = 64 * 1024;

/// Buffers kept for reuse at most; each holds up to one maximal frame.
const POOLED_BUFFERS: usize = 2;

/// Buffers smaller than this are not worth keeping (a metadata frame allocates a few hundred bytes).
const POOLED_MIN_CAPACITY: usize = 64 * 1024;

static POOL: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// Frees the pooled frame buffers (an idle process need not hold them; the next frame allocates).
pub fn release_pooled_buffers() {
    if let Ok(mut pool) = POOL.lock() {
        pool.clear();
        pool.shrink_to_fit();
    }
}

/// A frame buffer from a small process-wide pool, returned to it on drop. A 1 MiB frame then costs
/// neither a fresh allocation (zeroed, page-faulted in, or grown by doubling while encoding) nor the
/// copies that growth makes; the pool's bound keeps what an idle process holds small.
struct FrameBuffer(Vec<u8>);

impl FrameBuffer {
    fn take() -> Self {
        let reused = POOL.lock().ok().and_then(|mut pool| pool.pop());
        FrameBuffer(reused.unwrap_or_default())
    }
}

impl std::ops::Deref for FrameBuffer {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl std::ops::DerefMut for FrameBuffer {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Drop for FrameBuffer {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        if buf.capacity() < POOLED_MIN_CAPACITY || buf.capacity() > 2 * MAX_FRAME_LEN {
            return;
        }
        buf.clear();
        if let Ok(mut pool) = POOL.lock() {
            if pool.len() < POOLED_BUFFERS {
                pool.push(buf);
            }
        }
    }
}
