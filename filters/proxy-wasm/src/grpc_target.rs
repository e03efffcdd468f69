//! What a gRPC callout names as its target. Envoy reads the `grpc_service` argument as a
//! serialized `envoy.config.core.v3.GrpcService` and, when it is not one, as a cluster name;
//! with a bare cluster name its gRPC client sends that name as `:authority`. Istio names
//! clusters `outbound|<port>|<subset>|<host>`, and a `|` in `:authority` is malformed HTTP/2
//! that the Nexus services' servers refuse. So for such a cluster the filter sends a
//! `GrpcService` whose `envoy_grpc.authority` is the Service, `<host>:<port>`, as a client
//! inside the mesh would.

use std::borrow::Cow;

/// The `grpc_service` bytes for a callout to `cluster`.
pub fn grpc_target(cluster: &str) -> Cow<'_, [u8]> {
    match istio_authority(cluster) {
        Some(authority) => Cow::Owned(envoy_grpc_service(cluster, &authority)),
        None => Cow::Borrowed(cluster.as_bytes()),
    }
}

/// `<host>:<port>` of Istio's `outbound|<port>|<subset>|<host>`.
fn istio_authority(cluster: &str) -> Option<String> {
    let mut parts = cluster.split('|');
    let (direction, port, _subset, host) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let valid = direction == "outbound"
        && parts.next().is_none()
        && !host.is_empty()
        && port.parse::<u16>().is_ok();
    valid.then(|| format!("{host}:{port}"))
}

/// `GrpcService { envoy_grpc (1): EnvoyGrpc { cluster_name (1), authority (2) } }`.
fn envoy_grpc_service(cluster: &str, authority: &str) -> Vec<u8> {
    let mut inner = Vec::new();
    field(&mut inner, 1, cluster.as_bytes());
    field(&mut inner, 2, authority.as_bytes());
    let mut out = Vec::new();
    field(&mut out, 1, &inner);
    out
}

/// One length-delimited protobuf field.
fn field(out: &mut Vec<u8>, number: u8, bytes: &[u8]) {
    out.push(number << 3 | 2);
    let mut len = bytes.len();
    while len >= 0x80 {
        out.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(field number, bytes)` of each length-delimited field in `b`.
    fn fields(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some((&tag, rest)) = b.split_first() {
            assert_eq!(tag & 7, 2, "not length-delimited");
            let (mut len, mut shift, mut i) = (0usize, 0, 0);
            loop {
                len |= ((rest[i] & 0x7f) as usize) << shift;
                shift += 7;
                i += 1;
                if rest[i - 1] < 0x80 {
                    break;
                }
            }
            out.push((tag >> 3, rest[i..i + len].to_vec()));
            b = &rest[i + len..];
        }
        out
    }

    #[test]
    fn istio_clusters_get_the_service_as_authority_others_pass_as_names() {
        let c = "outbound|8081||nexus-controller.nexus-system.svc.cluster.local";
        let outer = fields(&grpc_target(c));
        assert_eq!(outer.len(), 1);
        assert_eq!(outer[0].0, 1, "envoy_grpc");
        let inner = fields(&outer[0].1);
        assert_eq!(
            inner,
            [
                (1, c.as_bytes().to_vec()),
                (
                    2,
                    b"nexus-controller.nexus-system.svc.cluster.local:8081".to_vec()
                )
            ]
        );
        // A long name takes a two-byte length.
        let long = format!("outbound|9090||{}.svc.cluster.local", "a".repeat(150));
        let inner = fields(&fields(&grpc_target(&long))[0].1);
        assert_eq!(inner[0].1, long.as_bytes());
        for plain in [
            "nexus-ratelimit",
            "outbound|x||h",
            "inbound|80||h",
            "outbound|80||",
            "a|b|c|d|e",
        ] {
            assert_eq!(grpc_target(plain).as_ref(), plain.as_bytes(), "{plain}");
        }
    }
}
