//! The token's header and claims parser and the bearer extraction: any text as an
//! `Authorization` value. Never a panic; a parsed token names a key id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_authz::identity::{bearer_token, parse_jwt};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut payload = Vec::new();
    if let Ok(token) = bearer_token(&[text]) {
        let _ = parse_jwt(token, &mut payload);
    }
    if let Ok(parsed) = parse_jwt(text, &mut payload) {
        assert!(!parsed.header.kid.is_empty(), "a token without a key id parsed");
    }
});
