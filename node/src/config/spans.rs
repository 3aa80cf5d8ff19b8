//! Where a key sits in the cluster file. The text is read a second time into a tree of its keys, each a
//! [`toml::Spanned`] with its byte range, so a key inside an inline table, a dotted key (`lb.health.fall = 0`)
//! and a key of the n-th `[[nodes]]` entry each get their own line. Only errors need it, so it is built on the
//! error path and never kept.

use std::fmt::{self, Write as _};

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

/// The line (from 1) of byte `offset` in `text`.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The line of the key at `path` (`lb.health.fall`, `nodes[1].repl`, `cookie.previous_keys[0].id`). A key the
/// file leaves out (a default that broke an invariant) gets the line of the nearest enclosing key or array entry
/// the file has, and a path the file has nothing of gets line 1.
pub(super) fn line_of_key(text: &str, path: &str) -> usize {
    read(text)
        .and_then(|root| offset_of(&root, path))
        .map_or(1, |offset| line_of(text, offset))
}

/// The path of the key a byte `offset` belongs to: of the keys starting on the offset's line, the last one that
/// starts at or before it (the key of a bad value, or the bad key itself), else the first one (a table header).
/// `None` when the line holds no key, or when `text` is not TOML at all.
pub(super) fn key_at(text: &str, offset: usize) -> Option<String> {
    let root = read(text)?;
    let mut keys = Vec::new();
    collect(&root, &mut String::new(), &mut keys);
    let offset = offset.min(text.len());
    let line_start = text.as_bytes()[..offset]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line_end = text.as_bytes()[offset..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(text.len(), |i| offset + i);
    let on_line = keys
        .iter()
        .filter(|(_, start)| (line_start..line_end).contains(start));
    on_line
        .clone()
        .filter(|(_, start)| *start <= offset)
        .max_by_key(|(_, start)| *start)
        .or_else(|| on_line.min_by_key(|(_, start)| *start))
        .map(|(path, _)| path.clone())
}

/// A TOML value reduced to where its keys are.
enum Node {
    /// Keys in the order the file has them.
    Table(Vec<(Spanned<String>, Node)>),
    Array(Vec<Node>),
    Leaf,
}

/// The key tree of `text`; `None` when it is not TOML, or holds a date-time (whose internal key has no span):
/// neither can be a valid cluster file, and the parse error then carries toml's own span.
fn read(text: &str) -> Option<Node> {
    toml::from_str(text).ok()
}

/// One step of a key path.
#[derive(Debug, PartialEq)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// `nodes[1].repl` as `Key("nodes"), Index(1), Key("repl")`.
fn steps(path: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let indexed = part
            .strip_suffix(']')
            .and_then(|p| p.split_once('['))
            .and_then(|(name, i)| Some((name, i.parse().ok()?)));
        match indexed {
            Some((name, i)) => out.extend([Step::Key(name), Step::Index(i)]),
            None => out.push(Step::Key(part)),
        }
    }
    out
}

/// The byte offset of `path`, or of the deepest part of it the file has.
fn offset_of(root: &Node, path: &str) -> Option<usize> {
    let mut node = root;
    let mut found = None;
    for step in steps(path) {
        // An array entry has no key of its own: it is found where its first key is, if it has one.
        let next = match (step, node) {
            (Step::Key(k), Node::Table(entries)) => entries
                .iter()
                .find(|(key, _)| key.get_ref() == k)
                .map(|(key, value)| (Some(key.span().start), value)),
            (Step::Index(i), Node::Array(items)) => {
                items.get(i).map(|item| (first_key(item), item))
            }
            _ => None,
        };
        let Some((start, value)) = next else { break };
        found = start.or(found);
        node = value;
    }
    found
}

/// Where an array entry starts: its first key (an entry of `[[nodes]]` has no key of its own).
fn first_key(node: &Node) -> Option<usize> {
    match node {
        Node::Table(entries) => entries.iter().map(|(k, _)| k.span().start).min(),
        Node::Array(_) | Node::Leaf => None,
    }
}

/// Every key of `node` under `prefix`, with its path and start offset.
fn collect(node: &Node, prefix: &mut String, out: &mut Vec<(String, usize)>) {
    match node {
        Node::Table(entries) => {
            for (key, value) in entries {
                let len = prefix.len();
                if !prefix.is_empty() {
                    prefix.push('.');
                }
                prefix.push_str(key.get_ref());
                out.push((prefix.clone(), key.span().start));
                collect(value, prefix, out);
                prefix.truncate(len);
            }
        }
        Node::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = prefix.len();
                let _ = write!(prefix, "[{i}]");
                collect(item, prefix, out);
                prefix.truncate(len);
            }
        }
        Node::Leaf => {}
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_str<E>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            entries.push((key, map.next_value()?));
        }
        Ok(Node::Table(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"[cluster]
secret = "s"

[lb]
listen = "a"
health = { interval_ms = 1, fall = 0 }
limits.read_timeout_ms = 0

[[nodes]]
name = "n1"

[[nodes]]
name = "n2"
weight = 0
"#;

    #[test]
    fn a_path_splits_into_keys_and_indices() {
        assert_eq!(
            steps("cookie.previous_keys[1].id"),
            [
                Step::Key("cookie"),
                Step::Key("previous_keys"),
                Step::Index(1),
                Step::Key("id")
            ]
        );
        assert_eq!(steps("lb"), [Step::Key("lb")]);
    }

    #[test]
    fn keys_in_inline_tables_dotted_keys_and_array_entries_have_their_own_lines() {
        assert_eq!(line_of_key(TEXT, "lb.health.fall"), 6);
        assert_eq!(line_of_key(TEXT, "lb.limits.read_timeout_ms"), 7);
        assert_eq!(line_of_key(TEXT, "nodes[1].name"), 13);
        assert_eq!(line_of_key(TEXT, "nodes[1].weight"), 14);
    }

    #[test]
    fn an_absent_key_gets_the_line_of_what_encloses_it() {
        assert_eq!(line_of_key(TEXT, "lb.admin"), 4, "the [lb] header");
        assert_eq!(
            line_of_key(TEXT, "nodes[0].http"),
            10,
            "the entry's first key"
        );
        assert_eq!(line_of_key(TEXT, "session.idle_timeout_s"), 1);
        assert_eq!(line_of_key("not = [toml", "lb"), 1);
    }

    #[test]
    fn an_offset_names_the_key_its_value_belongs_to() {
        let at = |needle: &str| key_at(TEXT, TEXT.find(needle).unwrap());
        assert_eq!(at("0 }").as_deref(), Some("lb.health.fall"));
        assert_eq!(at("1, fall").as_deref(), Some("lb.health.interval_ms"));
        assert_eq!(at("weight").as_deref(), Some("nodes[1].weight"));
        assert_eq!(at("[lb]").as_deref(), Some("lb"));
        assert_eq!(key_at(TEXT, TEXT.len()), None, "past the last line");
    }

    #[test]
    fn a_line_counts_from_one_and_an_offset_past_the_end_is_the_last_line() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 99), 3);
    }
}
