//! The groups a principal is in, for the decision.
//!
//! A token that lists its groups is the whole answer and never causes a Graph call. A token with
//! a groups overage (`_claim_names.groups`, or `hasgroups`) is resolved through Microsoft Graph
//! (never through the legacy endpoint named in the token):
//! - fresh entries (younger than `graph.cache_ttl_seconds`) are served from a bounded cache keyed
//!   by (`tid`, `oid`); concurrent misses for one user share one Graph call;
//! - when Graph fails, an entry younger than `graph.max_stale_seconds` is served (counted);
//! - otherwise the request is denied with `groups_unavailable` (503), never decided on a guess.
//!   Without a `graph` section an overage is `groups_unavailable` (403).

pub mod graph;

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use moka::future::Cache;

use crate::identity::{GroupsClaim, Principal};
use crate::ids::{DirectoryId, GroupId, ObjectId};
use crate::reason::Reason;
use graph::{GraphClient, GraphError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupsError {
    #[error("the token has a groups overage and no Graph resolver is configured")]
    OverageUnresolved,
    #[error("groups could not be resolved: {0}")]
    GraphUnavailable(GraphError),
}

impl GroupsError {
    /// Its row of the reason table: an overage nothing here can resolve is a standing 403;
    /// Graph failing with nothing usable cached is a transient 503. Both are
    /// `groups_unavailable` to the client.
    pub fn reason(&self) -> Reason {
        match self {
            GroupsError::OverageUnresolved => Reason::GroupsOverageUnresolved,
            GroupsError::GraphUnavailable(_) => Reason::GroupsUnavailable,
        }
    }
}

/// Where a Check's groups came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupsSource {
    /// The token's `groups` claim (or no claim: no groups).
    Token,
    /// Graph, answered from the fresh cache.
    GraphCache,
    /// Graph, asked now.
    Graph,
    /// Graph was unavailable: the last answer, within the staleness bound.
    Stale,
}

impl GroupsSource {
    /// The label in metrics, spans and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupsSource::Token => "token",
            GroupsSource::GraphCache => "graph_cache",
            GroupsSource::Graph => "graph",
            GroupsSource::Stale => "stale",
        }
    }

    /// Answered without a Graph call.
    pub fn is_cached(self) -> bool {
        matches!(self, GroupsSource::Token | GroupsSource::GraphCache)
    }
}

/// Group ids: borrowed from the token, or shared from the Graph cache.
pub enum Groups<'a> {
    Token(&'a [GroupId]),
    Graph(Arc<[GroupId]>),
}

impl Deref for Groups<'_> {
    type Target = [GroupId];
    fn deref(&self) -> &[GroupId] {
        match self {
            Groups::Token(g) => g,
            Groups::Graph(g) => g,
        }
    }
}

#[derive(Debug, Default)]
pub struct GroupStats {
    pub token: AtomicU64,
    pub cache_hits: AtomicU64,
    pub graph_lookups: AtomicU64,
    pub stale_served: AtomicU64,
    pub unavailable: AtomicU64,
}

pub struct GraphResolver {
    pub client: Arc<GraphClient>,
    fresh: Cache<(DirectoryId, ObjectId), Arc<[GroupId]>>,
    stale: Cache<(DirectoryId, ObjectId), Arc<[GroupId]>>,
}

impl GraphResolver {
    pub fn new(
        client: Arc<GraphClient>,
        ttl: Duration,
        max_stale: Duration,
        capacity: u64,
    ) -> Self {
        Self {
            client,
            fresh: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            stale: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(max_stale.max(ttl))
                .build(),
        }
    }
}

/// Resolves groups: from the token, or from Graph on an overage.
#[derive(Default)]
pub struct GroupResolver {
    graph: Option<GraphResolver>,
    pub stats: GroupStats,
}

impl GroupResolver {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_graph(graph: GraphResolver) -> Self {
        Self {
            graph: Some(graph),
            stats: GroupStats::default(),
        }
    }

    pub fn graph(&self) -> Option<&Arc<GraphClient>> {
        self.graph.as_ref().map(|g| &g.client)
    }

    /// The principal's group object ids (lower-case), and where they came from.
    pub async fn groups<'a>(
        &self,
        principal: &'a Principal,
    ) -> Result<(Groups<'a>, GroupsSource), GroupsError> {
        match &principal.groups {
            GroupsClaim::Listed(groups) => {
                self.stats.token.fetch_add(1, Ordering::Relaxed);
                Ok((Groups::Token(groups.as_slice()), GroupsSource::Token))
            }
            GroupsClaim::Absent => {
                self.stats.token.fetch_add(1, Ordering::Relaxed);
                Ok((Groups::Token(&[]), GroupsSource::Token))
            }
            // Boxed: the Graph path's future is large and rare; inline, every Check's future
            // would carry (and move) its size.
            GroupsClaim::Overage => Box::pin(self.overage_groups(principal)).await,
        }
    }

    async fn overage_groups<'a>(
        &self,
        principal: &'a Principal,
    ) -> Result<(Groups<'a>, GroupsSource), GroupsError> {
        let Some(g) = &self.graph else {
            return Err(GroupsError::OverageUnresolved);
        };
        let key = (principal.tid.clone(), principal.oid.clone());
        if let Some(hit) = g.fresh.get(&key).await {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok((Groups::Graph(hit), GroupsSource::GraphCache));
        }
        // One Graph call for all concurrent misses of this user.
        let fetched = g
            .fresh
            .try_get_with(key.clone(), async {
                self.stats.graph_lookups.fetch_add(1, Ordering::Relaxed);
                let groups: Arc<[GroupId]> = g.client.member_groups(&key.0, &key.1).await?.into();
                g.stale.insert(key.clone(), groups.clone()).await;
                Ok::<_, GraphError>(groups)
            })
            .await;
        match fetched {
            Ok(groups) => Ok((Groups::Graph(groups), GroupsSource::Graph)),
            Err(e) => match g.stale.get(&key).await {
                Some(old) => {
                    self.stats.stale_served.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, oid = %key.1, "Graph unavailable; serving cached groups within the staleness bound");
                    Ok((Groups::Graph(old), GroupsSource::Stale))
                }
                None => {
                    self.stats.unavailable.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, oid = %key.1, "Graph unavailable and no cached groups; denying");
                    Err(GroupsError::GraphUnavailable((*e).clone()))
                }
            },
        }
    }
}
