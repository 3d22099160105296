//! What the tests share: the harness that starts Envoy, mcp-authz, the stand-in and an upstream
//! ([`helpers`]), and servers of their own ([`pg`], [`redis_server`]).

pub mod browser;
pub mod docserver;
pub mod helpers;
pub mod pg;
pub mod redis_server;
