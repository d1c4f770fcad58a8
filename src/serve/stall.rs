//! Callers that stop taking their answer are cut off after `timeouts.client_send`: a caller,
//! with or without a token, must not hold a connection, a stream or an access-log slot by not
//! reading. Two watchdogs, one per level at which a caller can stall:
//!
//! - [`StallGuard`] wraps a connection's socket: a write that cannot proceed (the caller's
//!   receive window is full) for `client_send` fails, and the connection ends. This is the
//!   per-connection timeout for HTTP/1.1, and covers an HTTP/2 caller that reads nothing.
//! - [`StreamExec`] runs each HTTP/2 stream with a [`Progress`] of its own: a stream whose
//!   answer the caller gives no flow-control window for `client_send` is dropped, which resets
//!   it (`RST_STREAM`), while the connection's other streams go on.
//!
//! Either way the exchange still writes its record, with the reason `client_stalled`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A timer armed when something starts waiting on the caller, and reset on progress.
pub(crate) struct Watch {
    limit: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl Watch {
    pub(crate) fn new(limit: Duration) -> Watch {
        Watch { limit, sleep: None, armed: false }
    }

    /// Waiting on the caller: `true` once that has lasted `limit`.
    pub(crate) fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.armed {
            let deadline = Instant::now() + self.limit;
            match &mut self.sleep {
                Some(s) => s.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        self.sleep.as_mut().is_some_and(|s| s.as_mut().poll(cx).is_ready())
    }

    pub(crate) fn progressed(&mut self) {
        self.armed = false;
    }
}

/// A socket whose writes give up after `limit` without progress, raising `cut`.
pub struct StallGuard<IO> {
    io: IO,
    watch: Watch,
    cut: Arc<AtomicBool>,
}

impl<IO> StallGuard<IO> {
    pub fn new(io: IO, limit: Duration, cut: Arc<AtomicBool>) -> Self {
        StallGuard { io, watch: Watch::new(limit), cut }
    }

    fn guard<T>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.watch.progressed();
            return polled;
        }
        if !self.watch.expired(cx) {
            return Poll::Pending;
        }
        self.cut.store(true, Ordering::Relaxed);
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the caller stopped reading (client_send)")))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for StallGuard<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for StallGuard<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.guard(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.guard(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.guard(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_shutdown(cx);
        this.guard(cx, polled)
    }
}

tokio::task_local! {
    static STREAM: Arc<Progress>;
}

/// How an HTTP/2 stream's answer is moving, shared by its body and its watchdog.
#[derive(Debug, Default)]
pub struct Progress {
    /// Times the HTTP layer asked the answer for more: it does so only with window to send.
    pulls: AtomicU64,
    /// The answer waits on the upstream, not on the caller.
    upstream_pending: AtomicBool,
    /// The answer's head is out: from now on the stream may wait on the caller.
    answering: AtomicBool,
    /// The watchdog cut the stream off.
    pub cut: AtomicBool,
}

impl Progress {
    /// The progress of the HTTP/2 stream this code runs in (`None` outside [`StreamExec`]).
    pub fn current() -> Option<Arc<Progress>> {
        STREAM.try_with(Arc::clone).ok()
    }

    pub fn answering(&self) {
        self.answering.store(true, Ordering::Relaxed);
    }
}

/// hyper's executor for HTTP/2 streams: each stream runs in a task of its own under a
/// watchdog (the service's future runs inside that task, so it finds its [`Progress`]),
/// tracked with its connection's, so that shutdown can end them and wait for their records.
#[derive(Clone)]
pub struct StreamExec {
    limit: Duration,
    tasks: tokio_util::task::TaskTracker,
    kill: tokio_util::sync::CancellationToken,
    count: Arc<StreamCount>,
}

/// The streams of one HTTP/2 connection: how many are open, how many were ever started.
#[derive(Debug, Default)]
pub struct StreamCount {
    open: std::sync::atomic::AtomicUsize,
    started: AtomicU64,
}

impl StreamCount {
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }
}

impl StreamExec {
    pub fn new(
        limit: Duration,
        tasks: tokio_util::task::TaskTracker,
        kill: tokio_util::sync::CancellationToken,
    ) -> StreamExec {
        StreamExec { limit, tasks, kill, count: Arc::default() }
    }

    pub fn count(&self) -> Arc<StreamCount> {
        self.count.clone()
    }
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        let progress = Arc::new(Progress::default());
        let inner = Box::pin(STREAM.scope(progress.clone(), fut));
        let watched = Watched { inner, progress, watch: Watch::new(self.limit), seen: 0 };
        let (kill, count) = (self.kill.clone(), self.count.clone());
        count.open.fetch_add(1, Ordering::Relaxed);
        count.started.fetch_add(1, Ordering::Relaxed);
        self.tasks.spawn(async move {
            tokio::select! {
                _ = watched => {}
                _ = kill.cancelled() => {}
            }
            count.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

struct Watched<F> {
    inner: Pin<Box<F>>,
    progress: Arc<Progress>,
    watch: Watch,
    seen: u64,
}

impl<F: Future<Output = ()>> Future for Watched<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.inner.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        let p = &this.progress;
        if !p.answering.load(Ordering::Relaxed) || p.upstream_pending.load(Ordering::Relaxed) {
            // Waiting on keyward's own work or the upstream: their timeouts apply.
            this.watch.progressed();
            return Poll::Pending;
        }
        let pulls = p.pulls.load(Ordering::Relaxed);
        if pulls != this.seen {
            this.seen = pulls;
            this.watch.progressed();
        }
        if !this.watch.expired(cx) {
            return Poll::Pending;
        }
        // Dropping the stream's task resets the stream; its exchange records the cut.
        p.cut.store(true, Ordering::Relaxed);
        tracing::debug!("HTTP/2 stream reset: the caller gave its answer no window (client_send)");
        Poll::Ready(())
    }
}

/// An HTTP/2 answer's body, telling its stream's watchdog when it is asked for more.
pub struct Pulled<B> {
    inner: B,
    progress: Arc<Progress>,
}

impl<B> Pulled<B> {
    pub fn new(inner: B, progress: Arc<Progress>) -> Self {
        Pulled { inner, progress }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Pulled<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        this.progress.pulls.fetch_add(1, Ordering::Relaxed);
        this.progress.upstream_pending.store(true, Ordering::Relaxed);
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        this.progress.upstream_pending.store(false, Ordering::Relaxed);
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
