//! Azure Workload Identity's environment (`AZURE_*`, set by its webhook) applied to the
//! sections that use `workload_identity`, and checked against the rest of the config.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{Config, ConfigError, WorkloadIdentity};

/// The variables read.
pub(super) const VARS: [&str; 4] = [
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
];

impl Config {
    /// Fills each `workload_identity` section's `token_file` (and its section's empty
    /// `client_id`) from the webhook's variables, and refuses a webhook environment that
    /// disagrees with `entra` (another cloud, a directory not allowed).
    pub(super) fn apply_workload_identity(
        &mut self,
        azure: &BTreeMap<String, String>,
    ) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let mut sections: Vec<(&str, &mut String, &mut WorkloadIdentity)> = Vec::new();
        if let Some(g) = self.graph.as_mut()
            && let Some(wi) = g.workload_identity.as_mut()
        {
            sections.push(("graph", &mut g.client_id, wi));
        }
        if let Some(o) = self.obo.as_mut()
            && let Some(wi) = o.workload_identity.as_mut()
        {
            sections.push(("obo", &mut o.client_id, wi));
        }
        if let Some(o) = self.oauth.as_mut()
            && let Some(wi) = o.workload_identity.as_mut()
        {
            sections.push(("oauth", &mut o.client_id, wi));
        }

        let used = !sections.is_empty();
        for (section, client_id, wi) in sections {
            if client_id.is_empty()
                && let Some(id) = azure.get("AZURE_CLIENT_ID")
            {
                *client_id = id.clone();
            }
            if wi.token_file.is_none() {
                wi.token_file = azure.get("AZURE_FEDERATED_TOKEN_FILE").map(PathBuf::from);
            }
            if wi.token_file.is_none() {
                return bad(format!(
                    "{section}.workload_identity: no token_file, and AZURE_FEDERATED_TOKEN_FILE is not set (is the pod labelled azure.workload.identity/use: \"true\" and its service account annotated with the client id?)"
                ));
            }
            if client_id.is_empty() {
                return bad(format!(
                    "{section}.client_id is required: set it, or AZURE_CLIENT_ID (the service account's azure.workload.identity/client-id annotation)"
                ));
            }
            if wi.reread_seconds == 0 || wi.reread_seconds > 3600 {
                return bad(format!(
                    "{section}.workload_identity.reread_seconds must be between 1 and 3600 (the file rotates at least hourly)"
                ));
            }
        }
        if !used {
            return Ok(());
        }
        if let Some(host) = azure.get("AZURE_AUTHORITY_HOST")
            && host.trim_end_matches('/') != self.entra.authority.trim_end_matches('/')
        {
            return bad(format!(
                "AZURE_AUTHORITY_HOST is {host} but entra.authority is {}: tokens are requested from entra.authority, so both must name the same cloud",
                self.entra.authority
            ));
        }
        if let Some(tid) = azure.get("AZURE_TENANT_ID")
            && !self
                .entra
                .tenants
                .iter()
                .any(|t| t.eq_ignore_ascii_case(tid))
        {
            return bad(format!(
                "AZURE_TENANT_ID {tid} is not one of entra.tenants: the workload identity's app registration belongs to another directory than the one this gateway serves"
            ));
        }
        Ok(())
    }
}
