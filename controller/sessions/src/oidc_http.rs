//! The HTTP(S) client sign-in talks to the provider with (discovery, token endpoint, JWKS):
//! every call bounded by [`TIMEOUT`], bodies bounded by [`MAX_BODY`].

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub const TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BODY: usize = 1 << 20;

type Connector = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

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

    /// Status and body of a form `POST` with an `Authorization` header.
    pub async fn post_form(
        &self,
        url: &str,
        form: &str,
        authorization: &str,
    ) -> Result<(u16, Bytes), String> {
        let req = hyper::Request::post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .header("authorization", authorization)
            .body(Full::new(Bytes::from(form.to_string())))
            .map_err(|e| format!("{url}: {e}"))?;
        self.send(url, req).await
    }

    async fn send(
        &self,
        url: &str,
        req: hyper::Request<Full<Bytes>>,
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
        tokio::time::timeout(TIMEOUT, call)
            .await
            .map_err(|_| format!("{url} did not answer within {TIMEOUT:?}"))?
    }
}
