//! Cache warming: the `cache.warm` paths of programmed routes, fetched through the gateway so
//! the first real caller finds them cached. `nexus up` warms through its own Envoy; the
//! controller (leader, with `--warm-url`) through the Istio ingress gateway.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::crd::{NexusRoute, TargetKind};
use crate::policy::WatchScope;

/// How often warm paths are fetched again. Entries live at least 1 s and at most their rule's
/// TTL; fetching one still cached is a cheap hit.
pub const PERIOD: Duration = Duration::from_secs(20);

/// One warming request: `GET path` with `Host: host`. The cache key includes the host, so it
/// must be the one real clients send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub path: String,
}

/// The warm paths of accepted gateway routes, once per host (`default_host` for routes that
/// name none). Sidecar routes are not warmed: there is no one gateway to warm through.
pub fn targets(routes: &[NexusRoute], default_host: &str) -> Vec<Target> {
    let mut out = Vec::new();
    for r in routes {
        let accepted = r.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Programmed" && c.status == "True")
        });
        if !accepted || r.spec.target.kind != TargetKind::Gateway {
            continue;
        }
        let hosts: Vec<&str> = match r.spec.hosts.iter().find(|h| *h != "*") {
            Some(_) => r
                .spec
                .hosts
                .iter()
                .filter(|h| *h != "*")
                .map(String::as_str)
                .collect(),
            None => vec![default_host],
        };
        for rule in &r.spec.rules {
            for path in rule.cache.iter().flat_map(|c| &c.warm) {
                for host in &hosts {
                    let t = Target {
                        host: (*host).to_string(),
                        path: path.clone(),
                    };
                    if !out.contains(&t) {
                        out.push(t);
                    }
                }
            }
        }
    }
    out
}

/// The leader's warming loop: follows NexusRoutes and, every [`PERIOD`], fetches the warm
/// paths of programmed gateway routes through `gateway_url` (e.g. the Istio ingress gateway's
/// Service, `http://istio-ingressgateway.istio-system`); routes of the controller's `scope`.
pub async fn follow(client: kube::Client, scope: WatchScope, gateway_url: String) {
    use futures::StreamExt;
    use kube::runtime::{reflector, watcher, WatchStreamExt};
    let (store, writer) = reflector::store();
    let routes = scope.watch::<NexusRoute>(&client, &(), watcher::Config::default());
    let feed = reflector(writer, routes)
        .default_backoff()
        .touched_objects()
        .for_each(|_| futures::future::ready(()));
    tokio::spawn(feed);
    let mut tick = tokio::time::interval(PERIOD);
    loop {
        tick.tick().await;
        let routes: Vec<NexusRoute> = store.state().iter().map(|r| (**r).clone()).collect();
        let (addr, host) = match resolve(&gateway_url).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(url = %gateway_url, error = %e, "warming: gateway unreachable");
                continue;
            }
        };
        let targets = targets(&routes, &host);
        if !targets.is_empty() {
            let ok = warm(addr, &targets).await;
            tracing::debug!(ok, total = targets.len(), "warmed cache paths");
        }
    }
}

/// `http://host[:port]` → the address to connect to and the host text (for `Host`).
pub async fn resolve(url: &str) -> Result<(SocketAddr, String)> {
    let authority = url
        .strip_prefix("http://")
        .with_context(|| format!("{url:?}: only http:// gateway URLs are supported"))?
        .trim_end_matches('/');
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let addr = tokio::net::lookup_host(&with_port)
        .await?
        .next()
        .with_context(|| format!("{url:?} resolves to no address"))?;
    Ok((addr, authority.to_string()))
}

/// Fetches every target through `gateway`; returns how many answered below 400.
pub async fn warm(gateway: SocketAddr, targets: &[Target]) -> usize {
    let mut ok = 0;
    for t in targets {
        match get(gateway, &t.host, &t.path).await {
            Ok((status, _)) if status < 400 => ok += 1,
            Ok((status, _)) => {
                tracing::warn!(host = %t.host, path = %t.path, status, "warming: not cached")
            }
            Err(e) => tracing::warn!(host = %t.host, path = %t.path, error = %e, "warming failed"),
        }
    }
    ok
}

/// One `GET` over HTTP/1.1 (`Connection: close`: the body ends with the connection).
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Result<(u16, String)> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .with_context(|| format!("GET {path} from {addr}: no answer within 5 s"))??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::crd::{Condition, NexusRouteStatus};

    fn route(yaml: &str, programmed: bool) -> NexusRoute {
        let mut r: NexusRoute = serde_yaml::from_str(yaml).unwrap();
        r.status = Some(NexusRouteStatus {
            conditions: vec![Condition {
                type_: "Programmed".into(),
                status: if programmed { "True" } else { "False" }.into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        r
    }

    const GATEWAY: &str = "apiVersion: nexus.datapunk.io/v1alpha1
kind: NexusRoute
metadata: {name: api, namespace: apps}
spec:
  target: {kind: Gateway, selector: {istio: ingressgateway}}
  gateways: [istio-system/gw]
  hosts: [api.example.com, www.example.com]
  rules:
  - {name: catalog, match: {path: {prefix: /catalog}}, category: data_operations,
     cache: {ttl: 60s, warm: [/catalog, /catalog/top]}}
  - {name: other, match: {path: {prefix: /o}}, category: data_operations}
";

    #[test]
    fn programmed_gateway_routes_are_warmed_once_per_host() {
        let t = targets(&[route(GATEWAY, true)], "gw.local");
        let got: Vec<(&str, &str)> = t
            .iter()
            .map(|t| (t.host.as_str(), t.path.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("api.example.com", "/catalog"),
                ("www.example.com", "/catalog"),
                ("api.example.com", "/catalog/top"),
                ("www.example.com", "/catalog/top"),
            ]
        );
        assert!(targets(&[route(GATEWAY, false)], "gw.local").is_empty());
        let sidecar = GATEWAY.replace("kind: Gateway", "kind: Sidecar");
        assert!(targets(&[route(&sidecar, true)], "gw.local").is_empty());
        let any_host = GATEWAY.replace("hosts: [api.example.com, www.example.com]", "hosts: ['*']");
        assert_eq!(
            targets(&[route(&any_host, true)], "gw.local")[0].host,
            "gw.local"
        );
    }

    #[tokio::test]
    async fn warming_sends_the_host_and_path_a_client_would() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..2 {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 1024];
                let n = s.read(&mut buf).await.unwrap();
                seen.push(String::from_utf8_lossy(&buf[..n]).to_string());
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .unwrap();
            }
            seen
        });
        let (resolved, host) = resolve(&format!("http://127.0.0.1:{}", addr.port()))
            .await
            .unwrap();
        assert_eq!(resolved, addr);
        assert_eq!(host, format!("127.0.0.1:{}", addr.port()));
        let t = targets(&[route(GATEWAY, true)], &host);
        assert_eq!(warm(addr, &t[..2]).await, 2);
        let seen = server.await.unwrap();
        assert!(
            seen[0].starts_with("GET /catalog HTTP/1.1\r\nHost: api.example.com\r\n"),
            "{seen:?}"
        );
        assert!(seen[1].contains("Host: www.example.com"), "{seen:?}");
        assert!(resolve("https://x").await.is_err());
    }
}
