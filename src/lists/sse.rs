//! A list answer as a Server-Sent Events stream (Streamable HTTP's `text/event-stream`),
//! rewritten as it streams.
//!
//! Bytes are cut into events at their blank line (lines end in CRLF, LF or CR, as the SSE
//! specification reads them, whatever chunk boundary falls inside a line, a CRLF or a UTF-8
//! character). An event passes the moment it is complete and untouched unless its data is the
//! JSON-RPC response to the list request, which is re-encoded filtered (its `id:`, `event:` and
//! `retry:` lines kept). An event's data that is not a JSON-RPC message, or an event that grows
//! past [`MAX_LIST_BYTES`], ends the stream with a JSON-RPC error for the request instead:
//! what has not passed yet never does. Bytes after the last blank line when the stream ends
//! are an incomplete event, which SSE clients drop, and so are dropped here.

use super::ListError;
use super::filter::{MAX_LIST_BYTES, Rewrite};

/// The state of one stream.
#[derive(Debug, Default)]
pub struct SseRewriter {
    /// Bytes of the event in progress.
    pending: Vec<u8>,
    /// Where scanning for the event's end resumes in `pending`.
    scanned: usize,
    /// The stream's first bytes were seen (a leading BOM is dropped there).
    started: bool,
    /// The stream failed: nothing more passes.
    failed: bool,
    /// List answers rewritten so far, and items hidden by them.
    pub filtered: usize,
    pub hidden: usize,
}

impl SseRewriter {
    /// Takes the next chunk; returns the bytes to pass on in its place. `rewrite` decides on
    /// one event's data; on its error the returned bytes end with `error_event` (the error
    /// answer for the request) and the stream passes nothing more.
    pub fn push(
        &mut self,
        chunk: &[u8],
        end_of_stream: bool,
        rewrite: &mut dyn FnMut(&[u8]) -> Result<Rewrite, ListError>,
        error_event: &dyn Fn(&ListError) -> Vec<u8>,
    ) -> Result<Vec<u8>, (Vec<u8>, ListError)> {
        if self.failed {
            return Ok(Vec::new());
        }
        let mut chunk = chunk;
        if !self.started && !chunk.is_empty() {
            self.started = true;
            chunk = chunk.strip_prefix(b"\xef\xbb\xbf").unwrap_or(chunk);
        }
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(end) = self.event_end(end_of_stream) {
            let event: Vec<u8> = self.pending.drain(..end).collect();
            self.scanned = 0;
            match self.one_event(&event, rewrite) {
                Ok(bytes) => out.extend_from_slice(&bytes),
                Err(e) => return Err(self.fail(out, e, error_event)),
            }
        }
        if self.pending.len() > MAX_LIST_BYTES {
            return Err(self.fail(out, ListError::TooLarge, error_event));
        }
        if end_of_stream {
            self.pending.clear();
        }
        Ok(out)
    }

    fn fail(
        &mut self,
        mut out: Vec<u8>,
        e: ListError,
        error_event: &dyn Fn(&ListError) -> Vec<u8>,
    ) -> (Vec<u8>, ListError) {
        self.failed = true;
        self.pending = Vec::new();
        out.extend_from_slice(&error_event(&e));
        (out, e)
    }

    /// The length of the first complete event in `pending` (through its blank line).
    fn event_end(&mut self, end_of_stream: bool) -> Option<usize> {
        let p = &self.pending;
        let mut i = self.scanned;
        // Whether the previous byte ended a line (the event's start counts as a line start).
        let mut line_start = i == 0 || matches!(p.get(i - 1), Some(b'\n' | b'\r'));
        while i < p.len() {
            match p[i] {
                b'\r' => {
                    // CR LF is one line end; a CR last in the buffer waits for the next byte.
                    let crlf = match p.get(i + 1) {
                        Some(b'\n') => true,
                        Some(_) => false,
                        None if end_of_stream => false,
                        None => {
                            self.scanned = i;
                            return None;
                        }
                    };
                    let next = i + if crlf { 2 } else { 1 };
                    if line_start {
                        return Some(next);
                    }
                    line_start = true;
                    i = next;
                }
                b'\n' => {
                    if line_start {
                        return Some(i + 1);
                    }
                    line_start = true;
                    i += 1;
                }
                _ => {
                    line_start = false;
                    i += 1;
                }
            }
        }
        self.scanned = i;
        None
    }

    /// One complete event: as it came, or rewritten.
    fn one_event(
        &mut self,
        event: &[u8],
        rewrite: &mut dyn FnMut(&[u8]) -> Result<Rewrite, ListError>,
    ) -> Result<Vec<u8>, ListError> {
        // The data is its `data` lines' values joined with LF, as SSE clients read it.
        let mut data_lines: Vec<&[u8]> = Vec::new();
        let mut other_lines: Vec<&[u8]> = Vec::new();
        for line in lines(event) {
            if line.is_empty() || line[0] == b':' {
                continue;
            }
            let (field, value) = match line.iter().position(|&b| b == b':') {
                Some(c) => {
                    let v = &line[c + 1..];
                    (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
                }
                None => (line, &b""[..]),
            };
            if field == b"data" {
                data_lines.push(value);
            } else {
                other_lines.push(line);
            }
        }
        let data = (!data_lines.is_empty()).then(|| data_lines.join(&b'\n'));
        let Some(data) = data else {
            return Ok(event.to_vec());
        };
        if data.iter().all(u8::is_ascii_whitespace) {
            // An empty message (some servers prime the stream with one): nothing to decide.
            return Ok(event.to_vec());
        }
        match rewrite(&data)? {
            Rewrite::Unchanged => Ok(event.to_vec()),
            Rewrite::Filtered { body, hidden, .. } => {
                self.filtered += 1;
                self.hidden += hidden;
                let mut out = Vec::with_capacity(body.len() + 64);
                for l in other_lines {
                    out.extend_from_slice(l);
                    out.push(b'\n');
                }
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&body);
                out.extend_from_slice(b"\n\n");
                Ok(out)
            }
        }
    }
}

/// The lines of one event, without their ends.
fn lines(event: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = event;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest.iter().position(|&b| b == b'\n' || b == b'\r');
        let (line, next) = match end {
            None => (rest, &rest[rest.len()..]),
            Some(e) => {
                let skip = if rest[e] == b'\r' && rest.get(e + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                (&rest[..e], &rest[e + skip..])
            }
        };
        rest = next;
        Some(line)
    })
}
