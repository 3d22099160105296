//! The phases of a Check, in order, each a function that returns what the next one needs or
//! the [`Denial`] that ends the Check, joined with `?` in [`Authorizer::phases`]:
//!
//! token → identity → request facts → policy snapshot → groups → policy → limits → session →
//! upstream auth → identity assertion → allow.
//!
//! Order matters for what a client learns: without a valid token the answer is 401 whatever
//! the request asks for (no probing of server names or body rules before authentication);
//! request-shape errors come next; the policy decides after. Nothing here can allow by
//! accident: the only allow verdict is built at the end, from a policy `Permit`.

use std::sync::Arc;

use super::outcome::{ALLOWED, CheckOutcome, Seen, SeenGroups};
use super::{Authorizer, CheckInput};
use crate::groups::Groups;
use crate::identity::{self, Principal, PrincipalKind, TokenError};
use crate::ids::GroupId;
use crate::lists::{ListCaller, ListKind};
use crate::mcp::{self, FactsError, HeaderField, RequestFacts};
use crate::obo::OboError;
use crate::policy::{self, Snapshot, Subject};
use crate::reason::Reason;
use crate::response::{self, Denial, Identity, RateLimitInfo, UpstreamAuth, Verdict};
use serde_json::value::RawValue;

/// The denial for a token the validator refused.
fn token_denial(e: TokenError) -> Denial {
    Denial::Refused(e.reason())
}

impl Authorizer {
    /// One Check: the phases, then the outcome that records it.
    pub(super) async fn decide(&self, input: &CheckInput<'_>, decision_id: String) -> CheckOutcome {
        let view = &input.view;
        let parsed = mcp::parse(view, &self.settings.path_prefix);
        let mut seen = Seen::from_facts(parsed.facts.as_ref().ok());
        let rpc_id = parsed.rpc_id;
        let (verdict, reason) = match self
            .phases(input, parsed.facts, rpc_id, &decision_id, &mut seen)
            .await
        {
            // A shadow mode allow carries the reason the policy refused.
            Ok(allow) => (allow, seen.would_deny.map_or(ALLOWED, |r| r.code())),
            Err(denial) => {
                let code = denial.code();
                let verdict = response::deny(
                    denial,
                    rpc_id,
                    &decision_id,
                    &self.settings,
                    view,
                    seen.server.as_deref(),
                );
                (verdict, code)
            }
        };
        CheckOutcome {
            decision_id,
            verdict,
            reason,
            seen,
        }
    }

    /// The phases joined: the allow verdict, or the denial of the first phase that refuses.
    async fn phases(
        &self,
        input: &CheckInput<'_>,
        facts: Result<RequestFacts, FactsError>,
        rpc_id: Option<&RawValue>,
        decision_id: &str,
        seen: &mut Seen,
    ) -> Result<Verdict, Denial> {
        let token = identity::bearer_token(&input.authorization).map_err(token_denial)?;
        let principal = self.identity(token, seen).await?;
        let catalog = mcp::is_catalog(&input.view, &self.settings.path_prefix);
        let facts = if catalog {
            None
        } else {
            Some(facts.map_err(Denial::from)?)
        };
        // Loaded once and moved into `seen` whatever the outcome: the policy's count is
        // shared by every worker, so each clone would be an atomic on a contended line.
        let snapshot = self.policy.load().ok_or(Reason::PolicyUnavailable)?;
        let out = match &facts {
            None => self
                .groups_of(&principal, seen)
                .await
                .map(|groups| self.catalog(&snapshot, &principal, &groups, &input.view)),
            Some(facts) => {
                self.decided(
                    input,
                    facts,
                    rpc_id,
                    decision_id,
                    token,
                    &snapshot,
                    &principal,
                    seen,
                )
                .await
            }
        };
        seen.snapshot = Some(snapshot);
        out
    }

    /// The phases from the groups on, for a request the policy decides (the snapshot and the
    /// principal at hand).
    #[allow(clippy::too_many_arguments)]
    async fn decided(
        &self,
        input: &CheckInput<'_>,
        facts: &RequestFacts,
        rpc_id: Option<&RawValue>,
        decision_id: &str,
        token: &str,
        snapshot: &Snapshot,
        principal: &Principal,
        seen: &mut Seen,
    ) -> Result<Verdict, Denial> {
        let groups = self.groups_of(principal, seen).await?;
        if self.audit.is_some() || self.decision_log.is_some() {
            seen.groups = Some(match &groups {
                Groups::Token(_) => SeenGroups::Token,
                Groups::Graph(g) => SeenGroups::Graph(g.clone()),
            });
        }
        let allow = match Self::policy(snapshot, principal, &groups, facts) {
            Ok(permit) => permit,
            Err(reason) => match policy::shadow_permit(snapshot, facts, reason) {
                // Shadow mode: the denial is recorded (`would_deny`) and the request allowed.
                Some(permit) => {
                    seen.would_deny = Some(reason.reason());
                    permit
                }
                None => return Err(Denial::Refused(reason.reason())),
            },
        };
        seen.tenant = Some(allow.tenant.clone());
        self.limits(snapshot, &allow, principal, facts).await?;
        self.session(input.view.session_id, principal).await?;
        let upstream_auth = self.upstream_auth(principal, &allow, token).await?;
        let assertion = self.assertion(principal, &allow)?;
        let list = list_caller(facts, principal, &groups, rpc_id);
        Ok(Self::allow(
            principal,
            &allow,
            decision_id,
            upstream_auth,
            assertion,
            list,
            input,
        ))
    }

    /// The server catalog: the enabled servers this caller may use (an `initialize` there
    /// would be allowed now, shadow mode included), with their URL and description.
    fn catalog(
        &self,
        snapshot: &Snapshot,
        principal: &Principal,
        groups: &[GroupId],
        view: &mcp::HttpView<'_>,
    ) -> Verdict {
        let base = response::public_base(&self.settings, view).unwrap_or_default();
        let prefix = self.settings.path_prefix.trim_end_matches('/');
        let servers: Vec<serde_json::Value> = snapshot
            .servers()
            .iter()
            .filter(|s| s.enabled)
            .filter(|s| {
                let facts = RequestFacts {
                    server: s.route_key.clone(),
                    call: mcp::Call::Rpc(mcp::RpcFacts {
                        method: Some("initialize".into()),
                        tool: None,
                        uri: None,
                        prompt: None,
                    }),
                };
                policy::lets_through(snapshot, &subject(principal, groups), &facts).is_ok()
            })
            .map(|s| {
                let mut entry = serde_json::json!({
                    "name": s.name.as_str(),
                    "url": format!("{base}{prefix}/{}", s.route_key),
                });
                if let Some(d) = &s.description {
                    entry["description"] = d.as_str().into();
                }
                entry
            })
            .collect();
        Verdict::Answer {
            body: serde_json::json!({ "servers": servers }).to_string(),
        }
    }

    /// Identity: the token verified (or found in the verified-token cache).
    async fn identity(&self, token: &str, seen: &mut Seen) -> Result<Arc<Principal>, Denial> {
        let verified = self.validator.validate(token).await.map_err(token_denial)?;
        let principal = verified.principal;
        seen.token_cache_hit = Some(verified.cache_hit);
        seen.principal = Some(principal.clone());
        Ok(principal)
    }

    /// Groups: from the token, or from Graph on an overage.
    async fn groups_of<'p>(
        &self,
        principal: &'p Principal,
        seen: &mut Seen,
    ) -> Result<Groups<'p>, Denial> {
        match self.groups.groups(principal).await {
            Ok((groups, source)) => {
                seen.groups_source = Some(source);
                Ok(groups)
            }
            // Graph down or throttling with nothing usable cached is a transient refusal; an
            // overage with no resolver configured is a standing one (the table says which).
            Err(e) => Err(Denial::Refused(e.reason())),
        }
    }

    /// Policy: the pure decision.
    fn policy<'s>(
        snapshot: &'s Snapshot,
        principal: &Principal,
        groups: &[GroupId],
        facts: &RequestFacts,
    ) -> Result<policy::Permit<'s>, policy::DenyReason> {
        policy::permit(snapshot, &subject(principal, groups), facts)
    }

    /// Limits: the rate-limit buckets the allow is charged to.
    async fn limits(
        &self,
        snapshot: &Snapshot,
        allow: &policy::Permit<'_>,
        principal: &Principal,
        facts: &RequestFacts,
    ) -> Result<(), Denial> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let req = snapshot.rate_request(allow, &principal.tid, &principal.oid, facts);
        if req.is_empty() {
            return Ok(());
        }
        // Boxed, as every slow path here: keeps the Check future small.
        let o = Box::pin(limiter.check(&req)).await;
        if o.allowed {
            Ok(())
        } else {
            Err(Denial::RateLimited(RateLimitInfo::from_outcome(&o)))
        }
    }

    /// Session: an allowed request in a session binds it, or is refused when the session is
    /// someone else's.
    async fn session(
        &self,
        session_id: HeaderField<'_>,
        principal: &Principal,
    ) -> Result<(), Denial> {
        let (Some(sessions), HeaderField::One(sid)) = (&self.sessions, session_id) else {
            return Ok(());
        };
        let owner = format!("{}/{}", principal.tid, principal.oid);
        Box::pin(sessions.bind(sid, &owner))
            .await
            .map_err(|_| Denial::from(Reason::SessionNotOwned))
    }

    /// Upstream auth: what the upstream gets in `authorization`.
    async fn upstream_auth(
        &self,
        principal: &Principal,
        allow: &policy::Permit<'_>,
        token: &str,
    ) -> Result<UpstreamAuth, Denial> {
        match UpstreamAuth::for_forwarding(allow.token_forwarding) {
            Some(auth) => Ok(auth),
            None => Box::pin(self.on_behalf_of(principal, allow, token)).await,
        }
    }

    /// The upstream's `authorization` for an `obo` server, or why there is none.
    async fn on_behalf_of(
        &self,
        principal: &Principal,
        allow: &policy::Permit<'_>,
        token: &str,
    ) -> Result<UpstreamAuth, Denial> {
        if principal.kind != PrincipalKind::User {
            return Err(Denial::from(Reason::OboUserOnly));
        }
        let (Some(obo), Some(scope)) = (&self.obo, allow.server.obo_scope.as_deref()) else {
            tracing::error!(server = %allow.server.name, "server wants on-behalf-of tokens but no obo section is configured");
            return Err(Denial::from(Reason::OboUnavailable));
        };
        match obo
            .token(&principal.tid, &principal.oid, scope, token)
            .await
        {
            Ok(t) => Ok(UpstreamAuth::Replace(format!("Bearer {t}"))),
            Err(OboError::InteractionRequired { claims }) => {
                Err(Denial::ClaimsChallenge { claims })
            }
            Err(e) => {
                tracing::warn!(error = %e, server = %allow.server.name, "on-behalf-of exchange failed");
                Err(Denial::from(Reason::OboFailed))
            }
        }
    }

    /// The signed identity for the upstream, when it gets one: without it the upstream would
    /// refuse or, worse, fall back, so a failure to sign fails closed.
    fn assertion(
        &self,
        principal: &Principal,
        allow: &policy::Permit<'_>,
    ) -> Result<Option<Arc<str>>, Denial> {
        let Some(assertions) = &self.assertions else {
            return Ok(None);
        };
        let who = crate::assertion::Subject {
            server: &allow.server.name,
            tid: &principal.tid,
            oid: &principal.oid,
            label: principal.label.as_deref(),
            tenant: allow.tenant,
            access_level: allow.level.as_str(),
        };
        assertions
            .assertion(&who)
            .map(Some)
            .ok_or_else(|| Denial::from(Reason::IdentityAssertionFailed))
    }

    /// Allow: the identity headers the upstream gets, and the headers Envoy removes.
    fn allow(
        principal: &Principal,
        allow: &policy::Permit<'_>,
        decision_id: &str,
        upstream_auth: UpstreamAuth,
        assertion: Option<Arc<str>>,
        list: Option<Box<ListCaller>>,
        input: &CheckInput<'_>,
    ) -> Verdict {
        let mut verdict = response::allow(
            &Identity {
                oid: &principal.oid,
                tid: &principal.tid,
                label: principal.label.as_deref(),
                tenant: allow.tenant,
                level: allow.level.as_str(),
            },
            decision_id,
            upstream_auth,
            input.header_names.iter().copied(),
        );
        let Verdict::Allow {
            set,
            remove,
            list: list_slot,
        } = &mut verdict
        else {
            return verdict;
        };
        if let Some(token) = assertion {
            // Set (replacing a client's own), so not also removed: Envoy removes after it sets.
            remove.retain(|n| n != crate::assertion::HEADER);
            set.push((crate::assertion::HEADER, token.to_string()));
        }
        if let Some(list) = list {
            // The answer uncompressed, so that the list filter can read it (`grpc` names the
            // request for it in the dynamic metadata).
            remove.push("accept-encoding".to_owned());
            *list_slot = Some(list);
        }
        verdict
    }
}

/// Who asks, as the policy reads it (labels are not identities: the upn only counts where the
/// policy opts in).
fn subject<'a>(principal: &'a Principal, groups: &'a [GroupId]) -> Subject<'a> {
    Subject {
        tid: &principal.tid,
        oid: &principal.oid,
        upn: principal.label.as_deref(),
        groups,
    }
}

/// Who asks, for the ext_proc filter, when the request is a list request.
fn list_caller(
    facts: &RequestFacts,
    principal: &Principal,
    groups: &[GroupId],
    rpc_id: Option<&RawValue>,
) -> Option<Box<ListCaller>> {
    let kind = ListKind::from_method(facts.call.method()?)?;
    Some(Box::new(ListCaller {
        kind,
        server: facts.server.clone(),
        tid: principal.tid.clone(),
        oid: principal.oid.clone(),
        upn: principal.label.as_deref().map(str::to_owned),
        groups: groups.to_vec(),
        // A list "notification" (no id) gets no answer from a conforming server; one that
        // answers anyway must answer with a null id, or its answer is refused.
        rpc_id: rpc_id.map_or_else(|| "null".to_owned(), |id| id.get().to_owned()),
    }))
}
