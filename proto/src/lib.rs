//! The sessionfs wire protocol, free of I/O.
//!
//! Everything the bridge and the daemon must agree on lives here and nowhere else: the version handshake
//! ([`Hello`], [`HelloReply`]), the request and response types ([`Request`], [`Reply`]), the confined
//! relative path type ([`WirePath`]) and the frame codec (`codec.rs`). No sockets, no files: the types can be
//! tested and fuzzed on their own, the way `quinn-proto` is split from `quinn`.
//!
//! One QUIC bidirectional stream carries exactly one request frame and one response frame, so requests
//! run concurrently without head-of-line blocking. The first stream of every connection carries the
//! handshake.

#![forbid(unsafe_code)]

mod codec;
mod message;
pub mod path;

pub use codec::{
    decode, encode_frame, frame_body_len, CodecError, FRAME_HEADER_LEN, MAX_FRAME_LEN,
};
pub use message::errno;
pub use message::*;
pub use path::{PathError, WirePath};

/// The protocol version spoken by this build. A peer with another version is refused at the handshake.
pub const PROTOCOL_VERSION: u32 = 8;

/// The largest payload of one `Read` reply or one `Write` request. Larger transfers are split by the
/// client into several concurrent requests.
pub const MAX_IO_CHUNK: u32 = 1024 * 1024;

/// The most write data one [`Request::Batch`] carries (its `then` request may carry as much again).
pub const MAX_BATCH_BYTES: u32 = MAX_IO_CHUNK;

/// The most writes one [`Request::Batch`] carries (contiguous writes of a handle are merged first).
pub const MAX_BATCH_WRITES: usize = 1024;

/// The most bytes an `Open` may ask to have read with it ([`Request::Open`]'s `head`).
pub const MAX_OPEN_HEAD: u32 = 256 * 1024;

/// How long a daemon keeps a regular file that a rename replaced openable by its identity (see
/// [`Request::Open`]'s `expect`): a kernel that resolved the name just before the rename opens the
/// file it resolved, as on a local file system.
pub const REPLACED_KEEP_MS: u64 = 2_000;

/// The most replaced files a daemon keeps openable at once (the oldest goes first).
pub const REPLACED_KEEP_MAX: usize = 64;

/// The most files one `ReadHeads` reply carries.
pub const MAX_HEADS_FILES: u32 = 256;

/// The most directory entries one `ReadDir` reply carries; larger directories are paged.
pub const MAX_DIR_PAGE: u32 = 2048;
