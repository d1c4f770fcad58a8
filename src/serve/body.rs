//! Body wrappers: count the bytes that stream through, keep a guard alive until the body is
//! done (the access record is written when the response body is dropped), cut off an
//! upstream answer that is still streaming at its deadline, and a request body whose caller
//! pauses too long.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

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
