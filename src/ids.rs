//! Identifiers and constants the other modules share, with no dependency of their own: the
//! bottom floor of the crate, so that configuration validation, token validation and policy
//! compilation read an identifier the same way without importing each other.

/// The application ID of Microsoft Graph: the `aud` of tokens for Graph. They carry a `nonce`
/// header and only Graph can verify them, so one presented to mcp-authz is refused.
pub const GRAPH_APP_ID: &str = "00000003-0000-0000-c000-000000000000";

/// A GUID in its canonical text form (8-4-4-4-12 hexadecimal digits, either case), as Entra
/// writes tenant, object, group and application IDs.
pub fn is_guid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}
