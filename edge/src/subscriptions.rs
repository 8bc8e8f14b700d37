//! Subscriptions over HTTP: one event stream (`POST /subscribe/…`) per channel or pattern per
//! transport, shared by every subscriber of it — as the native transport shares one Redis
//! subscription — so a thousand lease waiters in one process cost one HTTP request held open,
//! not a thousand.
//!
//! No runtime: whichever subscriber polls reads the stream and hands each message to every
//! subscriber's queue. The stream is polled with a waker that wakes every subscriber waiting
//! (a subscriber that polled it last may have stopped listening).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use larder_core::TransportError;
use larder_core::rest::{Encoding, PubSubFrame};
use larder_core::runtime::FanOutWaker;
use larder_core::stream::SseParser;
use larder_core::transport::{BoxSubscription, Message, Subscription};
use parking_lot::Mutex;

use crate::http::ByteStream;

/// The longest subscription frame read (a message's payload, base64): 8 MiB.
const MAX_FRAME: usize = 8 << 20;

/// Topics kept before dead ones are swept.
const SWEEP_ABOVE: usize = 64;

/// A channel (`false`) or pattern (`true`) and its name.
pub(crate) type Topic = (bool, Bytes);

/// The event streams of one transport, by topic.
#[derive(Default)]
pub(crate) struct Subscriptions {
    topics: Mutex<HashMap<Topic, Arc<Slot>>>,
}

impl fmt::Debug for Subscriptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriptions")
            .field("topics", &self.topics.lock().len())
            .finish()
    }
}

/// One topic: its stream while someone listens, and a lock held while it is being opened
/// (concurrent subscribers wait for that one stream instead of opening their own).
#[derive(Default)]
struct Slot {
    opening: futures_util::lock::Mutex<()>,
    stream: Mutex<Weak<Stream>>,
}

impl Slot {
    fn live(&self) -> Option<Arc<Stream>> {
        self.stream
            .lock()
            .upgrade()
            .filter(|s| !s.state.lock().ended)
    }
}

impl Subscriptions {
    /// A subscription to `topic`: on the topic's stream if one is open, else on a stream
    /// `open` opens.
    pub(crate) async fn subscribe<F, Fut>(
        &self,
        topic: Topic,
        open: F,
    ) -> Result<BoxSubscription, TransportError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Pin<Box<dyn ByteStream>>, TransportError>>,
    {
        let slot = {
            let mut topics = self.topics.lock();
            if topics.len() > SWEEP_ABOVE {
                topics.retain(|_, s| {
                    s.stream.lock().strong_count() > 0 || s.opening.try_lock().is_none()
                });
            }
            topics.entry(topic).or_default().clone()
        };
        if let Some(stream) = slot.live() {
            return Ok(Box::new(stream.join()));
        }
        let _opening = slot.opening.lock().await;
        if let Some(stream) = slot.live() {
            return Ok(Box::new(stream.join()));
        }
        let stream = Arc::new(Stream::new(open().await?));
        *slot.stream.lock() = Arc::downgrade(&stream);
        Ok(Box::new(stream.join()))
    }
}

/// One event stream and the queues of its subscribers.
struct Stream {
    state: Mutex<State>,
    /// The waker the stream is polled with: wakes every subscriber waiting.
    wakers: Arc<FanOutWaker>,
}

struct State {
    body: Pin<Box<dyn ByteStream>>,
    parser: SseParser,
    ended: bool,
    queues: HashMap<u64, VecDeque<Message>>,
    next_id: u64,
}

impl Stream {
    fn new(body: Pin<Box<dyn ByteStream>>) -> Stream {
        Stream {
            state: Mutex::new(State {
                body,
                parser: SseParser::with_max_line(MAX_FRAME),
                ended: false,
                queues: HashMap::new(),
                next_id: 0,
            }),
            wakers: Arc::default(),
        }
    }

    fn join(self: Arc<Self>) -> RestSubscription {
        let id = {
            let mut st = self.state.lock();
            let id = st.next_id;
            st.next_id += 1;
            st.queues.insert(id, VecDeque::new());
            id
        };
        RestSubscription { stream: self, id }
    }
}

/// A subscription over HTTP. It ends (it does not resume) when its stream does; subscribe
/// again.
pub(crate) struct RestSubscription {
    stream: Arc<Stream>,
    id: u64,
}

impl fmt::Debug for RestSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.stream.state.lock();
        f.debug_struct("RestSubscription")
            .field("subscribers", &st.queues.len())
            .field("ended", &st.ended)
            .finish_non_exhaustive()
    }
}

impl Subscription for RestSubscription {
    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        let stream = &*self.stream;
        let mut st = stream.state.lock();
        let st = &mut *st;
        loop {
            if let Some(m) = st.queues.get_mut(&self.id).and_then(VecDeque::pop_front) {
                return Poll::Ready(Some(m));
            }
            if st.ended {
                return Poll::Ready(None);
            }
            // Register before polling: a chunk that arrives meanwhile wakes this task too.
            stream.wakers.register(self.id, cx.waker());
            let fan_out = Waker::from(stream.wakers.clone());
            match st
                .body
                .as_mut()
                .poll_next(&mut Context::from_waker(&fan_out))
            {
                Poll::Ready(Some(Ok(chunk))) => {
                    let mut events = Vec::new();
                    if st.parser.push(&chunk, &mut events).is_err() {
                        st.ended = true;
                    }
                    let mut delivered = false;
                    for event in events {
                        if let Some(
                            PubSubFrame::Message { channel, payload }
                            | PubSubFrame::PMessage {
                                channel, payload, ..
                            },
                        ) = PubSubFrame::parse(&event.data, Encoding::Base64)
                        {
                            let m = Message::new(channel, payload);
                            for q in st.queues.values_mut() {
                                q.push_back(m.clone());
                            }
                            delivered = true;
                        }
                    }
                    if delivered || st.ended {
                        stream.wakers.unregister(self.id);
                        stream.wakers.wake_all();
                    }
                }
                Poll::Ready(Some(Err(_)) | None) => {
                    st.ended = true;
                    stream.wakers.wake_all();
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for RestSubscription {
    fn drop(&mut self) {
        self.stream.state.lock().queues.remove(&self.id);
        self.stream.wakers.unregister(self.id);
        // This subscriber may have been the one the stream would wake: let the others look.
        self.stream.wakers.wake_all();
    }
}
