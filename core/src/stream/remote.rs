//! A stream in flight in another process, followed through Redis.
//!
//! The leader (the process holding the lease) appends each event to a Redis Stream
//! `{prefix}:live:{key}` as it arrives (`XADD`, batched: one pipeline in flight at a time),
//! with a final entry `end` saying how the stream ended, and announces each batch on the
//! lease's release channel. A follower reads the stream from its first entry with `XRANGE`,
//! woken by those announcements where the transport has pub/sub, else polling. It ends
//! cleanly only on the leader's `end = done`; when the lease is gone and no end arrived
//! (the leader died), it ends with [`StreamError::LeaderGone`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{Event, EventStream, StreamError};
use crate::clock::SharedClock;
use crate::compute::Listener;
use crate::error::{Error, Result};
use crate::seal::Keyring;
use crate::transport::SharedTransport;
use crate::value::{Cmd, Value};

/// How a published stream ended (the `end` field of its last entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndMark {
    /// Ended as its upstream ended it.
    Done,
    /// Cut, failed or abandoned: followers must not take it as complete.
    Failed,
    /// Passed the size limit: no longer published.
    TooLarge,
}

impl EndMark {
    fn as_str(self) -> &'static str {
        match self {
            EndMark::Done => "done",
            EndMark::Failed => "failed",
            EndMark::TooLarge => "too_large",
        }
    }
}

/// What a sealed entry holds: an event, or how the stream ended.
#[derive(serde::Serialize, serde::Deserialize)]
enum Sealed {
    #[serde(rename = "event")]
    Event(Event),
    #[serde(rename = "end")]
    End(String),
}

/// Publishes entries, sealed when a keyring is given: each entry's fields are then one
/// `s` = the entry sealed under `{live key}#{its position}`, so entries can be neither read,
/// moved, reordered nor forged (a forged `end` would pass a cut stream off as whole).
pub(crate) struct Publisher {
    pub(crate) live_key: String,
    pub(crate) keyring: Option<Arc<Keyring>>,
    /// Entries published so far.
    pub(crate) seq: u64,
}

impl Publisher {
    /// The `XADD` of one event.
    pub(crate) fn event(&mut self, e: &Event) -> Result<Cmd> {
        match &self.keyring {
            Some(ring) => self.sealed(ring.clone(), &Sealed::Event(e.clone())),
            None => {
                self.seq += 1;
                Ok(xadd(&self.live_key, e))
            }
        }
    }

    /// The `XADD` of the last entry.
    pub(crate) fn end(&mut self, mark: EndMark) -> Result<Cmd> {
        match &self.keyring {
            Some(ring) => self.sealed(ring.clone(), &Sealed::End(mark.as_str().to_owned())),
            None => {
                self.seq += 1;
                Ok(xadd_end(&self.live_key, mark))
            }
        }
    }

    fn sealed(&mut self, ring: Arc<Keyring>, entry: &Sealed) -> Result<Cmd> {
        let plain = serde_json::to_vec(entry).map_err(|e| Error::Serialize(e.to_string()))?;
        let aad = format!("{}#{}", self.live_key, self.seq);
        let sealed = ring.seal(aad.as_bytes(), &plain)?;
        self.seq += 1;
        Ok(Cmd::new("XADD")
            .arg(self.live_key.as_str())
            .arg("*")
            .arg("s")
            .arg(sealed))
    }
}

/// The fields of one published event.
fn xadd(live_key: &str, e: &Event) -> Cmd {
    let mut cmd = Cmd::new("XADD").arg(live_key).arg("*");
    if let Some(name) = &e.event {
        cmd = cmd.arg("e").arg(name.as_str());
    }
    if let Some(id) = &e.id {
        cmd = cmd.arg("i").arg(id.as_str());
    }
    if e.t > 0 {
        cmd = cmd.arg("t").arg(e.t.to_string());
    }
    cmd.arg("d").arg(e.data.as_str())
}

/// The last entry of a published stream.
fn xadd_end(live_key: &str, mark: EndMark) -> Cmd {
    Cmd::new("XADD")
        .arg(live_key)
        .arg("*")
        .arg("end")
        .arg(mark.as_str())
}

/// What a follower needs.
pub(crate) struct Follow {
    pub(crate) transport: SharedTransport,
    pub(crate) live_key: String,
    pub(crate) lock_key: String,
    /// The leader's lease token: the stream is alive while the lock holds it.
    pub(crate) lock_token: Bytes,
    pub(crate) listener: Listener,
    pub(crate) clock: SharedClock,
    /// The longest wait between two reads.
    pub(crate) poll: Duration,
    /// Opens sealed entries (and refuses clear ones) when set.
    pub(crate) keyring: Option<Arc<Keyring>>,
}

struct State {
    f: Follow,
    /// The id of the last entry read.
    last: String,
    buf: VecDeque<Event>,
    end: Option<Option<StreamError>>,
    done: bool,
    /// Entries read so far.
    seq: u64,
}

/// How many entries one `XRANGE` reads.
const PAGE: usize = 512;

/// The events of a stream published by another process, and whether the first read
/// found it already complete (every event and a `done` end in one page): then it is a
/// recording to replay, not a stream in flight.
pub(crate) async fn follow(f: Follow) -> (EventStream, bool) {
    let mut state = State {
        f,
        last: "0-0".to_owned(),
        buf: VecDeque::new(),
        end: None,
        done: false,
        seq: 0,
    };
    let complete = match state.read(false).await {
        Ok(_) => matches!(state.end, Some(None)),
        Err(e) => {
            // The events read before the failure, then the error.
            state.end = Some(Some(StreamError::Cache(Arc::new(e))));
            false
        }
    };
    let events: EventStream = Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        let item = st.next().await?;
        Some((item, st))
    }));
    (events, complete)
}

impl State {
    async fn next(&mut self) -> Option<std::result::Result<Event, StreamError>> {
        loop {
            if let Some(e) = self.buf.pop_front() {
                return Some(Ok(e));
            }
            if self.done {
                return None;
            }
            if let Some(end) = self.end.take() {
                self.done = true;
                return end.map(Err);
            }
            let (got, leader_alive) = match self.read(true).await {
                Ok(r) => r,
                Err(e) => return Some(self.fail(StreamError::Cache(Arc::new(e)))),
            };
            if got {
                continue;
            }
            if !leader_alive {
                // The lease is gone without an end entry, unless the end landed between
                // the read and the lease check: read once more.
                match self.read(false).await {
                    Ok((true, _)) => continue,
                    Ok(_) => return Some(self.fail(StreamError::LeaderGone)),
                    Err(e) => return Some(self.fail(StreamError::Cache(Arc::new(e)))),
                }
            }
            let poll = self.f.poll;
            self.f.listener.wait(&*self.f.clock, poll).await;
        }
    }

    fn fail(&mut self, e: StreamError) -> std::result::Result<Event, StreamError> {
        self.done = true;
        Err(e)
    }

    /// Reads the entries after the last one (and, with `check_leader`, whether the lease is
    /// still held). Returns whether anything arrived.
    async fn read(&mut self, check_leader: bool) -> Result<(bool, bool)> {
        let range = Cmd::new("XRANGE")
            .arg(self.f.live_key.as_str())
            .arg(format!("({}", self.last))
            .arg("+")
            .arg("COUNT")
            .arg(PAGE.to_string());
        let replies = if check_leader {
            let lock = Cmd::new("GET").arg(self.f.lock_key.as_str());
            self.f.transport.pipeline(vec![range, lock]).await?
        } else {
            vec![self.f.transport.exec(range).await?]
        };
        let mut replies = replies.into_iter();
        let entries = match crate::transport::server(replies.next().unwrap_or(Value::Nil))? {
            Value::Array(entries) => entries,
            Value::Nil => Vec::new(),
            other => return Err(unexpected(format!("XRANGE replied {other:?}"))),
        };
        let alive = match replies.next() {
            Some(v) => crate::transport::bulk_opt("GET", v)?.as_ref() == Some(&self.f.lock_token),
            None => true,
        };
        let got = !entries.is_empty();
        for entry in entries {
            let (id, fields) = entry_of(entry)?;
            self.last = id;
            let entry = match &self.f.keyring {
                Some(ring) => open_entry(ring, &self.f.live_key, self.seq, &fields)?,
                None => match fields.iter().position(|(k, _)| &k[..] == b"end") {
                    Some(i) => Sealed::End(String::from_utf8_lossy(&fields[i].1).into_owned()),
                    None => Sealed::Event(event_of(fields)?),
                },
            };
            self.seq += 1;
            match entry {
                Sealed::End(mark) => {
                    self.end = Some(match mark.as_str() {
                        "done" => None,
                        "too_large" => Some(StreamError::Lagged),
                        _ => Some(StreamError::Cut),
                    });
                    break;
                }
                Sealed::Event(e) => self.buf.push_back(e),
            }
        }
        Ok((got, alive))
    }
}

fn unexpected(detail: String) -> Error {
    Error::UnexpectedReply {
        command: "XRANGE",
        detail,
    }
}

/// `[id, [field, value, …]]`.
fn entry_of(v: Value) -> Result<(String, Vec<(Bytes, Bytes)>)> {
    let Value::Array(mut parts) = v else {
        return Err(unexpected("an entry is not an array".into()));
    };
    if parts.len() != 2 {
        return Err(unexpected("an entry is not [id, fields]".into()));
    }
    let fields = parts.pop().expect("two parts");
    let id = match parts.pop().expect("two parts") {
        Value::Bulk(b) => String::from_utf8(b.to_vec())
            .map_err(|_| unexpected("an entry id is not UTF-8".into()))?,
        Value::Status(s) => s,
        _ => return Err(unexpected("an entry id is not a string".into())),
    };
    let Value::Array(flat) = fields else {
        return Err(unexpected("entry fields are not an array".into()));
    };
    let mut pairs = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(Value::Bulk(k)), Some(Value::Bulk(v))) = (it.next(), it.next()) {
        pairs.push((k, v));
    }
    Ok((id, pairs))
}

/// A sealed entry, opened: anything that does not open (clear, moved, reordered, altered,
/// or under a key this ring lacks) is an error, never an event.
fn open_entry(
    ring: &Keyring,
    live_key: &str,
    seq: u64,
    fields: &[(Bytes, Bytes)],
) -> Result<Sealed> {
    let sealed = fields
        .iter()
        .find(|(k, _)| &k[..] == b"s")
        .map(|(_, v)| v)
        .ok_or_else(|| unexpected("a clear entry in an encrypted stream".into()))?;
    let aad = format!("{live_key}#{seq}");
    let plain = ring
        .open(aad.as_bytes(), sealed)
        .ok_or_else(|| unexpected("an entry that does not open with this keyring".into()))?;
    serde_json::from_slice(&plain).map_err(|e| unexpected(format!("a sealed entry: {e}")))
}

fn event_of(fields: Vec<(Bytes, Bytes)>) -> Result<Event> {
    let text = |b: Bytes| {
        String::from_utf8(b.to_vec()).map_err(|_| unexpected("a field is not UTF-8".into()))
    };
    let mut e = Event::data(String::new());
    for (k, v) in fields {
        match &k[..] {
            b"e" => e.event = Some(text(v)?),
            b"i" => e.id = Some(text(v)?),
            b"d" => e.data = text(v)?,
            b"t" => e.t = text(v)?.parse().unwrap_or(0),
            _ => {}
        }
    }
    Ok(e)
}
