//! The credential domain's types, free of transport and storage types.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Microseconds since the Unix epoch: every time in this crate.
pub type Micros = i64;

/// What a credential holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An API key issued by a provider.
    ApiKey,
    /// An OAuth2 token set (JSON with `access_token`).
    OauthTokenSet,
    /// JSON with `username` and `password`.
    UsernamePassword,
    /// A cloud service-account key (a JSON object).
    ServiceAccountJson,
    /// A webhook signing secret.
    WebhookSigningSecret,
    /// Opaque bytes.
    Generic,
}

impl Kind {
    /// Every kind, for tests and documentation.
    pub const ALL: [Kind; 6] = [
        Kind::ApiKey,
        Kind::OauthTokenSet,
        Kind::UsernamePassword,
        Kind::ServiceAccountJson,
        Kind::WebhookSigningSecret,
        Kind::Generic,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ApiKey => "api_key",
            Kind::OauthTokenSet => "oauth_token_set",
            Kind::UsernamePassword => "username_password",
            Kind::ServiceAccountJson => "service_account_json",
            Kind::WebhookSigningSecret => "webhook_signing_secret",
            Kind::Generic => "generic",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.as_str() == name)
    }

    /// Whether Switchyard can make new material of this kind itself.
    pub fn is_generatable(self) -> bool {
        matches!(self, Kind::WebhookSigningSecret | Kind::Generic)
    }
}

/// A credential's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Usable.
    Active,
    /// Soft-deleted, recoverable until its purge time.
    Deleted,
}

impl State {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Active => "active",
            State::Deleted => "deleted",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<State> {
        match name {
            "active" => Some(State::Active),
            "deleted" => Some(State::Deleted),
            _ => None,
        }
    }
}

/// The state of one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionState {
    /// Accessible.
    Enabled,
    /// Kept, not accessible.
    Disabled,
    /// Material deleted for good.
    Destroyed,
}

impl VersionState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Enabled => "enabled",
            VersionState::Disabled => "disabled",
            VersionState::Destroyed => "destroyed",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<VersionState> {
        match name {
            "enabled" => Some(VersionState::Enabled),
            "disabled" => Some(VersionState::Disabled),
            "destroyed" => Some(VersionState::Destroyed),
            _ => None,
        }
    }
}

/// Where a version's material came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Given by a caller.
    Supplied,
    /// Made by Switchyard.
    Generated,
    /// Recovered from a backup.
    Restored,
}

impl Origin {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Supplied => "supplied",
            Origin::Generated => "generated",
            Origin::Restored => "restored",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<Origin> {
        match name {
            "supplied" => Some(Origin::Supplied),
            "generated" => Some(Origin::Generated),
            "restored" => Some(Origin::Restored),
            _ => None,
        }
    }
}

/// Rotation schedule and retention.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationPolicy {
    /// Seconds between scheduled rotations; 0 for none.
    pub rotation_period_secs: i64,
    /// Versions kept, the current one included; 0 for the server default.
    pub retained_versions: i64,
}

/// The metadata a caller sets on a credential.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialSpec {
    /// Free text.
    pub display_name: String,
    /// Lowercase provider name, may be empty.
    pub provider: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Expiry, if any.
    pub expire_time: Option<Micros>,
    /// Rotation.
    pub rotation: RotationPolicy,
    /// Subjects allowed to access the material; empty for any holder of the access scope.
    pub allowed_subjects: Vec<String>,
}

/// A stored credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    /// The tenant it belongs to.
    pub tenant: String,
    /// The final segment of its name.
    pub id: String,
    /// What it holds; immutable.
    pub kind: Kind,
    /// The settable metadata.
    pub spec: CredentialSpec,
    /// Lifecycle state.
    pub state: State,
    /// The version accessed by default.
    pub current_version: i64,
    /// Creation time.
    pub create_time: Micros,
    /// Last change.
    pub update_time: Micros,
    /// When it was soft-deleted.
    pub delete_time: Option<Micros>,
    /// When a soft-deleted credential is purged.
    pub purge_time: Option<Micros>,
    /// When scheduled rotation is next due.
    pub next_rotation_time: Option<Micros>,
    /// Increases on every write; the etag is derived from it.
    pub revision: i64,
}

impl Credential {
    /// `credentials/{id}`.
    pub fn name(&self) -> String {
        credential_name(&self.id)
    }

    /// The etag callers pass back to Update and Delete.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.revision)
    }

    /// Whether its access policy lets `subject` read its material.
    pub fn allows(&self, subject: &str) -> bool {
        let allowed = &self.spec.allowed_subjects;
        allowed.is_empty() || allowed.iter().any(|s| s == subject)
    }

    /// Whether it has expired at `now`.
    pub fn is_expired(&self, now: Micros) -> bool {
        self.spec.expire_time.is_some_and(|expiry| expiry <= now)
    }
}

/// One version of a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// The credential's id.
    pub credential_id: String,
    /// From 1.
    pub version: i64,
    /// Accessibility.
    pub state: VersionState,
    /// Where it came from.
    pub origin: Origin,
    /// When it was added.
    pub create_time: Micros,
    /// When its material was destroyed.
    pub destroy_time: Option<Micros>,
}

impl Version {
    /// `credentials/{id}/versions/{n}`.
    pub fn name(&self) -> String {
        version_name(&self.credential_id, self.version)
    }
}

/// `credentials/{id}`.
pub fn credential_name(id: &str) -> String {
    format!("credentials/{id}")
}

/// `credentials/{id}/versions/{n}`.
pub fn version_name(id: &str, version: i64) -> String {
    format!("credentials/{id}/versions/{version}")
}

/// One audit log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Position in the tenant's chain, from 1.
    pub sequence: i64,
    /// When.
    pub time: Micros,
    /// The caller's subject, or `system:<job>` for background work.
    pub principal: String,
    /// The RPC or job.
    pub action: String,
    /// The resource name.
    pub resource: String,
    /// A gRPC code name.
    pub result_code: String,
    /// Facts about the outcome; never secret material.
    pub detail: String,
    /// The request id, if any.
    pub request_id: String,
    /// The previous entry's hash.
    pub previous_hash: String,
    /// This entry's hash.
    pub hash: String,
}

/// Who is acting, and on which tenant's behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The tenant from the verified token.
    pub tenant: String,
    /// The token subject, or `system:<job>`.
    pub subject: String,
    /// The request id, for the audit log.
    pub request_id: String,
}

/// Filters of a credential listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Exact provider.
    pub provider: Option<String>,
    /// Every label must match.
    pub labels: BTreeMap<String, String>,
    /// Exact state.
    pub state: Option<State>,
    /// Include deleted ones when no state is given.
    pub show_deleted: bool,
}

impl ListFilter {
    /// A stable text form, for page-token fingerprints.
    pub fn fingerprint_source(&self) -> String {
        format!(
            "{:?}|{:?}|{:?}|{}",
            self.provider, self.labels, self.state, self.show_deleted
        )
    }
}

/// Filters of an audit listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// A credential name: its events and its versions' events.
    pub resource: Option<String>,
    /// Exact action.
    pub action: Option<String>,
    /// Exact principal.
    pub principal: Option<String>,
    /// Exact result code.
    pub result_code: Option<String>,
    /// At or after.
    pub start_time: Option<Micros>,
    /// Before.
    pub end_time: Option<Micros>,
    /// Newest first.
    pub newest_first: bool,
}

impl AuditFilter {
    /// A stable text form, for page-token fingerprints.
    pub fn fingerprint_source(&self) -> String {
        format!("{self:?}")
    }
}

/// One page of results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Token of the next page; empty on the last.
    pub next_page_token: String,
}

/// What a chain verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// How many entries were read.
    pub events_checked: i64,
    /// The first problem, if any.
    pub problem: Option<ChainBreak>,
    /// Hash of the last entry.
    pub head_hash: String,
}

/// Where and how a chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// The sequence number of the first entry that breaks it.
    pub sequence: i64,
    /// How.
    pub kind: ChainProblem,
}

/// How an audit chain breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainProblem {
    /// Content no longer matches the hash.
    Modified,
    /// An entry is missing.
    Missing,
    /// An intact entry is not where it belongs.
    Reordered,
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ChainProblem::Modified => write!(
                f,
                "audit event {} was modified: its content does not match its hash",
                self.sequence
            ),
            ChainProblem::Missing => write!(f, "audit event {} is missing", self.sequence),
            ChainProblem::Reordered => write!(
                f,
                "audit event {} is out of order: it does not follow the event before it",
                self.sequence
            ),
        }
    }
}

/// What a restore did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Credentials created.
    pub credentials_created: i32,
    /// Credentials that existed.
    pub credentials_existing: i32,
    /// Versions whose material was restored.
    pub versions_restored: i32,
    /// Versions left as they were.
    pub versions_skipped: i32,
    /// Names of credentials created or completed.
    pub restored: Vec<String>,
}
