//! One call on a pooled HTTP/2 connection (`Ready`): sent, its request body piped while the
//! answer is awaited, its answer's body streamed; a caller that leaves early is handled so
//! that no stream is reset before the upstream took it up (`Awaited`).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use http::{Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use tokio::time::Instant;

use super::{InFlight, Ready};
use crate::upstream::{Body, BoxError};

/// Send one call on `tx` and wait for the answer's head; the body streams after it. What is
/// left of the request body after the answer came is sent until `deadline`.
pub async fn send(
    ready: Ready,
    req: Request<Body>,
    deadline: Instant,
) -> Result<Response<RecvBody>, BoxError> {
    let Ready { mut tx, _call: call } = ready;
    let (head, body) = req.into_parts();
    let eos = body.is_end_stream();
    let (answer, stream) = tx.send_request(Request::from_parts(head, ()), eos)?;
    let mut waiting = Awaited { answer: Some(answer), call: Some(call), body_sent: eos, deadline };
    let mut pipe = (!eos).then(|| Pipe { body, stream });
    let resp = std::future::poll_fn(|cx| {
        // The request body goes out while the answer is awaited: an upstream may answer first.
        if let Some(p) = &mut pipe
            && Pin::new(p).poll(cx).is_ready()
        {
            pipe = None;
            waiting.body_sent = true;
        }
        Pin::new(waiting.answer.as_mut().expect("until answered")).poll(cx)
    })
    .await;
    waiting.answer = None;
    let call = waiting.call.take().expect("until answered");
    let resp = resp?;
    if let Some(p) = pipe {
        // Answered before the request body was all sent: finish sending it on the side.
        tokio::spawn(async move {
            let mut p = p;
            if tokio::time::timeout_at(deadline, &mut p).await.is_err() {
                p.stream.send_reset(Reason::CANCEL);
            }
        });
    }
    Ok(resp.map(|stream| RecvBody { stream, data_done: false, _call: call }))
}

/// A call sent and not yet answered. If its caller leaves now, the stream is not reset at
/// once: the upstream may not have taken it up yet, and servers count resets of such streams
/// as an attack (HTTP/2 "rapid reset") and close the whole connection, failing every other
/// service's calls on it. The answer's head is awaited on the side instead (until the
/// deadline), still counted in the service's share; the stream is reset after it.
struct Awaited {
    answer: Option<h2::client::ResponseFuture>,
    call: Option<InFlight>,
    /// A body cut off by its caller is reset at once: the upstream must not wait for the rest.
    body_sent: bool,
    deadline: Instant,
}

impl Drop for Awaited {
    fn drop(&mut self) {
        let (Some(answer), Some(call)) = (self.answer.take(), self.call.take()) else { return };
        if !self.body_sent {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let deadline = self.deadline;
        rt.spawn(async move {
            let _ = tokio::time::timeout_at(deadline, answer).await;
            drop(call);
        });
    }
}

/// Copies a request body into its stream as the upstream's flow control lets it out: the
/// body is read only once there is window for it, so a large one is never buffered whole.
struct Pipe {
    body: Body,
    stream: SendStream<Bytes>,
}

/// Window asked for before each read of the request body.
const PIPE_CHUNK: usize = 64 * 1024;

impl Future for Pipe {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        loop {
            if this.stream.capacity() == 0 {
                this.stream.reserve_capacity(PIPE_CHUNK);
                match ready!(this.stream.poll_capacity(cx)) {
                    Some(Ok(_)) => continue,
                    // The stream was reset or closed: nothing more can be sent.
                    Some(Err(_)) | None => return Poll::Ready(()),
                }
            }
            let (sent, last) = match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let last = this.body.is_end_stream();
                        (this.stream.send_data(data, last), last)
                    }
                    // Trailers are not forwarded (over HTTP/1.1 hyper drops them too): a trailer
                    // could carry what the header filter keeps from the upstream.
                    Err(frame) if frame.is_trailers() => (this.stream.send_data(Bytes::new(), true), true),
                    Err(_) => continue,
                },
                None => (this.stream.send_data(Bytes::new(), true), true),
                Some(Err(_)) => {
                    // Unreadable or over the limit: the upstream must not take a cut-off body.
                    this.stream.send_reset(Reason::CANCEL);
                    return Poll::Ready(());
                }
            };
            if sent.is_err() {
                // Never leave the upstream waiting for the rest of a body that will not come.
                this.stream.send_reset(Reason::CANCEL);
                return Poll::Ready(());
            }
            if last {
                return Poll::Ready(());
            }
        }
    }
}

/// An answer's body, handing flow-control credit back as the caller takes each chunk.
pub struct RecvBody {
    stream: RecvStream,
    data_done: bool,
    _call: InFlight,
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match ready!(self.stream.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.stream.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.data_done = true,
            }
        }
        // Trailers are not forwarded, in either direction (see `Pipe`): the answer ends here.
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
