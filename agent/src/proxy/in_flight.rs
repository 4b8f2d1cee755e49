//! A request counts as in flight from its arrival until hyper drops its
//! response body: at the body's end, or when the client goes away — so a
//! long stream is counted for as long as it runs.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use http::Response;
use http_body::{Body, Frame, SizeHint};

use crate::metrics::InFlight;

/// A response body that keeps its request counted in flight.
pub struct Counted<B> {
    inner: B,
    _in_flight: InFlight,
}

/// `response`, counted in flight until its body is dropped.
pub fn hold<B>(response: Response<B>, in_flight: InFlight) -> Response<Counted<B>> {
    response.map(|inner| Counted {
        inner,
        _in_flight: in_flight,
    })
}

impl<B: Body + Unpin> Body for Counted<B> {
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
