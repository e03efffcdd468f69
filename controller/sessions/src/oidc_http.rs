//! The HTTP(S) client the service talks to providers with (discovery, token endpoint, JWKS,
//! token introspection): every call bounded by a timeout ([`TIMEOUT`] unless given), bodies
//! bounded by [`MAX_BODY`].

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub const TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BODY: usize = 1 << 20;

type Connector = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// A `POST`'s body and credentials.
pub struct Post<'a> {
    pub content_type: &'static str,
    pub body: String,
    pub authorization: &'a str,
}

pub struct HttpClient {
    client: Client<Connector, Full<Bytes>>,
}

impl HttpClient {
    pub fn new() -> anyhow::Result<Self> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// Status and body of `GET url`.
    pub async fn get(&self, url: &str) -> Result<(u16, Bytes), String> {
        let req = hyper::Request::get(url)
            .header("accept", "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("{url}: {e}"))?;
        self.send(url, req).await
    }

    /// Status and body of `GET url` with an `Authorization` header, within `timeout`.
    pub async fn get_authorized(
        &self,
        url: &str,
        authorization: &str,
        timeout: Duration,
    ) -> Result<(u16, Bytes), String> {
        let req = hyper::Request::get(url)
            .header("accept", "application/json")
            .header("authorization", authorization)
            .header("user-agent", "nexus-sessions")
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("{url}: {e}"))?;
        self.send_within(url, req, timeout).await
    }

    /// Status and body of a form `POST` with an `Authorization` header.
    pub async fn post_form(
        &self,
        url: &str,
        form: &str,
        authorization: &str,
    ) -> Result<(u16, Bytes), String> {
        let post = Post {
            content_type: "application/x-www-form-urlencoded",
            body: form.to_string(),
            authorization,
        };
        self.post(url, post, TIMEOUT).await
    }

    /// Status and body of a `POST`, within `timeout`.
    pub async fn post(
        &self,
        url: &str,
        post: Post<'_>,
        timeout: Duration,
    ) -> Result<(u16, Bytes), String> {
        let req = hyper::Request::post(url)
            .header("content-type", post.content_type)
            .header("accept", "application/json")
            .header("authorization", post.authorization)
            .header("user-agent", "nexus-sessions")
            .body(Full::new(Bytes::from(post.body)))
            .map_err(|e| format!("{url}: {e}"))?;
        self.send_within(url, req, timeout).await
    }

    async fn send(
        &self,
        url: &str,
        req: hyper::Request<Full<Bytes>>,
    ) -> Result<(u16, Bytes), String> {
        self.send_within(url, req, TIMEOUT).await
    }

    async fn send_within(
        &self,
        url: &str,
        req: hyper::Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<(u16, Bytes), String> {
        let call = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            let status = resp.status().as_u16();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| format!("{url}: {e}"))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| format!("{url} did not answer within {timeout:?}"))?
    }
}
