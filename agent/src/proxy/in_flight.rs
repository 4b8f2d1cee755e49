//! A request counts as in flight from its arrival until hyper drops its
//! response body: at the body's end, or when the client goes away — so a
//! long stream is counted for as long as it runs.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use http::Response;
use http_body::{Body, Frame, SizeHint};

/// A response body that keeps its request counted in flight: `G` is the
/// guard (or guards) that count it, dropped with the body.
pub struct Counted<B, G> {
    inner: B,
    _in_flight: G,
}

/// `response`, counted in flight until its body is dropped.
pub fn hold<B, G>(response: Response<B>, in_flight: G) -> Response<Counted<B, G>> {
    response.map(|inner| Counted {
        inner,
        _in_flight: in_flight,
    })
}

impl<B: Body + Unpin, G: Unpin> Body for Counted<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
