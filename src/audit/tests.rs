//! Field cleaning and bounds of audit events.

use super::clean_text;

#[test]
fn clean_text_replaces_control_characters_and_bounds_length() {
    assert_eq!(clean_text("tools/call", 64), "tools/call");
    assert_eq!(clean_text("\0", 64), "\u{fffd}");
    assert_eq!(
        clean_text("a\u{0}b\nc\u{7f}d", 64),
        "a\u{fffd}b\u{fffd}c\u{fffd}d"
    );
    assert_eq!(clean_text("abcdef", 4), "abc…");
    assert_eq!(clean_text("abcd", 4), "abcd");
    assert_eq!(clean_text("ééééé", 3), "éé…");
    assert_eq!(clean_text("", 4), "");
}
