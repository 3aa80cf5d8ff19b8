//! Coarse deadlines for reading request heads (slowloris), much cheaper per request than a timer each.
//!
//! A tokio timer per request head costs the clock read, the timer wheel's lock on insert and again on removal
//! (measured in `bench/PERFORMANCE.md`: a large share of what the balancer added over a bare Pingora proxy). A head
//! deadline needs no millisecond precision, so each worker thread keeps a table of the heads it waits for,
//! stamped with a tick count, and one sweeper task per thread advances the tick every [`TICK`] and wakes
//! whoever is past due. Arming is a table
//! insert under an uncontended lock, with no clock read; a deadline fires up to one tick late.
//!
//! [`UntilHead`] puts a request's whole processing under such a deadline until the request's code calls
//! [`head_read`], which it can only do from inside that same poll: a thread runs one task's poll at a time.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// How often each thread's sweeper runs: the resolution of every head deadline.
pub const TICK: Duration = Duration::from_millis(100);

thread_local! {
    /// This worker thread's table; made, with its sweeper, by the first deadline armed on the thread.
    static TABLE: Arc<Table> = Table::start();
}

/// One thread's armed deadlines.
struct Table {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Ticks since the sweeper started.
    now: u64,
    slots: Vec<Option<Entry>>,
    free: Vec<usize>,
}

struct Entry {
    /// The first tick at which the deadline has passed.
    due: u64,
    waker: Waker,
    expired: bool,
}

impl Table {
    fn start() -> Arc<Table> {
        let table = Arc::new(Table {
            inner: Mutex::new(Inner::default()),
        });
        // Outside a runtime there is nothing to sweep for: no request is served there.
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(sweep(Arc::downgrade(&table)));
        }
        table
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere cannot leave the table half-written: every change is one assignment.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    /// Advances one tick; wakes every entry that became due.
    fn advance(&mut self) {
        self.now += 1;
        for e in self.slots.iter_mut().flatten() {
            if !e.expired && e.due <= self.now {
                e.expired = true;
                e.waker.wake_by_ref();
            }
        }
    }
}

/// Runs while its table is in use (the thread-local holds it for the thread's life).
async fn sweep(table: std::sync::Weak<Table>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        interval.tick().await;
        let Some(table) = table.upgrade() else { return };
        table.lock().advance();
    }
}

/// A deadline armed on the current thread's table; disarmed when dropped.
pub struct HeadDeadline {
    table: Arc<Table>,
    slot: usize,
}

impl HeadDeadline {
    /// Arms a deadline `after` from now (rounded up to whole ticks, plus up to one tick of the current one);
    /// `waker` is woken once it passes.
    pub fn arm(after: Duration, waker: &Waker) -> HeadDeadline {
        let table = TABLE.with(Arc::clone);
        let ticks = after.as_nanos().div_ceil(TICK.as_nanos()).max(1) as u64;
        let slot = {
            let mut t = table.lock();
            let entry = Entry {
                due: t.now + ticks,
                waker: waker.clone(),
                expired: false,
            };
            match t.free.pop() {
                Some(i) => {
                    t.slots[i] = Some(entry);
                    i
                }
                None => {
                    t.slots.push(Some(entry));
                    t.slots.len() - 1
                }
            }
        };
        HeadDeadline { table, slot }
    }

    /// Whether the deadline has passed; otherwise `waker` is the one woken when it does.
    pub fn expired(&self, waker: &Waker) -> bool {
        let mut t = self.table.lock();
        let Some(e) = t.slots[self.slot].as_mut() else {
            return true;
        };
        if !e.waker.will_wake(waker) {
            e.waker = waker.clone();
        }
        e.expired
    }
}

impl Drop for HeadDeadline {
    fn drop(&mut self) {
        let mut t = self.table.lock();
        t.slots[self.slot] = None;
        t.free.push(self.slot);
    }
}

thread_local! {
    /// Set by [`head_read`] during the poll of an [`UntilHead`] future.
    static HEAD_SEEN: Cell<bool> = const { Cell::new(false) };
}

/// Tells the [`UntilHead`] being polled on this thread that its request head is in; a no-op elsewhere.
pub fn head_read() {
    HEAD_SEEN.with(|s| s.set(true));
}

/// A request's processing, given up (resolving to `None`) if its head is not in within the deadline.
pub struct UntilHead<F> {
    inner: F,
    after: Duration,
    /// `None` once the head is in; until then the deadline, once the inner future has had to wait.
    waiting: Option<Option<HeadDeadline>>,
}

impl<F> UntilHead<F> {
    /// `inner` must call [`head_read`] (from within its own poll) once the head is complete.
    pub fn new(inner: F, after: Duration) -> UntilHead<F> {
        UntilHead {
            inner,
            after,
            waiting: Some(None),
        }
    }
}

impl<F, T> Future for UntilHead<F>
where
    F: Future<Output = Option<T>> + Unpin,
{
    type Output = Option<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let this = &mut *self;
        let Some(armed) = this.waiting.as_mut() else {
            return Pin::new(&mut this.inner).poll(cx);
        };
        HEAD_SEEN.with(|s| s.set(false));
        if let Poll::Ready(done) = Pin::new(&mut this.inner).poll(cx) {
            return Poll::Ready(done);
        }
        if HEAD_SEEN.with(Cell::get) {
            this.waiting = None;
            return Poll::Pending;
        }
        let Some(d) = armed else {
            // Just armed: at least a tick away.
            *armed = Some(HeadDeadline::arm(this.after, cx.waker()));
            return Poll::Pending;
        };
        if d.expired(cx.waker()) {
            tracing::info!(
                deadline = ?this.after,
                "closing a connection that did not send a request head in time"
            );
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Poll, Wake};

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Lets the sweeper run for `d` of paused time.
    async fn pass(d: Duration) {
        tokio::time::sleep(d).await;
        tokio::task::yield_now().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_expires_within_one_tick_after_it_is_due_and_wakes_its_task() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let d = HeadDeadline::arm(Duration::from_millis(500), &waker);
        pass(Duration::from_millis(450)).await;
        assert!(!d.expired(&waker));
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        pass(TICK * 2).await;
        assert!(d.expired(&waker));
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "woken once");
        pass(TICK * 3).await;
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "not woken again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_deadline_frees_its_slot_for_the_next_and_never_wakes() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let first = HeadDeadline::arm(Duration::from_millis(100), &waker);
        let slot = first.slot;
        drop(first);
        let second = HeadDeadline::arm(Duration::from_secs(10), &waker);
        assert_eq!(second.slot, slot);
        pass(Duration::from_secs(1)).await;
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        assert!(!second.expired(&waker));
    }

    #[tokio::test(start_paused = true)]
    async fn the_latest_waker_is_the_one_woken() {
        let old = Arc::new(Count(AtomicUsize::new(0)));
        let new = Arc::new(Count(AtomicUsize::new(0)));
        let d = HeadDeadline::arm(Duration::from_millis(200), &Waker::from(old.clone()));
        assert!(!d.expired(&Waker::from(new.clone())));
        pass(Duration::from_millis(400)).await;
        assert_eq!(old.0.load(Ordering::SeqCst), 0);
        assert_eq!(new.0.load(Ordering::SeqCst), 1);
    }

    /// Pending forever; calls `head_read` on its `head_at`-th poll when given one, and until then asks to be
    /// polled again, as a request whose head trickles in would be.
    struct Request {
        polls: usize,
        head_at: Option<usize>,
    }

    impl Future for Request {
        type Output = Option<()>;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<()>> {
            self.polls += 1;
            match self.head_at {
                Some(n) if self.polls == n => head_read(),
                Some(n) if self.polls < n => cx.waker().wake_by_ref(),
                _ => {}
            }
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_whose_head_never_completes_is_given_up_at_its_deadline() {
        let req = Request {
            polls: 0,
            head_at: None,
        };
        let started = tokio::time::Instant::now();
        let out = UntilHead::new(req, Duration::from_millis(500)).await;
        assert_eq!(out, None);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(500) && waited <= Duration::from_millis(500) + TICK,
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_whose_head_is_in_is_no_longer_held_to_the_deadline() {
        let fut = UntilHead::new(
            Request {
                polls: 0,
                head_at: Some(3),
            },
            Duration::from_millis(200),
        );
        let out = tokio::time::timeout(Duration::from_secs(2), fut).await;
        assert!(out.is_err(), "still running after the deadline: {out:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_waiting_on_its_deadline_is_resumed_by_the_sweeper() {
        let d =
            poll_fn(|cx| Poll::Ready(HeadDeadline::arm(Duration::from_millis(300), cx.waker())))
                .await;
        let started = tokio::time::Instant::now();
        poll_fn(|cx| {
            if d.expired(cx.waker()) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited <= Duration::from_millis(300) + TICK,
            "{waited:?}"
        );
    }
}
