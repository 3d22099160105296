use super::*;
use std::collections::HashMap;

/// The class decides the answer's shape; a row whose status disagrees with its class would
/// send, say, a challenge on a 503 or a 403 that clients read as "sign in again".
#[test]
fn every_status_agrees_with_its_class() {
    for r in Reason::ALL {
        let row = r.row();
        let ok = match row.class {
            Class::NoToken | Class::InvalidToken | Class::ClaimsChallenge => row.status == 401,
            Class::InsufficientScope | Class::Forbidden => row.status == 403,
            Class::BadRequest => matches!(row.status, 400 | 404 | 405 | 413 | 415),
            Class::Unavailable => row.status == 503,
            Class::RateLimited => row.status == 429,
        };
        assert!(ok, "{r:?}: status {} for {:?}", row.status, row.class);
        let rpc_ok = match row.class {
            Class::NoToken | Class::InvalidToken | Class::ClaimsChallenge => {
                row.rpc_code == UNAUTHORIZED
            }
            Class::InsufficientScope | Class::Forbidden => row.rpc_code == FORBIDDEN,
            Class::Unavailable => row.rpc_code == UNAVAILABLE_RPC,
            Class::RateLimited => row.rpc_code == RATE_LIMITED,
            Class::BadRequest => (-32768..=-32000).contains(&row.rpc_code),
        };
        assert!(rpc_ok, "{r:?}: JSON-RPC code {}", row.rpc_code);
    }
}

/// Codes are what operators grep for and alert on: snake_case ASCII, and one code per
/// reason, but for the pair that shares `groups_unavailable` on purpose (403 and 503).
#[test]
fn codes_are_stable_names_and_unique_but_for_groups() {
    let mut seen: HashMap<&str, Vec<Reason>> = HashMap::new();
    for r in Reason::ALL {
        let c = r.code();
        assert!(
            !c.is_empty() && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{c}"
        );
        seen.entry(c).or_default().push(*r);
    }
    for (code, rs) in seen {
        if code == "groups_unavailable" {
            assert_eq!(
                rs,
                [Reason::GroupsOverageUnresolved, Reason::GroupsUnavailable]
            );
        } else {
            assert_eq!(rs.len(), 1, "{code} is used by {rs:?}");
        }
    }
    assert!(!Reason::ALL.iter().any(|r| r.code() == "allowed"));
}

/// Client messages are fixed text: short, one line, nothing that could carry a cause.
#[test]
fn messages_are_fixed_short_text() {
    for r in Reason::ALL {
        let m = r.row().message;
        assert!(!m.is_empty() && m.len() <= 80, "{r:?}: {m}");
        assert!(
            m.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"'),
            "{r:?}: {m}"
        );
    }
}

/// The table as README shows it.
pub(crate) fn readme_table() -> String {
    let mut out = String::from(
        "| code | HTTP | JSON-RPC | OAuth `error` | client message |\n|---|---|---|---|---|\n",
    );
    for r in Reason::ALL {
        let row = r.row();
        out.push_str(&format!(
            "| `{}` | {} | {} | `{}` | {} |\n",
            row.code,
            row.status,
            row.rpc_code,
            row.class.oauth_error(),
            row.message
        ));
    }
    out
}

/// README's "Reason codes" table is this table: a row added, removed or changed here fails
/// until README says the same (the expected text is printed to paste).
#[test]
fn readme_lists_every_reason_as_the_table_says() {
    let readme = include_str!("../../README.md");
    let begin = "<!-- reason-codes:begin -->\n";
    let end = "<!-- reason-codes:end -->";
    let start = readme
        .find(begin)
        .expect("README has the reason-codes markers")
        + begin.len();
    let stop = readme[start..].find(end).expect("end marker") + start;
    let expected = readme_table();
    assert!(
        readme[start..stop] == expected,
        "README's reason table differs from src/reason.rs; it should read:\n{expected}"
    );
}
