//! Serde defaults shared by several sections.

pub(super) fn yes() -> bool {
    true
}
