//! Body wrappers: count the bytes that stream through, keep a guard alive until the body is
//! done (the access record is written when the response body is dropped), cut off an
//! upstream answer that is still streaming at its deadline, and a request body whose caller
//! pauses too long.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::policy::exposure::{self, Exposed};
use crate::policy::multipart::Scan;
use crate::serve::stall::Watch;
use crate::upstream::BoxError;

pub struct Metered<B, G> {
    inner: B,
    count: Arc<AtomicU64>,
    _guard: G,
}

impl<B, G> Metered<B, G> {
    pub fn new(inner: B, count: Arc<AtomicU64>, guard: G) -> Self {
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
            self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
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

/// Ends a body with an error once `deadline` passes, and raises `cut`: an upstream that
/// stalls mid-answer does not hold the caller forever. The timer is only armed if the body
/// ever has to wait, so an answer that is already in (the usual case) costs none.
pub struct Deadline<B> {
    inner: B,
    deadline: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
    cut: Arc<AtomicBool>,
}

impl<B> Deadline<B> {
    pub fn new(inner: B, deadline: Instant, cut: Arc<AtomicBool>) -> Self {
        Deadline { inner, deadline, sleep: None, cut }
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
                self.cut.store(true, Ordering::Relaxed);
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
/// (`timeouts.request_body_idle`), and raises `late`: a caller that stops half-way through a
/// body does not hold its connection and access-log slot for long.
pub struct Idle<B> {
    inner: B,
    watch: Watch,
    late: Arc<AtomicBool>,
}

impl<B> Idle<B> {
    pub fn new(inner: B, idle: std::time::Duration, late: Arc<AtomicBool>) -> Self {
        Idle { inner, watch: Watch::new(idle), late }
    }

    pub fn late(&self) -> Arc<AtomicBool> {
        self.late.clone()
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
                self.late.store(true, Ordering::Relaxed);
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

/// Passes a multipart body through, ending it with an error (and raising `refused`) as soon
/// as it turns out not to have the one shape keyward accepts (`policy::multipart`).
pub struct PartNames<B> {
    inner: B,
    scan: Scan,
    refused: Arc<AtomicBool>,
}

impl<B> PartNames<B> {
    pub fn new(inner: B, boundary: &str, refused: Arc<AtomicBool>) -> Self {
        PartNames { inner, scan: Scan::new(boundary), refused }
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
            this.refused.store(true, Ordering::Relaxed);
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
/// and is kept in `found`. The last bytes of a piece that could begin a token wait for the
/// next piece, as the scrubber's do.
pub struct NoTokens<B> {
    inner: B,
    snapshot: Arc<crate::control::snapshot::Snapshot>,
    carry: BytesMut,
    found: Arc<OnceLock<Exposed>>,
    done: bool,
}

impl<B> NoTokens<B> {
    pub fn new(
        inner: B,
        snapshot: Arc<crate::control::snapshot::Snapshot>,
        found: Arc<OnceLock<Exposed>>,
    ) -> Self {
        NoTokens { inner, snapshot, carry: BytesMut::new(), found, done: false }
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
        let _ = self.found.set(e);
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
