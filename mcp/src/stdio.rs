//! MCP over stdio with a bound on each incoming message that the client hears about: a front between
//! stdin/stdout and rmcp's line transport. A line longer than [`MAX_MESSAGE`] is never buffered whole; it
//! is read through to its end and answered with a JSON-RPC "invalid request" error carrying the request's
//! id ([`IdScanner`] finds it wherever it is in the line), so the client is not left waiting. rmcp alone
//! drops such a line with only a log message. Every other line passes through unchanged, and every line
//! rmcp writes reaches stdout whole (an error never lands in the middle of a response).

use std::io;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, DuplexStream};
use tokio::sync::mpsc;
use tracing::warn;

/// The longest message accepted on stdio, in bytes (a 16 MiB file written as JSON fits).
pub const MAX_MESSAGE: usize = 24 << 20;

/// The pipe size between the front and rmcp.
const PIPE: usize = 256 << 10;

/// The streams rmcp serves on (it reads requests from the first and writes responses to the
/// second), and the task that writes rmcp's responses to the output: awaited once rmcp is done, so
/// the last responses and refusals are written before the process ends.
pub(crate) type Inner = (DuplexStream, DuplexStream, tokio::task::JoinHandle<()>);

/// Starts the front over `input` and `output` and returns the streams rmcp serves on. The front's tasks
/// end when `input` ends and rmcp has closed its side.
pub(crate) fn front<R, W>(input: R, output: W) -> Inner
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (to_rmcp, rmcp_reads) = tokio::io::duplex(PIPE);
    let (rmcp_writes, from_rmcp) = tokio::io::duplex(PIPE);
    let (errors, refusals) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        if let Err(e) = pass_requests(input, to_rmcp, errors).await {
            warn!(error = %e, "reading MCP requests from stdin failed");
        }
    });
    let responses = tokio::spawn(async move {
        if let Err(e) = pass_responses(from_rmcp, refusals, output).await {
            warn!(error = %e, "writing MCP responses to stdout failed");
        }
    });
    (rmcp_reads, rmcp_writes, responses)
}

/// Copies lines of `input` to rmcp; an oversized line becomes an error response on `errors`.
async fn pass_requests<R: AsyncRead + Unpin>(
    input: R,
    mut to_rmcp: DuplexStream,
    errors: mpsc::UnboundedSender<Vec<u8>>,
) -> io::Result<()> {
    let mut input = BufReader::with_capacity(PIPE, input);
    let mut line = Vec::new();
    let mut oversized: Option<(IdScanner, usize)> = None;
    loop {
        let chunk = input.fill_buf().await?;
        if chunk.is_empty() {
            // End of input; an unterminated last line is passed on for rmcp to judge.
            if oversized.is_none() && !line.is_empty() {
                to_rmcp.write_all(&line).await?;
            }
            return to_rmcp.shutdown().await;
        }
        let newline = chunk.iter().position(|&b| b == b'\n');
        let take = newline.map_or(chunk.len(), |i| i + 1);
        let part = &chunk[..take];
        match &mut oversized {
            Some((scanner, size)) => {
                scanner.feed(part);
                *size += part.len();
            }
            None if line.len() + part.len() > MAX_MESSAGE => {
                let mut scanner = IdScanner::default();
                scanner.feed(&line);
                scanner.feed(part);
                oversized = Some((scanner, line.len() + part.len()));
                line = Vec::new();
            }
            None => line.extend_from_slice(part),
        }
        input.consume(take);
        if newline.is_none() {
            continue;
        }
        if let Some((scanner, size)) = oversized.take() {
            warn!(
                bytes = size,
                limit = MAX_MESSAGE,
                "refused an MCP message over the size limit"
            );
            if errors.send(refusal(scanner.id(), size)).is_err() {
                return Ok(());
            }
        } else {
            to_rmcp.write_all(&line).await?;
            line.clear();
        }
    }
}

/// Copies rmcp's lines to `output`, with refusals between them.
async fn pass_responses<W: AsyncWrite + Unpin>(
    from_rmcp: DuplexStream,
    mut refusals: mpsc::UnboundedReceiver<Vec<u8>>,
    mut output: W,
) -> io::Result<()> {
    let mut from_rmcp = BufReader::with_capacity(PIPE, from_rmcp);
    let mut line = Vec::new();
    let mut refusals_open = true;
    loop {
        tokio::select! {
            read = from_rmcp.read_until(b'\n', &mut line) => {
                if read? == 0 {
                    // rmcp is done; refusals already made still reach the client.
                    while let Ok(refusal) = refusals.try_recv() {
                        output.write_all(&refusal).await?;
                    }
                    return output.flush().await;
                }
                output.write_all(&line).await?;
                output.flush().await?;
                line.clear();
            }
            refusal = refusals.recv(), if refusals_open => match refusal {
                Some(refusal) => {
                    output.write_all(&refusal).await?;
                    output.flush().await?;
                }
                None => refusals_open = false,
            },
        }
    }
}

/// The JSON-RPC error line answering an oversized message of `size` bytes with id `id` (null when the
/// message had none that could be read, as JSON-RPC 2.0 asks).
fn refusal(id: Option<Value>, size: usize) -> Vec<u8> {
    let message = format!(
        "the message is {size} bytes, more than the {MAX_MESSAGE} bytes one MCP message on stdio may have; nothing was done"
    );
    let mut line = serde_json::json!({
        "jsonrpc": "2.0",
        "id": id.unwrap_or(Value::Null),
        "error": { "code": -32600, "message": message },
    })
    .to_string()
    .into_bytes();
    line.push(b'\n');
    line
}

/// Finds the top-level `"id"` of a JSON object fed to it in pieces, in constant memory: the value
/// (a number or a string of at most [`IdScanner::MAX_ID`] bytes) wherever the key appears in the object.
#[derive(Debug, Default)]
pub struct IdScanner {
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// The start of the string being read at depth 1 (enough to tell `"id"` from other keys).
    string: Vec<u8>,
    /// Whether the last depth-1 token was the string `"id"` (then a `:` makes it a key).
    after_id_string: bool,
    /// The raw value after `"id":`, while it is read.
    capture: Option<Vec<u8>>,
    /// The raw value, once read.
    found: Option<Vec<u8>>,
}

impl IdScanner {
    /// The longest id kept, in bytes; a longer one counts as no id.
    pub const MAX_ID: usize = 256;

    /// Scans the next piece of the message.
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.byte(b);
        }
    }

    fn byte(&mut self, b: u8) {
        if let Some(value) = &mut self.capture {
            let ends = !self.in_string && self.depth == 1 && (b == b',' || b == b'}');
            if ends {
                self.found = self.capture.take();
            } else if value.len() <= Self::MAX_ID {
                value.push(b);
            }
        }
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
                self.after_id_string = self.depth == 1 && self.string == b"id";
                return;
            }
            if self.depth == 1 && self.string.len() < 3 {
                self.string.push(b);
            }
            return;
        }
        match b {
            b'"' => {
                self.in_string = true;
                self.string.clear();
            }
            b'{' | b'[' => self.depth += 1,
            b'}' | b']' => self.depth = self.depth.saturating_sub(1),
            b':' if self.after_id_string && self.found.is_none() && self.capture.is_none() => {
                self.capture = Some(Vec::new());
            }
            _ => {}
        }
        if !b.is_ascii_whitespace() && b != b'"' {
            self.after_id_string = false;
        }
    }

    /// The id found: a number or a string, if the message had one at its top level.
    pub fn id(&self) -> Option<Value> {
        let raw = self.found.as_deref()?;
        if raw.len() > Self::MAX_ID {
            return None;
        }
        match serde_json::from_slice::<Value>(raw.trim_ascii()) {
            Ok(id @ (Value::Number(_) | Value::String(_))) => Some(id),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id_of(text: &str) -> Option<Value> {
        let mut s = IdScanner::default();
        // In pieces of every size, to cross every boundary.
        for piece in text.as_bytes().chunks(3) {
            s.feed(piece);
        }
        let whole = {
            let mut s = IdScanner::default();
            s.feed(text.as_bytes());
            s.id()
        };
        assert_eq!(s.id(), whole, "{text}");
        whole
    }

    #[test]
    fn finds_the_top_level_id_wherever_it_is() {
        assert_eq!(
            id_of(r#"{"jsonrpc":"2.0","id":7,"method":"ping"}"#),
            Some(json!(7))
        );
        assert_eq!(
            id_of(r#"{"method":"tools/call","params":{"id":1,"x":"\"id\":2"},"id":"a\"b"}"#),
            Some(json!("a\"b"))
        );
        assert_eq!(id_of(r#"{ "id" : 12 , "params": {}}"#), Some(json!(12)));
        assert_eq!(id_of(r#"{"params":["id",{"id":3}],"method":"x"}"#), None);
        assert_eq!(id_of(r#"{"id":{"nested":1}}"#), None);
        assert_eq!(id_of(r#"{"id":null}"#), None);
        assert_eq!(id_of(r#"{"xid":5,"idx":6}"#), None);
        assert_eq!(id_of(r#"{"note":"id","ok":1}"#), None);
        let long = format!(r#"{{"id":"{}"}}"#, "x".repeat(IdScanner::MAX_ID + 1));
        assert_eq!(id_of(&long), None);
        // A truncated message never yields a partial id.
        assert_eq!(id_of(r#"{"id":12345"#), None);
    }

    #[test]
    fn refusal_is_one_json_rpc_error_line() {
        let line = refusal(Some(json!(9)), 30 << 20);
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["id"], json!(9));
        assert_eq!(v["error"]["code"], json!(-32600));
        let v: Value = serde_json::from_slice(&refusal(None, 1)).unwrap();
        assert_eq!(v["id"], Value::Null);
    }

    #[tokio::test]
    async fn an_oversized_line_is_answered_and_the_next_passes() {
        let (client, server_in) = tokio::io::duplex(1 << 16);
        let (server_out, mut client_out) = tokio::io::duplex(1 << 16);
        let (mut rmcp_in, mut rmcp_out, _responses) = front(server_in, server_out);
        let mut client = client;
        let writer = tokio::spawn(async move {
            let big = format!(
                "{{\"jsonrpc\":\"2.0\",\"method\":\"tools/call\",\"params\":{{\"x\":\"{}\"}},\"id\":41}}\n",
                "y".repeat(MAX_MESSAGE)
            );
            client.write_all(big.as_bytes()).await.unwrap();
            client
                .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":42,\"method\":\"ping\"}\n")
                .await
                .unwrap();
            client.shutdown().await.unwrap();
        });
        // rmcp sees only the small message.
        let mut seen = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut rmcp_in, &mut seen)
            .await
            .unwrap();
        assert_eq!(
            seen,
            b"{\"jsonrpc\":\"2.0\",\"id\":42,\"method\":\"ping\"}\n"
        );
        writer.await.unwrap();
        rmcp_out.write_all(b"{\"id\":42}\n").await.unwrap();
        rmcp_out.shutdown().await.unwrap();
        drop(rmcp_out);
        let mut out = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut client_out, &mut out)
            .await
            .unwrap();
        let lines: Vec<Value> = out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        let refusal = lines.iter().find(|v| v["id"] == json!(41)).unwrap();
        assert_eq!(refusal["error"]["code"], json!(-32600));
        assert!(lines.iter().any(|v| v == &json!({"id": 42})));
    }
}
