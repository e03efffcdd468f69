//! A header map's contents as one buffer: the host hands all headers over at once, and filters
//! read them in place, without an allocation per name and value.

use std::ops::Range;

/// Headers in order (duplicates kept), names lower case as the host gives them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderList {
    text: String,
    /// Where each name and value lies in `text`; every range is on char boundaries.
    spans: Vec<(Range<u32>, Range<u32>)>,
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl HeaderList {
    pub fn new() -> Self {
        Self::default()
    }

    /// Headers already laid out in `text` (e.g. the host's buffer, validated once). Spans are
    /// kept up to the first one that does not fall on char boundaries inside `text`: a
    /// truncated or inconsistent buffer yields the headers before the inconsistency.
    pub fn from_text(
        text: String,
        spans: impl IntoIterator<Item = (Range<usize>, Range<usize>)>,
    ) -> Self {
        let spans = spans
            .into_iter()
            .take_while(|(n, v)| text.get(n.clone()).is_some() && text.get(v.clone()).is_some())
            .map(|(n, v)| {
                (
                    to_u32(n.start)..to_u32(n.end),
                    to_u32(v.start)..to_u32(v.end),
                )
            })
            .collect();
        Self { text, spans }
    }

    pub fn push(&mut self, name: &str, value: &str) {
        let n = self.text.len();
        self.text.push_str(name);
        let v = self.text.len();
        self.text.push_str(value);
        let end = self.text.len();
        self.spans
            .push((to_u32(n)..to_u32(v), to_u32(v)..to_u32(end)));
    }

    fn slice(&self, r: &Range<u32>) -> &str {
        self.text
            .get(r.start as usize..r.end as usize)
            .unwrap_or_default()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.spans
            .iter()
            .map(|(n, v)| (self.slice(n), self.slice(v)))
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Keeps the headers for which `keep` is true (the text stays; only the index shrinks).
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &str) -> bool) {
        let text = &self.text;
        let slice = |r: &Range<u32>| {
            text.get(r.start as usize..r.end as usize)
                .unwrap_or_default()
        };
        self.spans.retain(|(n, v)| keep(slice(n), slice(v)));
    }

    /// Owned pairs, for callers that keep headers beyond the callback.
    pub fn to_vec(&self) -> Vec<(String, String)> {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

impl<'a> Extend<(&'a str, &'a str)> for HeaderList {
    fn extend<I: IntoIterator<Item = (&'a str, &'a str)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.push(k, v);
        }
    }
}

impl Extend<(String, String)> for HeaderList {
    fn extend<I: IntoIterator<Item = (String, String)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.push(&k, &v);
        }
    }
}

impl<'a> FromIterator<(&'a str, &'a str)> for HeaderList {
    fn from_iter<I: IntoIterator<Item = (&'a str, &'a str)>>(iter: I) -> Self {
        let mut list = Self::new();
        list.extend(iter);
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_duplicates_and_first_value() {
        let mut h: HeaderList = [(":path", "/a"), ("x", "1"), ("x", "2"), ("e", "")]
            .into_iter()
            .collect();
        assert_eq!(h.get("x"), Some("1"));
        assert_eq!(h.get("e"), Some(""));
        assert_eq!(h.get("y"), None);
        assert_eq!(h.len(), 4);
        h.retain(|k, v| !(k == "x" && v == "1"));
        assert_eq!(h.get("x"), Some("2"));
        assert_eq!(
            h.to_vec(),
            vec![
                (":path".to_string(), "/a".to_string()),
                ("x".to_string(), "2".to_string()),
                ("e".to_string(), String::new())
            ]
        );
    }

    #[test]
    fn spans_outside_the_text_or_inside_a_char_end_the_list() {
        let text = "ab\u{e9}cd".to_string(); // é is two bytes: 2..4
        let h = HeaderList::from_text(text.clone(), [(0..1, 1..2), (0..3, 4..5), (0..1, 1..2)]);
        assert_eq!(h.len(), 1);
        let h = HeaderList::from_text(text, [(0..1, 4..99)]);
        assert!(h.is_empty());
    }
}
