//! MQTT topic rules: which text may stand in a topic, which filters are valid, and which topics a
//! filter matches.

/// Whether `s` may stand in an MQTT topic as text: no NUL, no control characters (U+0001-U+001F,
/// U+007F-U+009F) and no Unicode non-characters. MQTT forbids or discourages them (3.1.1 section
/// 1.5.3, MQTT 5 section 1.5.4) and mosquitto closes the connection of a client that publishes to
/// such a topic. Wildcards are checked separately.
pub fn topic_text_ok(s: &str) -> bool {
    s.chars().all(|c| {
        let u = c as u32;
        !c.is_control() && !(0xFDD0..=0xFDEF).contains(&u) && u & 0xFFFE != 0xFFFE
    })
}

/// Whether `filter` is a valid MQTT topic filter: non-empty, text that [`topic_text_ok`] accepts,
/// `#` only as the whole last level, `+` only as a whole level.
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || !topic_text_ok(filter) {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, level)| match *level {
        "#" => i + 1 == levels.len(),
        "+" => true,
        l => !l.contains(['+', '#']),
    })
}

/// Whether `topic` matches the MQTT `filter` (`+`, `#`; a `$share/<group>/` prefix is ignored).
pub(crate) fn topic_matches(filter: &str, topic: &str) -> bool {
    let filter = match filter.strip_prefix("$share/").and_then(|rest| rest.split_once('/')) {
        Some((_group, f)) => f,
        None => filter,
    };
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        match (level, topic_levels.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (l, Some(t)) if l == t => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_text_refuses_controls_and_noncharacters() {
        assert!(topic_text_ok("mcm/edge-1/image/tablet-42 é✓"));
        for bad in ["a\nb", "a\tb", "\u{1b}", "\u{7f}", "\u{85}", "\u{fdd0}", "\u{ffff}", "\u{1fffe}", "\0"] {
            assert!(!topic_text_ok(bad), "{bad:?}");
        }
    }


    #[test]
    fn filters() {
        assert!(valid_filter("$share/edge/mcm/+/request"));
        assert!(valid_filter("a/#"));
        assert!(!valid_filter("a/#/b"));
        assert!(!valid_filter("a/b+"));
        assert!(!valid_filter(""));
    }

    #[test]
    fn topic_filters() {
        assert!(topic_matches("mcm/a/request", "mcm/a/request"));
        assert!(!topic_matches("mcm/a/request", "mcm/b/request"));
        assert!(topic_matches("$share/edge/mcm/+/request", "mcm/b/request"));
        assert!(!topic_matches("mcm/+/request", "mcm/b/request/x"));
        assert!(topic_matches("mcm/#", "mcm/b/request/x"));
        assert!(topic_matches("mcm/#", "mcm"));
        assert!(!topic_matches("mcm/+", "mcm"));
    }
}
