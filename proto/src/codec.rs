//! The frame codec: a 4-byte little-endian length followed by a postcard-encoded body.
//!
//! This is the only module that knows the serialization format, so it can be swapped. Decoding never
//! allocates more than [`MAX_FRAME_LEN`]: the length is checked before the body is read.

use serde::{de::DeserializeOwned, Serialize};

/// Bytes in a frame header.
pub const FRAME_HEADER_LEN: usize = 4;

/// The largest frame body accepted: one maximal I/O chunk and a batch of writes acknowledged early
/// ahead of it, plus room for the envelope, or one directory page of long names with attributes.
pub const MAX_FRAME_LEN: usize =
    crate::MAX_IO_CHUNK as usize + crate::MAX_BATCH_BYTES as usize + 1024 * 1024;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The header announces a body larger than [`MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the limit of {MAX_FRAME_LEN} bytes")]
    TooLarge { len: usize },
    /// The body is not a valid encoding of the expected message.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Appends one frame holding `msg` to `out`.
pub fn encode_frame<T: Serialize>(msg: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    let buf = std::mem::take(out);
    let mut buf =
        postcard::to_extend(msg, buf).map_err(|e| CodecError::Malformed(e.to_string()))?;
    let len = buf.len() - start - FRAME_HEADER_LEN;
    if len > MAX_FRAME_LEN {
        buf.truncate(start);
        *out = buf;
        return Err(CodecError::TooLarge { len });
    }
    // `len` fits in u32 because it is at most MAX_FRAME_LEN.
    buf[start..start + FRAME_HEADER_LEN].copy_from_slice(&(len as u32).to_le_bytes());
    *out = buf;
    Ok(())
}

/// Validates a frame header and returns the length of the body that follows.
pub fn frame_body_len(header: [u8; FRAME_HEADER_LEN]) -> Result<usize, CodecError> {
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(CodecError::TooLarge { len });
    }
    Ok(len)
}

/// Decodes a frame body; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    let (msg, rest) =
        postcard::take_from_bytes(body).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CodecError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Reply, Request, RequestFrame, ResponseFrame, WirePath};

    fn roundtrip(frame: &RequestFrame) -> RequestFrame {
        let mut buf = Vec::new();
        encode_frame(frame, &mut buf).unwrap();
        let len = frame_body_len(buf[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, buf.len() - 4);
        decode(&buf[4..]).unwrap()
    }

    /// Byte payloads are encoded as a length and the raw bytes (`serde_bytes`), the same bytes a
    /// sequence of `u8` gives in postcard, but copied whole instead of one element at a time.
    #[test]
    fn byte_payloads_are_length_and_raw_bytes() {
        let data: Vec<u8> = (0..300u32).map(|i| (i % 256) as u8).collect();
        let mut framed = Vec::new();
        encode_frame(&ResponseFrame(Ok(Reply::Data(data.clone()))), &mut framed).unwrap();
        let body = &framed[4..];
        // Ok variant, Data variant, varint length 300 = [0xac, 0x02], then the bytes as they are.
        assert_eq!(&body[body.len() - data.len()..], &data[..]);
        assert_eq!(body.len(), data.len() + 4);
        let as_seq = postcard::to_stdvec(&data).unwrap();
        assert_eq!(&body[2..], &as_seq[..]);
        let back: ResponseFrame = decode(body).unwrap();
        assert_eq!(back, ResponseFrame(Ok(Reply::Data(data))));
    }

    #[test]
    fn request_roundtrips() {
        let frame = RequestFrame {
            caller: crate::Caller {
                uid: 1000,
                gid: 100,
            },
            request: Request::Write {
                fh: 7,
                offset: 1 << 40,
                data: vec![1, 2, 3],
            },
        };
        assert_eq!(roundtrip(&frame), frame);
        let frame = RequestFrame {
            caller: crate::Caller::default(),
            request: Request::Rename {
                from: WirePath::new(b"a/b".to_vec()).unwrap(),
                to: WirePath::new(b"c".to_vec()).unwrap(),
                flags: crate::RENAME_NOREPLACE,
            },
        };
        assert_eq!(roundtrip(&frame), frame);
    }

    #[test]
    fn oversized_header_is_refused_before_allocation() {
        let header = (u32::MAX).to_le_bytes();
        assert!(matches!(
            frame_body_len(header),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn oversized_body_is_refused_on_encode() {
        let frame = ResponseFrame(Ok(Reply::Data(vec![0; MAX_FRAME_LEN + 1])));
        let mut buf = vec![9];
        assert!(matches!(
            encode_frame(&frame, &mut buf),
            Err(CodecError::TooLarge { .. })
        ));
        assert_eq!(buf, vec![9], "a refused frame leaves the buffer as it was");
    }

    #[test]
    fn garbage_never_panics() {
        // A deterministic sweep of pseudo-random bodies: every one must decode or fail cleanly.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for len in 0..600 {
            let body: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let _ = decode::<RequestFrame>(&body);
            let _ = decode::<ResponseFrame>(&body);
        }
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let mut buf = Vec::new();
        encode_frame(&crate::Hello::current(), &mut buf).unwrap();
        buf.push(0);
        assert!(decode::<crate::Hello>(&buf[4..]).is_err());
    }

    #[test]
    fn invalid_path_inside_frame_is_malformed() {
        // Hand-encode a Lookup whose path is "../x": decoding must refuse it, not hand it on.
        #[derive(serde::Serialize)]
        struct RawCaller(u32, u32);
        #[derive(serde::Serialize)]
        enum RawRequest {
            #[allow(dead_code)]
            Ping,
            Lookup {
                path: Vec<u8>,
            },
        }
        #[derive(serde::Serialize)]
        struct RawFrame(RawCaller, RawRequest);
        let encode = |path: &[u8]| {
            let raw = RawFrame(
                RawCaller(0, 0),
                RawRequest::Lookup {
                    path: path.to_vec(),
                },
            );
            let mut buf = Vec::new();
            encode_frame(&raw, &mut buf).unwrap();
            buf
        };
        // The same hand encoding with a valid path decodes, so the refusal below is the path's.
        let ok = decode::<RequestFrame>(&encode(b"a/x")[4..]).unwrap();
        assert_eq!(
            ok.request,
            Request::Lookup {
                path: WirePath::new(b"a/x".to_vec()).unwrap()
            }
        );
        for bad in [&b"../x"[..], b"/etc", b"a//b", b"a\0b"] {
            assert!(decode::<RequestFrame>(&encode(bad)[4..]).is_err());
        }
    }
}
