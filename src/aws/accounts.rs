//! Accounts: [`AwsClients`] scoped to an STS role, and who it acts as.
//!
//! The controller reaches the backup and production accounts with its own
//! credentials or by STS AssumeRole ([`AwsClients::scoped`]); assumed
//! credentials are cached per role and session and refreshed by the SDK
//! before they expire.

use aws_config::sts::AssumeRoleProvider;
use aws_credential_types::provider::SharedCredentialsProvider;

use super::{AwsClients, AwsError, AwsOperation};
use crate::api::AccountAccess;

/// How to reach an account: a role (and external ID) to assume, with a
/// session name that says what the calls are for; no role means the
/// controller's own credentials.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Access {
    pub role: Option<AccountAccess>,
    pub session_name: String,
}

impl Access {
    /// The controller's own credentials.
    pub fn own() -> Self {
        Self {
            role: None,
            session_name: String::new(),
        }
    }

    /// Names the account for caches: the role ARN, or empty for the
    /// controller's own.
    pub fn account_key(&self) -> &str {
        self.role
            .as_ref()
            .map(|r| r.role_arn.as_str())
            .unwrap_or("")
    }

    /// `role` (if any) for a session named after `parts`.
    pub fn new(role: Option<&AccountAccess>, parts: &[&str]) -> Self {
        Self {
            role: role.cloned(),
            session_name: session_name(parts),
        }
    }
}

/// An STS role session name: `tender-` and the parts, in the characters STS
/// allows (`[\w+=,.@-]`), at most 64 long.
pub fn session_name(parts: &[&str]) -> String {
    let raw = format!("tender-{}", parts.join("-"));
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+=,.@_-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect()
}

/// A region and the role (if any) that reaches the account: where a group
/// of workers lives.
pub type RegionAccount = (String, Option<AccountAccess>);

/// Who the calls of an access act as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallerIdentity {
    pub account: String,
    pub arn: String,
}

impl AwsClients {
    /// Clients that act through `access`: these clients themselves for the
    /// controller's own credentials, else clients with the assumed role's
    /// credentials (built once per role and session, then reused).
    pub async fn scoped(&self, access: &Access) -> AwsClients {
        let Some(role) = &access.role else {
            return self.clone();
        };
        if let Some(found) = self
            .scopes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(access)
        {
            return found.clone();
        }
        let mut builder = AssumeRoleProvider::builder(&role.role_arn)
            .session_name(&access.session_name)
            .configure(&self.base);
        if let Some(id) = &role.external_id {
            builder = builder.external_id(id);
        }
        let provider = builder.build().await;
        let base = self
            .base
            .to_builder()
            .credentials_provider(SharedCredentialsProvider::new(provider))
            .build();
        let scoped = AwsClients::with(base, self.metrics.clone());
        self.scopes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(access.clone())
            .or_insert(scoped)
            .clone()
    }

    /// Forgets the clients of sessions named `session_name` (a finished job's).
    pub fn forget_session(&self, session_name: &str) {
        self.scopes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|a, _| a.session_name != session_name);
    }

    /// The account and identity these clients act as; fails with a clear
    /// error when the role cannot be assumed.
    pub async fn caller_identity(&self, region: &str) -> Result<CallerIdentity, AwsError> {
        let out = self
            .call(
                AwsOperation::GetCallerIdentity,
                self.sts(region).get_caller_identity().send(),
            )
            .await?;
        Ok(CallerIdentity {
            account: out.account().unwrap_or_default().to_string(),
            arn: out.arn().unwrap_or_default().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_fit_sts() {
        let name = session_name(&["team/a", "nightly backup", &"x".repeat(80)]);
        assert!(name.len() <= 64);
        assert!(name.starts_with("tender-team-a-nightly-backup-"));
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c))
        );
    }
}
