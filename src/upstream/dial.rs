//! Where an upstream's TCP connections go: where its URL's host resolves to, or the
//! configured `connect_to` address. Sits under TLS, which still names and verifies the URL's
//! host, so `connect_to` changes only where packets go, never whom keyward trusts.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[derive(Clone)]
pub struct Dial {
    pub http: HttpConnector,
    pub connect_to: Option<SocketAddr>,
}

impl tower_service::Service<Uri> for Dial {
    type Response = TokioIo<TcpStream>;
    type Error = <HttpConnector as tower_service::Service<Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let dst = match self.connect_to {
            // An address as the authority: nothing is resolved.
            Some(addr) => Uri::builder()
                .scheme("http")
                .authority(addr.to_string())
                .path_and_query("/")
                .build()
                .expect("an address is an authority"),
            None => dst,
        };
        Box::pin(self.http.call(dst))
    }
}
