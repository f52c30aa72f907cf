//! Bounded mailboxes with a depth gauge.
//!
//! actix's `do_send` queues even when a mailbox is full, and its own capacity is per sender,
//! so the bound is kept here: [`Mailbox::try_send`] counts messages in flight per actor and
//! refuses past the capacity (the HTTP layer answers `503` + `Retry-After`). The count drops
//! when the actor has handled the message ([`Tracked`] carries a ticket that decrements on drop).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix::dev::ToEnvelope;
use actix::prelude::*;
use prometheus::IntGauge;

use crate::error::ActorError;

/// Decrements the mailbox depth when the message it travels with is dropped.
#[derive(Debug)]
pub struct Ticket {
    depth: Arc<AtomicUsize>,
    gauge: IntGauge,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.depth.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

/// A message plus its mailbox ticket.
#[derive(Debug)]
pub struct Tracked<M> {
    pub msg: M,
    _ticket: Ticket,
}

impl<M: Message<Result = ()>> Message for Tracked<M> {
    type Result = ();
}

/// The address of one actor with a hard bound on queued messages.
pub struct Mailbox<A: Actor> {
    addr: Addr<A>,
    depth: Arc<AtomicUsize>,
    capacity: usize,
    actor: &'static str,
    gauge: IntGauge,
    rejected: prometheus::IntCounter,
}

impl<A: Actor> Clone for Mailbox<A> {
    fn clone(&self) -> Self {
        Mailbox {
            addr: self.addr.clone(),
            depth: self.depth.clone(),
            capacity: self.capacity,
            actor: self.actor,
            gauge: self.gauge.clone(),
            rejected: self.rejected.clone(),
        }
    }
}

impl<A: Actor> Mailbox<A> {
    /// Wraps `addr`; `actor` is the metric label of the actor kind.
    pub fn new(
        addr: Addr<A>,
        capacity: usize,
        actor: &'static str,
        metrics: &crate::metrics::ActorMetrics,
    ) -> Self {
        metrics
            .mailbox_capacity
            .with_label_values(&[actor])
            .add(capacity as i64);
        Mailbox {
            addr,
            depth: Arc::new(AtomicUsize::new(0)),
            capacity,
            actor,
            gauge: metrics.mailbox_depth.with_label_values(&[actor]),
            rejected: metrics.mailbox_rejected.with_label_values(&[actor]),
        }
    }

    /// Messages currently queued or being handled.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Acquire)
    }

    /// Whether at least `n` more messages fit.
    pub fn has_room(&self, n: usize) -> bool {
        self.depth() + n <= self.capacity
    }

    fn ticket(&self) -> Ticket {
        self.depth.fetch_add(1, Ordering::AcqRel);
        self.gauge.inc();
        Ticket {
            depth: self.depth.clone(),
            gauge: self.gauge.clone(),
        }
    }

    /// Queues `msg` unless the mailbox is full.
    pub fn try_send<M>(&self, msg: M) -> Result<(), ActorError>
    where
        M: Message<Result = ()> + Send + 'static,
        A: Handler<Tracked<M>>,
        A::Context: ToEnvelope<A, Tracked<M>>,
    {
        if !self.has_room(1) {
            self.rejected.inc();
            return Err(ActorError::Overloaded { actor: self.actor });
        }
        let tracked = Tracked {
            msg,
            _ticket: self.ticket(),
        };
        self.addr.try_send(tracked).map_err(|e| match e {
            SendError::Full(_) => {
                self.rejected.inc();
                ActorError::Overloaded { actor: self.actor }
            }
            SendError::Closed(_) => ActorError::Stopped { actor: self.actor },
        })
    }

    /// Queues `msg` regardless of the bound. Only for work already admitted upstream (a
    /// shard forwarding the item side of a batch the HTTP layer accepted), whose total is
    /// bounded by the admission check.
    pub fn send_admitted<M>(&self, msg: M)
    where
        M: Message<Result = ()> + Send + 'static,
        A: Handler<Tracked<M>>,
        A::Context: ToEnvelope<A, Tracked<M>>,
    {
        let tracked = Tracked {
            msg,
            _ticket: self.ticket(),
        };
        self.addr.do_send(tracked);
    }

    /// Sends a request built around a reply channel and waits for the answer.
    pub async fn ask<M, T>(
        &self,
        make: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> M,
    ) -> Result<T, ActorError>
    where
        M: Message<Result = ()> + Send + 'static,
        A: Handler<Tracked<M>>,
        A::Context: ToEnvelope<A, Tracked<M>>,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.try_send(make(tx))?;
        rx.await
            .map_err(|_| ActorError::Stopped { actor: self.actor })
    }
}

/// Forwards a tracked message to the actor's plain handler; the ticket drops afterwards.
#[macro_export]
macro_rules! tracked_handler {
    ($actor:ty, $msg:ty) => {
        impl actix::Handler<$crate::mailbox::Tracked<$msg>> for $actor {
            type Result = ();
            fn handle(
                &mut self,
                tracked: $crate::mailbox::Tracked<$msg>,
                ctx: &mut Self::Context,
            ) -> Self::Result {
                <Self as actix::Handler<$msg>>::handle(self, tracked.msg, ctx)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::metrics::ActorMetrics;

    /// Blocks its thread until told to go, so messages pile up behind the first.
    struct Gate {
        go: mpsc::Receiver<()>,
    }

    impl Actor for Gate {
        type Context = Context<Self>;
    }

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Wait;

    impl Handler<Wait> for Gate {
        type Result = ();
        fn handle(&mut self, _: Wait, _: &mut Self::Context) {
            let _ = self.go.recv();
        }
    }

    crate::tracked_handler!(Gate, Wait);

    #[actix::test]
    async fn full_mailbox_refuses_and_recovers() {
        let (tx, rx) = mpsc::channel();
        let arbiter = Arbiter::new();
        let addr = Gate::start_in_arbiter(&arbiter.handle(), |_| Gate { go: rx });
        let metrics = ActorMetrics::unregistered();
        let mailbox = Mailbox::new(addr, 2, "gate", &metrics);
        mailbox.try_send(Wait).expect("first fits");
        mailbox.try_send(Wait).expect("second fits");
        assert_eq!(
            mailbox.try_send(Wait),
            Err(ActorError::Overloaded { actor: "gate" })
        );
        assert_eq!(
            metrics.mailbox_rejected.with_label_values(&["gate"]).get(),
            1
        );
        assert_eq!(metrics.mailbox_depth.with_label_values(&["gate"]).get(), 2);
        tx.send(()).expect("release");
        tx.send(()).expect("release");
        while mailbox.depth() > 0 {
            actix::clock::sleep(std::time::Duration::from_millis(5)).await;
        }
        mailbox.try_send(Wait).expect("room again after draining");
        tx.send(()).expect("release");
        arbiter.stop();
    }
}
