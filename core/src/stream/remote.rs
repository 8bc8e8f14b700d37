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

/// The fields of one published event.
pub(crate) fn xadd(live_key: &str, e: &Event) -> Cmd {
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
pub(crate) fn xadd_end(live_key: &str, mark: EndMark) -> Cmd {
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
}

struct State {
    f: Follow,
    /// The id of the last entry read.
    last: String,
    buf: VecDeque<Event>,
    end: Option<Option<StreamError>>,
    done: bool,
}

/// How many entries one `XRANGE` reads.
const PAGE: usize = 512;

/// The events of a stream published by another process.
pub(crate) fn follow(f: Follow) -> EventStream {
    let state = State {
        f,
        last: "0-0".to_owned(),
        buf: VecDeque::new(),
        end: None,
        done: false,
    };
    Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        let item = st.next().await?;
        Some((item, st))
    }))
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
            match fields.iter().position(|(k, _)| &k[..] == b"end") {
                Some(i) => {
                    self.end = Some(match &fields[i].1[..] {
                        b"done" => None,
                        b"too_large" => Some(StreamError::Lagged),
                        _ => Some(StreamError::Cut),
                    });
                    break;
                }
                None => self.buf.push_back(event_of(fields)?),
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
