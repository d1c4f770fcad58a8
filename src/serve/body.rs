//! Body wrappers: count the bytes that stream through, keep a guard alive until the body is
//! done (the access record is written when the response body is dropped), cut off an
//! upstream answer that is still streaming at its deadline, and a request body whose caller
//! pauses too long.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::policy::exposure::{self, Exposed};
use crate::policy::multipart::Scan;
use crate::serve::outcome::{Signal, Signals};
use crate::serve::stall::Watch;
use crate::upstream::BoxError;

pub struct Metered<B, G> {
    inner: B,
    count: Count,
    _guard: G,
}

/// Which of the exchange's counts a body adds to.
pub enum Count {
    In(Arc<Signals>),
    Out(Arc<Signals>),
    Nothing,
}

impl<B, G> Metered<B, G> {
    pub fn new(inner: B, count: Count, guard: G) -> Self {
        Metered { inner, count, _guard: guard }
    }
}

impl<B, G> Body for Metered<B, G>
where
    B: Body<Data = Bytes> + Unpin,
    G: Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let n = data.len() as u64;
            match &self.count {
                Count::In(s) => s.bytes_in.fetch_add(n, Ordering::Relaxed),
                Count::Out(s) => s.bytes_out.fetch_add(n, Ordering::Relaxed),
                Count::Nothing => 0,
            };
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Ends a body with an error once `deadline` passes, and signals `AnswerCut`: an upstream that
/// stalls mid-answer does not hold the caller forever. The timer is only armed if the body
/// ever has to wait, so an answer that is already in (the usual case) costs none.
pub struct Deadline<B> {
    inner: B,
    deadline: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
    signals: Arc<Signals>,
}

impl<B> Deadline<B> {
    pub fn new(inner: B, deadline: Instant, signals: Arc<Signals>) -> Self {
        Deadline { inner, deadline, sleep: None, signals }
    }
}

impl<B> Body for Deadline<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                let deadline = self.deadline;
                let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.signals.raise(Signal::AnswerCut);
                Poll::Ready(Some(Err("the upstream answer did not finish in time".into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Ends a request body with an error when its caller sends nothing for `idle`
/// (`timeouts.request_body_idle`), and signals `BodyLate`: a caller that stops half-way through a
/// body does not hold its connection and access-log slot for long.
pub struct Idle<B> {
    inner: B,
    watch: Watch,
    signals: Arc<Signals>,
}

impl<B> Idle<B> {
    pub fn new(inner: B, idle: std::time::Duration, signals: Arc<Signals>) -> Self {
        Idle { inner, watch: Watch::new(idle), signals }
    }

    pub fn signals(&self) -> Arc<Signals> {
        self.signals.clone()
    }
}

impl<B> Body for Idle<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                self.watch.progressed();
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending if !self.watch.expired(cx) => Poll::Pending,
            Poll::Pending => {
                self.signals.raise(Signal::BodyLate);
                Poll::Ready(Some(Err("the caller paused its request body too long".into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Passes a multipart body through, ending it with an error (and signalling `BodyRefused`) as soon
/// as it turns out not to have the one shape keyward accepts (`policy::multipart`).
pub struct PartNames<B> {
    inner: B,
    scan: Scan,
    signals: Arc<Signals>,
}

impl<B> PartNames<B> {
    pub fn new(inner: B, boundary: &str, signals: Arc<Signals>) -> Self {
        PartNames { inner, scan: Scan::new(boundary), signals }
    }
}

impl<B> Body for PartNames<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        let fed = match &frame {
            Some(Ok(f)) => f.data_ref().map_or(Ok(()), |data| this.scan.feed(data)),
            _ => Ok(()),
        };
        // Judge the end with the last piece: the sender may not ask for more once it is in.
        let ended = frame.is_none() || this.inner.is_end_stream();
        if fed.is_err() || (ended && this.scan.finish().is_err()) {
            this.signals.raise(Signal::BodyRefused);
            return Poll::Ready(Some(Err("a multipart body keyward does not accept".into())));
        }
        Poll::Ready(frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Passes a streamed request body through while searching it for a keyward token
/// (`policy::exposure`): one found ends the body with an error before a byte of it is sent,
/// and is signalled. The last bytes of a piece that could begin a token wait for the
/// next piece, as the scrubber's do.
pub struct NoTokens<B> {
    inner: B,
    snapshot: Arc<crate::control::snapshot::Snapshot>,
    carry: BytesMut,
    signals: Arc<Signals>,
    done: bool,
}

impl<B> NoTokens<B> {
    pub fn new(inner: B, snapshot: Arc<crate::control::snapshot::Snapshot>, signals: Arc<Signals>) -> Self {
        NoTokens { inner, snapshot, carry: BytesMut::new(), signals, done: false }
    }

    /// What of `chunk` may be sent now, or the token it completes.
    fn push(&mut self, chunk: Bytes) -> Result<Bytes, Exposed> {
        let tokens = &self.snapshot.policy.tokens;
        if self.carry.is_empty() {
            // The usual case: no token, nothing that could begin one, nothing copied.
            if let Some(e) = exposure::find(&chunk, tokens) {
                return Err(e);
            }
            let keep = exposure::pending(&chunk);
            self.carry.extend_from_slice(&chunk[chunk.len() - keep..]);
            return Ok(chunk.slice(..chunk.len() - keep));
        }
        self.carry.extend_from_slice(&chunk);
        if let Some(e) = exposure::find(&self.carry, tokens) {
            return Err(e);
        }
        let keep = exposure::pending(&self.carry);
        Ok(self.carry.split_to(self.carry.len() - keep).freeze())
    }

    fn refuse(&mut self, e: Exposed) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.signals.found_token(e);
        self.done = true;
        Poll::Ready(Some(Err("a request body that carries a keyward token".into())))
    }
}

impl<B> Body for NoTokens<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            // Trailers end the data; like an answer's, they are not forwarded.
            let data = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => frame.into_data().ok(),
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => None,
            };
            let Some(data) = data else {
                // The end: what was held back is decided now (an old token is 43 letters).
                this.done = true;
                let rest = std::mem::take(&mut this.carry);
                if let Some(e) = exposure::find(&rest, &this.snapshot.policy.tokens) {
                    return this.refuse(e);
                }
                return Poll::Ready((!rest.is_empty()).then(|| Ok(Frame::data(rest.freeze()))));
            };
            match this.push(data) {
                Err(e) => return this.refuse(e),
                Ok(out) if out.is_empty() => continue,
                Ok(out) => return Poll::Ready(Some(Ok(Frame::data(out)))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || (self.carry.is_empty() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
