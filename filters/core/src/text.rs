//! Text helpers shared by filters and the services beside them.

/// `s` with every byte outside RFC 3986's unreserved set (letters, digits, `-._~`) and
/// `keep` percent-encoded (`%XX`, upper-case hex).
pub fn percent_encode(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_all_but_unreserved_and_kept_bytes() {
        assert_eq!(
            percent_encode("/a b?c=é&d~", b"/"),
            "/a%20b%3Fc%3D%C3%A9%26d~"
        );
        assert_eq!(percent_encode("a/b", b""), "a%2Fb");
    }
}
