//! Framed messages over QUIC streams, shared by the daemon and the bridge.
//!
//! A frame is read in two bounded steps: the header first, checked against the frame limit, then the
//! body. A peer can therefore never make the reader allocate more than one maximal frame.

use serde::{de::DeserializeOwned, Serialize};
use sessionfs_proto::{codec, CodecError, FRAME_HEADER_LEN};

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
}

/// Reads one frame and decodes it.
pub async fn read_frame<T: DeserializeOwned>(recv: &mut quinn::RecvStream) -> Result<T, WireError> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    recv.read_exact(&mut header).await?;
    let len = codec::frame_body_len(header)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    Ok(codec::decode(&body)?)
}

/// Encodes `msg` as one frame and writes it; `finish` also ends the stream.
pub async fn write_frame<T: Serialize>(
    send: &mut quinn::SendStream,
    msg: &T,
    finish: bool,
) -> Result<(), WireError> {
    let mut buf = Vec::new();
    codec::encode_frame(msg, &mut buf)?;
    send.write_all(&buf).await?;
    if finish {
        send.finish()?;
    }
    Ok(())
}
