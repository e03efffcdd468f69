//! Cache keys, as `nexus.cache.v1` specifies them: `<path>[?<query>]#<digest>`.
//!
//! The path comes first (verbatim, query included) so the service can invalidate by path
//! prefix without knowing digests; everything else that selects a variant goes into the
//! SHA-256 digest: method, host, the policy's vary header values and, for per-client
//! policies, the client id.

use sha2::{Digest, Sha256};

/// What a key is made of; absent headers are distinct from empty ones.
pub struct KeyParts<'a> {
    pub method: &'a str,
    pub authority: &'a str,
    /// `:path` as received (path and query); a fragment, if a client sent one, is dropped.
    pub path: &'a str,
    /// `(name, value)` for each vary header of the policy, in policy order.
    pub vary: Vec<(&'a str, Option<&'a str>)>,
    pub client: Option<&'a str>,
}

pub fn cache_key(p: &KeyParts) -> String {
    let mut h = Sha256::new();
    // Length-prefixed fields: no value can be crafted to look like another field boundary.
    let mut field = |tag: u8, v: Option<&str>| {
        h.update([tag]);
        match v {
            Some(v) => {
                h.update((v.len() as u64).to_le_bytes());
                h.update(v.as_bytes());
            }
            None => h.update(u64::MAX.to_le_bytes()),
        }
    };
    field(b'm', Some(p.method));
    field(b'a', Some(&p.authority.to_ascii_lowercase()));
    for (name, value) in &p.vary {
        field(b'n', Some(name));
        field(b'v', *value);
    }
    field(b'c', p.client);
    let digest = h.finalize();
    let path = p.path.split('#').next().unwrap_or("");
    let mut key = String::with_capacity(path.len() + 65);
    key.push_str(path);
    key.push('#');
    for b in digest {
        key.push(char::from(HEX[usize::from(b >> 4)]));
        key.push(char::from(HEX[usize::from(b & 15)]));
    }
    key
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    fn parts<'a>(path: &'a str) -> KeyParts<'a> {
        KeyParts {
            method: "GET",
            authority: "api.example",
            path,
            vary: vec![("accept", Some("application/json"))],
            client: None,
        }
    }

    #[test]
    fn key_starts_with_path_and_query_then_a_hex_digest() {
        let k = cache_key(&parts("/lake/tables?limit=5"));
        let (path, digest) = k.split_once('#').unwrap();
        assert_eq!(path, "/lake/tables?limit=5");
        assert_eq!(digest.len(), 64);
        assert!(digest
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(k, cache_key(&parts("/lake/tables?limit=5#frag")));
    }

    #[test]
    fn method_host_vary_and_client_select_variants() {
        let base = cache_key(&parts("/a"));
        let mut p = parts("/a");
        p.method = "HEAD";
        assert_ne!(cache_key(&p), base);
        let mut p = parts("/a");
        p.authority = "other.example";
        assert_ne!(cache_key(&p), base);
        let mut p = parts("/a");
        p.authority = "API.example";
        assert_eq!(cache_key(&p), base, "host is case-insensitive");
        let mut p = parts("/a");
        p.vary = vec![("accept", Some("text/html"))];
        assert_ne!(cache_key(&p), base);
        let mut p = parts("/a");
        p.vary = vec![("accept", None)];
        assert_ne!(cache_key(&p), base, "absent differs from any value");
        let mut p = parts("/a");
        p.vary = vec![("accept", Some(""))];
        assert_ne!(
            cache_key(&p),
            cache_key(&{
                let mut q = parts("/a");
                q.vary = vec![("accept", None)];
                q
            })
        );
        let mut p = parts("/a");
        p.client = Some("alice");
        let alice = cache_key(&p);
        p.client = Some("bob");
        assert_ne!(cache_key(&p), alice);
        assert_ne!(alice, base);
    }
}
