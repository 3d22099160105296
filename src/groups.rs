//! The groups a principal is in, for the decision.
//!
//! A token that lists its groups is the whole answer and never causes a Graph call. A token
//! with a groups overage (`_claim_names.groups`, or `hasgroups`) needs Microsoft Graph; until a
//! Graph resolver is configured such a request is denied with `groups_unavailable` rather than
//! decided on a partial picture.

use std::borrow::Cow;

use crate::identity::{GroupsClaim, Principal};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupsError {
    #[error("the token has a groups overage and no Graph resolver is configured")]
    OverageUnresolved,
}

impl GroupsError {
    pub fn code(&self) -> &'static str {
        match self {
            GroupsError::OverageUnresolved => "groups_unavailable",
        }
    }
}

/// Resolves groups; today from the token alone.
#[derive(Debug, Default, Clone)]
pub struct GroupResolver {}

impl GroupResolver {
    pub fn new() -> Self {
        Self {}
    }

    /// The principal's group object ids (lower-case).
    pub async fn groups<'a>(
        &self,
        principal: &'a Principal,
    ) -> Result<Cow<'a, [String]>, GroupsError> {
        match &principal.groups {
            GroupsClaim::Listed(groups) => Ok(Cow::Borrowed(groups.as_slice())),
            GroupsClaim::Absent => Ok(Cow::Borrowed(&[])),
            GroupsClaim::Overage => Err(GroupsError::OverageUnresolved),
        }
    }
}
