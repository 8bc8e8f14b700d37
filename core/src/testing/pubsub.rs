//! Pub/sub of [`MemTransport`](super::MemTransport) through the [`Transport`](crate::Transport)
//! API: [`MemSubscription`] is a [`Subscription`].

use std::task::{Context, Poll};

use super::MemSubscription;
use crate::transport::{Message, Subscription};

impl Subscription for MemSubscription {
    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        let mut q = self.shared.queue.lock();
        match q.messages.pop_front() {
            Some((channel, payload)) => Poll::Ready(Some(Message::new(channel, payload))),
            None => {
                q.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::MemTransport;
    use crate::transport::{Transport, next_message};
    use crate::value::Cmd;
    use futures_executor::block_on;

    #[test]
    fn subscribe_through_the_transport_receives_publishes() {
        block_on(async {
            let t = MemTransport::new();
            assert!(t.supports_pubsub());
            let mut sub = Transport::subscribe(&t, b"chan").await.unwrap();
            let n = t
                .exec(Cmd::new("PUBLISH").arg("chan").arg("hello"))
                .await
                .unwrap();
            assert_eq!(n.as_int(), Some(1));
            let m = next_message(&mut sub).await.unwrap();
            assert_eq!(
                (&m.channel[..], &m.payload[..]),
                (&b"chan"[..], &b"hello"[..])
            );
            drop(sub);
            let n = t
                .exec(Cmd::new("PUBLISH").arg("chan").arg("again"))
                .await
                .unwrap();
            assert_eq!(n.as_int(), Some(0), "dropping unsubscribes");
        });
    }

    #[test]
    fn psubscribe_receives_matching_channels_with_their_names() {
        block_on(async {
            let t = MemTransport::new();
            let mut sub = Transport::psubscribe(&t, b"user:*").await.unwrap();
            for (ch, m) in [("user:1", "a"), ("other", "b"), ("user:2", "c")] {
                t.exec(Cmd::new("PUBLISH").arg(ch).arg(m)).await.unwrap();
            }
            let first = next_message(&mut sub).await.unwrap();
            let second = next_message(&mut sub).await.unwrap();
            assert_eq!(
                [
                    (&first.channel[..], &first.payload[..]),
                    (&second.channel[..], &second.payload[..])
                ],
                [(&b"user:1"[..], &b"a"[..]), (&b"user:2"[..], &b"c"[..])]
            );
        });
    }

    #[test]
    fn subscribe_fails_while_down() {
        block_on(async {
            let t = MemTransport::new();
            t.set_down(true);
            assert!(Transport::subscribe(&t, b"chan").await.is_err());
        });
    }
}
