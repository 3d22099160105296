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

/// A GUID, parsed once at the boundary (a token's claim, a configuration value, a policy row)
/// into its canonical lower-case text. Compares and prints as that text.
///
/// Held inline (36 bytes): a token's `tid`, `oid` and each of its groups cost no
/// allocation, and a cached principal's group list is one block of ids, not a list of pointers
/// to strings.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Guid([u8; 36]);

impl Guid {
    /// `None` unless `s` is a GUID in its 8-4-4-4-12 text form (either case).
    pub fn parse(s: &str) -> Option<Self> {
        if !is_guid(s) {
            return None;
        }
        let mut text: [u8; 36] = s.as_bytes().try_into().ok()?;
        text.make_ascii_lowercase();
        Some(Guid(text))
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored (checked by `is_guid`), so this never falls back.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

// The hash of the 36 bytes read as two 16-byte words and a 4-byte word: three folds of the
// maps' hasher, kept in registers at a lookup. Hashing them as a `str` called the hasher's
// byte loop out of line and cost the decision's 40 group lookups 0.3 µs (`make microbench`).
// Consistent with `Eq` (the same bytes); the ids do not answer a `&str` lookup, so the hash
// need not be the text's.
impl std::hash::Hash for Guid {
    #[inline(always)]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let t = &self.0;
        let word = |at: usize| u128::from_le_bytes(std::array::from_fn(|k| t[at + k]));
        state.write_u128(word(0));
        state.write_u128(word(16));
        state.write_u32(u32::from_le_bytes([t[32], t[33], t[34], t[35]]));
    }
}

impl std::fmt::Debug for Guid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Guid").field(&self.as_str()).finish()
    }
}

macro_rules! guid_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Guid);

        impl $name {
            /// `None` unless `s` is a GUID (either case); kept lower-case.
            pub fn parse(s: &str) -> Option<Self> {
                Guid::parse(s).map($name)
            }

            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                self.0.as_str()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0.as_str())
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0.as_str() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0.as_str() == *other
            }
        }
    };
}

guid_newtype!(
    /// An Entra directory (tenant) id: a token's `tid`.
    DirectoryId
);
guid_newtype!(
    /// An Entra object id: a token's `oid` (a user, or an app's service principal).
    ObjectId
);
guid_newtype!(
    /// An Entra group's object id: an entry of a token's `groups` claim or of Graph's answer,
    /// and the key of a group grant.
    GroupId
);

/// The rule for a name an operator gives a policy row (server, tenant) and a route segment is
/// matched against: 1–128 of `A-Z a-z 0-9 . _ -`, not `.` or `..`. Safe in a URL path, a
/// header, a metric label and a log line without escaping.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && s != "."
        && s != ".."
}

macro_rules! text_newtype {
    ($(#[$doc:meta])* $name:ident, $rule:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(std::sync::Arc<str>);

        impl $name {
            /// `None` unless `s` follows the rule.
            pub fn parse(s: &str) -> Option<Self> {
                let rule: fn(&str) -> bool = $rule;
                rule(s).then(|| $name(s.into()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The shared text (a clone is a reference count).
            pub fn as_arc(&self) -> &std::sync::Arc<str> {
                &self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                &*self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                &*self.0 == *other
            }
        }
    };
}

text_newtype!(
    /// An MCP server's name (its policy row) or route key (the path segment under the MCP
    /// prefix, or Envoy's `context_extensions`), by [`is_name`].
    ServerName,
    is_name
);
text_newtype!(
    /// A tool's name as `tools/call` gives it (`params.name`). The MCP specification only
    /// recommends a character set (SHOULD: 1–128 of `A-Z a-z 0-9 _ - .`), and real servers use
    /// others (`/`, spaces), so the rule is what the gateway needs to match it safely: not
    /// empty. Logs and spans escape it.
    ToolName,
    |s: &str| !s.is_empty()
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_one_rule() {
        for good in ["github", "a", "my.server_2-x", &"n".repeat(128)] {
            assert!(ServerName::parse(good).is_some(), "{good}");
        }
        for bad in ["", ".", "..", "a b", "a/b", "a%2f", "é", &"n".repeat(129)] {
            assert!(ServerName::parse(bad).is_none(), "{bad:?}");
        }
        assert!(ToolName::parse("").is_none());
        assert_eq!(
            ToolName::parse("repo/delete it").map(|t| t.to_string()),
            Some("repo/delete it".into())
        );
        let g = GroupId::parse("AAAAAAAA-1D5E-4F6A-9B8C-7D6E5F4A3B2C").expect("guid");
        assert_eq!(g, "aaaaaaaa-1d5e-4f6a-9b8c-7d6e5f4a3b2c");
    }

    /// An id written in either case is the same map key, and ids that differ in any one
    /// character are different keys, under both hashers the maps use (std's and foldhash's).
    /// Were the hash to read fewer than the 36 bytes, or an upper-case id to hash apart, a
    /// grant keyed by a group would silently stop matching the token's group.
    #[test]
    fn an_id_is_one_map_key_whatever_its_case() {
        use std::hash::BuildHasher;
        let text = "aaaaaaaa-1d5e-4f6a-9b8c-7d6e5f4a3b2c";
        let g = GroupId::parse(text).expect("guid");
        let upper = GroupId::parse(&text.to_uppercase()).expect("guid");
        let std_hasher = std::collections::hash_map::RandomState::new();
        let fold = foldhash::fast::RandomState::default();
        assert_eq!(std_hasher.hash_one(&g), std_hasher.hash_one(&upper));
        assert_eq!(fold.hash_one(&g), fold.hash_one(&upper));
        let m: std::collections::HashMap<GroupId, u8, foldhash::fast::RandomState> =
            [(g.clone(), 1)].into_iter().collect();
        assert_eq!(m.get(&upper), Some(&1));
        // One character changed at every position a hex digit sits: a different key.
        for (at, c) in text.char_indices().filter(|(_, c)| *c != '-') {
            let other = format!(
                "{}{}{}",
                &text[..at],
                if c == '0' { '1' } else { '0' },
                &text[at + 1..]
            );
            let other = GroupId::parse(&other).expect("guid");
            assert_ne!(fold.hash_one(&g), fold.hash_one(&other), "position {at}");
            assert_ne!(
                std_hasher.hash_one(&g),
                std_hasher.hash_one(&other),
                "position {at}"
            );
            assert_eq!(m.get(&other), None, "position {at}");
        }
        assert_eq!(format!("{g:?}"), format!("GroupId(Guid({text:?}))"));
        assert_eq!(std::mem::size_of::<GroupId>(), 36);
    }

    #[test]
    fn ids_parse_once_into_lower_case_and_refuse_what_is_not_a_guid() {
        let tid = DirectoryId::parse("3F8A4B2C-1D5E-4F6A-9B8C-7D6E5F4A3B2C").expect("guid");
        assert_eq!(tid, "3f8a4b2c-1d5e-4f6a-9b8c-7d6e5f4a3b2c");
        assert_eq!(tid.to_string(), tid.as_str());
        for bad in [
            "",
            "3f8a4b2c1d5e4f6a9b8c7d6e5f4a3b2c",
            "3f8a4b2c-1d5e-4f6a-9b8c-7d6e5f4a3b2",
            "zf8a4b2c-1d5e-4f6a-9b8c-7d6e5f4a3b2c",
            "3f8a4b2c-1d5e-4f6a-9b8c-7d6e5f4a3b2c ",
        ] {
            assert!(ObjectId::parse(bad).is_none(), "{bad:?}");
        }
    }
}
