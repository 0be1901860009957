//! Subscription patterns and the rule by which they match topic names.

use ipc_core::control::{WILDCARD, valid_topic_name, valid_topic_pattern};

/// What a subscription matches. The rule, segment-wise on `/`:
///
/// | pattern        | matches                                   | does not match            |
/// |----------------|-------------------------------------------|---------------------------|
/// | `a/b`          | `a/b`                                     | `a/b/c`, `a`, `a/bc`      |
/// | `a/**`         | `a/b`, `a/b/c` (one or more levels below) | `a`, `ab/c`, `b/a`        |
/// | `**`           | every topic                               |                           |
///
/// `**` may only be a whole last segment; `*` appears nowhere else, and topic names contain
/// no `*` at all (see [`valid_topic_name`]), so a name can never be mistaken for a pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Pattern {
    /// Exactly this topic.
    Exact(String),
    /// Every topic whose name starts with this prefix, which ends with `/`.
    Below(String),
    /// Every topic.
    All,
}

impl Pattern {
    /// Parses a pattern, or `None` if it is not valid (see [`valid_topic_pattern`]).
    pub(crate) fn parse(pattern: &str) -> Option<Self> {
        if !valid_topic_pattern(pattern) {
            return None;
        }
        if pattern == WILDCARD {
            return Some(Self::All);
        }
        Some(match pattern.strip_suffix(WILDCARD) {
            Some(prefix) => Self::Below(prefix.to_owned()),
            None => Self::Exact(pattern.to_owned()),
        })
    }

    /// Whether the topic `name` (a valid topic name) is matched.
    pub(crate) fn matches(&self, name: &str) -> bool {
        debug_assert!(valid_topic_name(name), "{name:?} is not a topic name");
        match self {
            Self::Exact(exact) => exact == name,
            // The prefix ends with '/', and a valid name has no empty segment, so what follows
            // the prefix is one or more whole segments.
            Self::Below(prefix) => name.len() > prefix.len() && name.starts_with(prefix.as_str()),
            Self::All => true,
        }
    }

    /// The pattern as a subscriber wrote it.
    pub(crate) fn text(&self) -> String {
        match self {
            Self::Exact(name) => name.clone(),
            Self::Below(prefix) => format!("{prefix}{WILDCARD}"),
            Self::All => WILDCARD.to_owned(),
        }
    }

    /// The one topic an exact pattern names.
    pub(crate) fn exact(&self) -> Option<&str> {
        match self {
            Self::Exact(name) => Some(name),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matching_rule() {
        let cases = [
            ("a/b", "a/b", true),
            ("a/b", "a/b/c", false),
            ("a/b", "a", false),
            ("a/b", "a/bc", false),
            ("a/**", "a/b", true),
            ("a/**", "a/b/c", true),
            ("a/**", "a", false),
            ("a/**", "ab/c", false),
            ("a/**", "ab", false),
            ("a/**", "b/a", false),
            ("a/b/**", "a/b/c", true),
            ("a/b/**", "a/bc/d", false),
            ("a/b/**", "a/b", false),
            ("sensors/**", "sensors/temp/room-1", true),
            ("sensors/**", "sensorsx/temp", false),
            ("**", "a", true),
            ("**", "a/b/c", true),
        ];
        for (pattern, topic, want) in cases {
            let p = Pattern::parse(pattern).unwrap();
            assert_eq!(p.matches(topic), want, "{pattern} vs {topic}");
        }
    }

    #[test]
    fn invalid_patterns_are_refused() {
        for bad in [
            "", "a/**/b", "a/*", "*", "a**", "/a", "a/", "a//b", "**/a", "***",
        ] {
            assert_eq!(Pattern::parse(bad), None, "{bad:?}");
        }
        assert_eq!(Pattern::parse("a").unwrap().exact(), Some("a"));
        assert_eq!(Pattern::parse("a/**").unwrap().exact(), None);
        assert_eq!(Pattern::parse("**"), Some(Pattern::All));
    }
}
