//! The credentials domain: every operation of the service, with its validation, its effects on
//! the record and secret stores, and its audit entry.
//!
//! Secret material is written before the records that point at it. When records stop pointing at
//! material (retention, purge), the transaction that drops the reference also queues it for
//! destruction, and the material is destroyed after the commit, or later by the sweep if the
//! secret store fails. A crash therefore leaves at worst unreferenced ciphertext (a write whose
//! record never committed), never a record without its material. No transaction is held across a
//! secret-store call.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures::{Stream, StreamExt};
use switchyard_secrets::{SecretBytes, SecretRef, SecretStore};
use switchyard_store::page::{self, PageError};
use switchyard_store::{Db, Tx, now_micros};

use super::audit::{self, ChainVerifier, Entry};
use super::backup::{BackupRecord, BackupVersion, BundleReader, BundleWriter, MIN_PASSPHRASE};
use super::error::{CredentialError, Result};
use super::generate::generate;
use super::model::*;
use super::validate::{self, Violations};
use crate::config::CredentialsConfig;
use crate::scopes;
use crate::store;

/// The fields UpdateCredential can change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum UpdateField {
    /// `display_name`.
    DisplayName,
    /// `provider`.
    Provider,
    /// `labels`.
    Labels,
    /// `expire_time`.
    ExpireTime,
    /// `rotation_policy`.
    RotationPolicy,
    /// `access_policy`.
    AccessPolicy,
}

/// How a new version comes about.
struct NewVersion<'a> {
    origin: Origin,
    request_id: Option<&'a str>,
    action: &'a str,
    only_if_due: bool,
}

/// A version added by `add_version`, or found there because a retry added it first.
struct AddedVersion {
    credential: Credential,
    version: Version,
    /// References of versions the retention policy destroyed, queued for destruction.
    destroyed: Vec<String>,
    /// False when the version existed already and the material just written is not needed.
    fresh: bool,
}

/// What CreateCredential asks for.
#[derive(Debug)]
pub struct CreateInput {
    /// The id.
    pub id: String,
    /// The kind; required.
    pub kind: Option<Kind>,
    /// The metadata.
    pub spec: CredentialSpec,
    /// The first version's material.
    pub payload: SecretBytes,
    /// For safe retries.
    pub request_id: Option<String>,
}

/// What AccessCredential returns.
#[derive(Debug)]
pub struct Accessed {
    /// The version's name.
    pub name: String,
    /// The credential's kind.
    pub kind: Kind,
    /// The material.
    pub material: SecretBytes,
    /// The credential's expiry.
    pub expire_time: Option<Micros>,
}

/// Where an export stands between two batches.
struct ExportState {
    this: Credentials,
    caller: Caller,
    writer: Option<BundleWriter>,
    after: Option<String>,
    exported: u64,
}

/// A stream of backup bundle bytes.
pub type BundleStream = Pin<Box<dyn Stream<Item = Result<Vec<u8>>> + Send>>;

/// The credentials service's domain logic.
#[derive(Debug, Clone)]
pub struct Credentials {
    db: Db,
    secrets: Arc<dyn SecretStore>,
    config: CredentialsConfig,
    /// Tenants whose attention gauges were last set, so that they can be zeroed when they clear.
    reported_tenants: Arc<std::sync::Mutex<BTreeSet<String>>>,
}

fn page_error(field: &str) -> impl Fn(PageError) -> CredentialError + '_ {
    move |err| CredentialError::invalid(field, err.to_string())
}

fn secret_scope(tenant: &str, id: &str) -> String {
    format!("{tenant}/credentials/{id}")
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

impl Credentials {
    /// The domain over a migrated database and a secret store.
    pub fn new(db: Db, secrets: Arc<dyn SecretStore>, config: CredentialsConfig) -> Self {
        Credentials {
            db,
            secrets,
            config,
            reported_tenants: Arc::default(),
        }
    }

    /// The record store.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The secret store.
    pub fn secrets(&self) -> &Arc<dyn SecretStore> {
        &self.secrets
    }

    fn check_rotation_period(&self, violations: &mut Violations, spec: &CredentialSpec) {
        let period = spec.rotation.rotation_period_secs;
        let min = i64::try_from(self.config.min_rotation_period.as_secs()).unwrap_or(i64::MAX);
        if period != 0 && period < min {
            violations.add(
                "credential.rotation_policy.rotation_period",
                format!("must be 0 (no scheduled rotation) or at least {min} seconds"),
            );
        }
    }

    fn retained(&self, credential: &Credential) -> i64 {
        match credential.spec.rotation.retained_versions {
            0 => self.config.default_retained_versions,
            n => n,
        }
    }

    async fn forget(&self, refs: Vec<String>) {
        for secret in refs {
            let destroyed = match SecretRef::parse(secret.clone()) {
                Ok(reference) => self.secrets.destroy(&reference).await,
                Err(err) => Err(err),
            };
            if let Err(err) = destroyed {
                // The records no longer point at it: at worst unreferenced ciphertext remains.
                tracing::warn!(secret_ref = %secret, error = %err, "destroying secret material failed");
            }
        }
    }

    async fn load(&self, tx: &mut Tx, tenant: &str, id: &str, lock: bool) -> Result<Credential> {
        store::get_credential(tx, tenant, id, lock)
            .await?
            .ok_or_else(|| CredentialError::NotFound(credential_name(id)))
    }

    // --- create, read, update, delete ---------------------------------------------------------

    /// Creates a credential with its first version.
    pub async fn create(&self, caller: &Caller, input: CreateInput) -> Result<Credential> {
        let now = now_micros();
        let mut violations = Violations::default();
        validate::credential_id(&mut violations, "credential_id", &input.id);
        validate::spec(&mut violations, "credential", &input.spec, now, true);
        self.check_rotation_period(&mut violations, &input.spec);
        match input.kind {
            None => violations.add("credential.kind", "required"),
            Some(kind) => validate::payload(
                &mut violations,
                "payload.data",
                kind,
                input.payload.expose(),
                self.config.max_secret_bytes,
            ),
        }
        if let Some(request_id) = &input.request_id {
            validate::request_id(&mut violations, "request_id", request_id);
        }
        violations.finish()?;
        let kind = input.kind.unwrap_or(Kind::Generic);

        let mut tx = self.db.begin().await?;
        if let Some(request_id) = &input.request_id
            && let Some(existing) =
                store::credential_by_request_id(&mut tx, &caller.tenant, request_id).await?
        {
            if existing.id == input.id {
                return Ok(existing);
            }
            return Err(CredentialError::invalid(
                "request_id",
                format!("was already used to create {}", existing.name()),
            ));
        }
        if store::get_credential(&mut tx, &caller.tenant, &input.id, false)
            .await?
            .is_some()
        {
            return Err(CredentialError::AlreadyExists(credential_name(&input.id)));
        }
        tx.commit().await?;

        let secret = self
            .secrets
            .put(&secret_scope(&caller.tenant, &input.id), &input.payload)
            .await?;
        let period = input.spec.rotation.rotation_period_secs;
        let credential = Credential {
            tenant: caller.tenant.clone(),
            id: input.id.clone(),
            kind,
            spec: input.spec,
            state: State::Active,
            current_version: 1,
            create_time: now,
            update_time: now,
            delete_time: None,
            purge_time: None,
            next_rotation_time: (period > 0)
                .then(|| now.saturating_add(period.saturating_mul(1_000_000))),
            revision: 1,
        };
        let version = Version {
            credential_id: input.id.clone(),
            version: 1,
            state: VersionState::Enabled,
            origin: Origin::Supplied,
            create_time: now,
            destroy_time: None,
        };
        let written = async {
            let mut tx = self.db.begin().await?;
            store::insert_credential(&mut tx, &credential, input.request_id.as_deref()).await?;
            store::insert_version(
                &mut tx,
                &caller.tenant,
                &version,
                Some(secret.as_str()),
                None,
            )
            .await?;
            let detail = format!("kind {}, version 1", kind.as_str());
            audit::append(
                &mut tx,
                caller,
                Entry {
                    action: "CreateCredential",
                    resource: &credential.name(),
                    result_code: "OK",
                    detail: &detail,
                },
                now,
            )
            .await?;
            tx.commit().await?;
            Ok::<_, CredentialError>(())
        }
        .await;
        if let Err(err) = written {
            self.forget(vec![secret.as_str().to_owned()]).await;
            // A concurrent retry with the same request id won the race: its result is ours.
            if let (CredentialError::AlreadyExists(_), Some(request_id)) = (&err, &input.request_id)
            {
                let mut tx = self.db.begin().await?;
                let winner =
                    store::credential_by_request_id(&mut tx, &caller.tenant, request_id).await?;
                tx.commit().await?;
                if let Some(winner) = winner.filter(|w| w.id == input.id) {
                    return Ok(winner);
                }
            }
            return Err(err);
        }
        Ok(credential)
    }

    /// Reads a credential, a soft-deleted one included.
    pub async fn get(&self, caller: &Caller, id: &str) -> Result<Credential> {
        let mut tx = self.db.begin().await?;
        let credential = self.load(&mut tx, &caller.tenant, id, false).await?;
        tx.commit().await?;
        Ok(credential)
    }

    /// Lists credentials by id.
    pub async fn list(
        &self,
        caller: &Caller,
        filter: &ListFilter,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<Credential>> {
        let mut violations = Violations::default();
        validate::labels(&mut violations, "labels", &filter.labels);
        if filter.provider.as_ref().is_some_and(|p| p.len() > 63) {
            violations.add("provider", "must be at most 63 characters");
        }
        violations.finish()?;
        let size = page::page_size(page_size).map_err(page_error("page_size"))?;
        let fingerprint = page::filter_fingerprint(&filter.fingerprint_source());
        let after: Option<String> =
            page::decode_token(page_token, &fingerprint).map_err(page_error("page_token"))?;
        let mut tx = self.db.begin().await?;
        let mut items =
            store::list_credentials(&mut tx, &caller.tenant, filter, after.as_deref(), size + 1)
                .await?;
        tx.commit().await?;
        Ok(paginate(&mut items, size, &fingerprint, |c| c.id.clone()))
    }

    /// Changes the fields in `mask` to their values in `spec`.
    pub async fn update(
        &self,
        caller: &Caller,
        id: &str,
        spec: CredentialSpec,
        mask: &BTreeSet<UpdateField>,
        etag: &str,
    ) -> Result<Credential> {
        let now = now_micros();
        let mut tx = self.db.begin().await?;
        let mut credential = self.load(&mut tx, &caller.tenant, id, true).await?;
        if !etag.is_empty() && etag != credential.etag() {
            return Err(CredentialError::EtagMismatch(credential.name()));
        }
        if credential.state == State::Deleted {
            return Err(CredentialError::Precondition(format!(
                "{} is deleted; undelete it first",
                credential.name()
            )));
        }
        for field in mask {
            match field {
                UpdateField::DisplayName => {
                    credential.spec.display_name = spec.display_name.clone()
                }
                UpdateField::Provider => credential.spec.provider = spec.provider.clone(),
                UpdateField::Labels => credential.spec.labels = spec.labels.clone(),
                UpdateField::ExpireTime => credential.spec.expire_time = spec.expire_time,
                UpdateField::AccessPolicy => {
                    credential.spec.allowed_subjects = spec.allowed_subjects.clone()
                }
                UpdateField::RotationPolicy => {
                    credential.spec.rotation = spec.rotation;
                    let current =
                        store::get_version(&mut tx, &caller.tenant, id, credential.current_version)
                            .await?;
                    let since = current.map_or(now, |(version, _)| version.create_time);
                    let period = spec.rotation.rotation_period_secs;
                    credential.next_rotation_time = (period > 0)
                        .then(|| since.saturating_add(period.saturating_mul(1_000_000)));
                }
            }
        }
        // The merged result is checked: fields outside the mask keep their stored values.
        let mut violations = Violations::default();
        let check_expiry = mask.contains(&UpdateField::ExpireTime);
        validate::spec(
            &mut violations,
            "credential",
            &credential.spec,
            now,
            check_expiry,
        );
        if mask.contains(&UpdateField::RotationPolicy) {
            self.check_rotation_period(&mut violations, &credential.spec);
        }
        violations.finish()?;
        credential.revision += 1;
        credential.update_time = now;
        store::update_credential(&mut tx, &credential).await?;
        let detail = format!("fields {mask:?}");
        audit::append(
            &mut tx,
            caller,
            Entry {
                action: "UpdateCredential",
                resource: &credential.name(),
                result_code: "OK",
                detail: &detail,
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(credential)
    }

    /// Soft-deletes a credential until its purge time.
    pub async fn delete(&self, caller: &Caller, id: &str, etag: &str) -> Result<Credential> {
        let now = now_micros();
        let mut tx = self.db.begin().await?;
        let mut credential = self.load(&mut tx, &caller.tenant, id, true).await?;
        if !etag.is_empty() && etag != credential.etag() {
            return Err(CredentialError::EtagMismatch(credential.name()));
        }
        if credential.state == State::Deleted {
            return Err(CredentialError::Precondition(format!(
                "{} is already deleted",
                credential.name()
            )));
        }
        credential.state = State::Deleted;
        credential.delete_time = Some(now);
        credential.purge_time = Some(now.saturating_add(micros(self.config.recovery_window)));
        credential.revision += 1;
        credential.update_time = now;
        store::update_credential(&mut tx, &credential).await?;
        audit::append(
            &mut tx,
            caller,
            Entry {
                action: "DeleteCredential",
                resource: &credential.name(),
                result_code: "OK",
                detail: "soft delete",
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(credential)
    }

    /// Restores a soft-deleted credential.
    pub async fn undelete(&self, caller: &Caller, id: &str) -> Result<Credential> {
        let now = now_micros();
        let mut tx = self.db.begin().await?;
        let mut credential = self.load(&mut tx, &caller.tenant, id, true).await?;
        if credential.state != State::Deleted {
            return Err(CredentialError::Precondition(format!(
                "{} is not deleted",
                credential.name()
            )));
        }
        credential.state = State::Active;
        credential.delete_time = None;
        credential.purge_time = None;
        credential.revision += 1;
        credential.update_time = now;
        store::update_credential(&mut tx, &credential).await?;
        audit::append(
            &mut tx,
            caller,
            Entry {
                action: "UndeleteCredential",
                resource: &credential.name(),
                result_code: "OK",
                detail: "",
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(credential)
    }

    // --- access -------------------------------------------------------------------------------

    /// Returns the material of the current or named version. Every attempt, allowed or not, is
    /// written to the audit log; if the audit entry cannot be written, no material is returned.
    /// `has_scope` says whether the caller's token has the access scope: the check happens here
    /// so that refusals are audited too.
    pub async fn access(&self, caller: &Caller, name: &str, has_scope: bool) -> Result<Accessed> {
        let outcome = self.access_unaudited(caller, name, has_scope).await;
        let (resource, code, detail) = match &outcome {
            Ok(accessed) => (accessed.name.clone(), "OK", String::new()),
            Err(err) => (name.to_owned(), err.result_code(), err.audit_detail()),
        };
        let now = now_micros();
        let mut tx = self.db.begin().await?;
        audit::append(
            &mut tx,
            caller,
            Entry {
                action: "AccessCredential",
                resource: &resource,
                result_code: code,
                detail: &detail,
            },
            now,
        )
        .await?;
        tx.commit().await?;
        let outcome_label = if outcome.is_ok() { "ok" } else { "refused" };
        metrics::counter!("switchyard_credentials_access_total", "outcome" => outcome_label)
            .increment(1);
        outcome
    }

    async fn access_unaudited(
        &self,
        caller: &Caller,
        name: &str,
        has_scope: bool,
    ) -> Result<Accessed> {
        if !has_scope {
            return Err(CredentialError::MissingScope(scopes::ACCESS));
        }
        let (id, requested) = validate::parse_access_name("name", name)?;
        let now = now_micros();
        let mut tx = self.db.begin().await?;
        let credential = self.load(&mut tx, &caller.tenant, &id, false).await?;
        if credential.state == State::Deleted {
            return Err(CredentialError::Unavailable {
                name: credential.name(),
                state: "deleted",
            });
        }
        if !credential.allows(&caller.subject) {
            return Err(CredentialError::AccessDenied(credential.name()));
        }
        if let Some(expired_at) = credential
            .spec
            .expire_time
            .filter(|_| credential.is_expired(now))
        {
            return Err(CredentialError::Expired {
                name: credential.name(),
                expired_at,
            });
        }
        let number = requested.unwrap_or(credential.current_version);
        let (version, secret) = store::get_version(&mut tx, &caller.tenant, &id, number)
            .await?
            .ok_or_else(|| CredentialError::NotFound(version_name(&id, number)))?;
        tx.commit().await?;
        let secret = match (version.state, secret) {
            (VersionState::Enabled, Some(secret)) => SecretRef::parse(secret)?,
            (VersionState::Disabled, _) => {
                return Err(CredentialError::Unavailable {
                    name: version.name(),
                    state: "disabled",
                });
            }
            _ => {
                return Err(CredentialError::Unavailable {
                    name: version.name(),
                    state: "destroyed",
                });
            }
        };
        let material = self.secrets.get(&secret).await?;
        Ok(Accessed {
            name: version.name(),
            kind: credential.kind,
            material,
            expire_time: credential.spec.expire_time,
        })
    }

    // --- versions -----------------------------------------------------------------------------

    /// Adds a version (supplied, or generated when `payload` is `None`) and makes it current,
    /// then destroys versions beyond the retention policy.
    pub async fn rotate(
        &self,
        caller: &Caller,
        id: &str,
        payload: Option<SecretBytes>,
        request_id: Option<&str>,
    ) -> Result<(Credential, Version)> {
        if let Some(request_id) = request_id {
            let mut violations = Violations::default();
            validate::request_id(&mut violations, "request_id", request_id);
            violations.finish()?;
        }
        let mut tx = self.db.begin().await?;
        let credential = self.load(&mut tx, &caller.tenant, id, false).await?;
        if let Some(request_id) = request_id
            && let Some(version) =
                store::version_by_request_id(&mut tx, &caller.tenant, id, request_id).await?
        {
            return Ok((credential, version));
        }
        tx.commit().await?;
        if credential.state == State::Deleted {
            return Err(CredentialError::Precondition(format!(
                "{} is deleted",
                credential.name()
            )));
        }
        let (material, origin) = match payload {
            Some(material) => {
                let mut violations = Violations::default();
                validate::payload(
                    &mut violations,
                    "payload.data",
                    credential.kind,
                    material.expose(),
                    self.config.max_secret_bytes,
                );
                violations.finish()?;
                (material, Origin::Supplied)
            }
            None => match generate(credential.kind) {
                Some(material) => (material, Origin::Generated),
                None => {
                    return Err(CredentialError::invalid(
                        "payload",
                        format!(
                            "required: Switchyard cannot generate a {}; it generates webhook_signing_secret and generic material",
                            credential.kind.as_str()
                        ),
                    ));
                }
            },
        };
        let new = NewVersion {
            origin,
            request_id,
            action: "RotateCredential",
            only_if_due: false,
        };
        self.store_version(caller, id, &material, new)
            .await?
            .ok_or_else(|| CredentialError::Precondition("rotation skipped".into()))
    }

    /// The scheduled rotation of one credential, if it is still due once its row is locked:
    /// whoever claimed it earlier, on whatever replica, the second pass finds it not due.
    async fn rotate_if_due(&self, caller: &Caller, id: &str, kind: Kind) -> Result<bool> {
        let Some(material) = generate(kind) else {
            return Ok(false);
        };
        let new = NewVersion {
            origin: Origin::Generated,
            request_id: None,
            action: "ScheduledRotation",
            only_if_due: true,
        };
        Ok(self
            .store_version(caller, id, &material, new)
            .await?
            .is_some())
    }

    /// Writes the material, then the version row pointing at it; cleans up the material if the
    /// records are not written, and destroys versions beyond retention once they are.
    async fn store_version(
        &self,
        caller: &Caller,
        id: &str,
        material: &SecretBytes,
        new: NewVersion<'_>,
    ) -> Result<Option<(Credential, Version)>> {
        let secret = self
            .secrets
            .put(&secret_scope(&caller.tenant, id), material)
            .await?;
        match self.add_version(caller, id, &secret, new).await {
            Ok(Some(added)) => {
                if added.fresh {
                    self.collect_garbage(added.destroyed).await;
                } else {
                    self.forget(vec![secret.as_str().to_owned()]).await;
                }
                Ok(Some((added.credential, added.version)))
            }
            Ok(None) => {
                self.forget(vec![secret.as_str().to_owned()]).await;
                Ok(None)
            }
            Err(err) => {
                self.forget(vec![secret.as_str().to_owned()]).await;
                Err(err)
            }
        }
    }

    async fn add_version(
        &self,
        caller: &Caller,
        id: &str,
        secret: &SecretRef,
        new: NewVersion<'_>,
    ) -> Result<Option<AddedVersion>> {
        let now = now_micros();
        let mut tx = self.db.begin().await?;
        let mut credential = self.load(&mut tx, &caller.tenant, id, true).await?;
        if credential.state == State::Deleted {
            return Err(CredentialError::Precondition(format!(
                "{} is deleted",
                credential.name()
            )));
        }
        if new.only_if_due && credential.next_rotation_time.is_none_or(|due| due > now) {
            return Ok(None);
        }
        let (origin, request_id, action) = (new.origin, new.request_id, new.action);
        // Under the row lock, a concurrent retry with the same request id is seen here.
        if let Some(request_id) = request_id
            && let Some(existing) =
                store::version_by_request_id(&mut tx, &caller.tenant, id, request_id).await?
        {
            return Ok(Some(AddedVersion {
                credential,
                version: existing,
                destroyed: Vec::new(),
                fresh: false,
            }));
        }
        let number = store::max_version(&mut tx, &caller.tenant, id)
            .await?
            .checked_add(1)
            .filter(|n| *n <= validate::MAX_VERSION)
            .ok_or_else(|| {
                CredentialError::Precondition(format!(
                    "{} has no version numbers left",
                    credential_name(id)
                ))
            })?;
        let version = Version {
            credential_id: id.to_owned(),
            version: number,
            state: VersionState::Enabled,
            origin,
            create_time: now,
            destroy_time: None,
        };
        store::insert_version(
            &mut tx,
            &caller.tenant,
            &version,
            Some(secret.as_str()),
            request_id,
        )
        .await?;
        credential.current_version = number;
        credential.revision += 1;
        credential.update_time = now;
        let period = credential.spec.rotation.rotation_period_secs;
        credential.next_rotation_time =
            (period > 0).then(|| now.saturating_add(period.saturating_mul(1_000_000)));
        store::update_credential(&mut tx, &credential).await?;

        let keep_from = number - self.retained(&credential) + 1;
        let mut destroyed = Vec::new();
        for (old, secret) in
            store::live_versions_through(&mut tx, &caller.tenant, id, keep_from - 1).await?
        {
            store::set_version_state(
                &mut tx,
                &caller.tenant,
                id,
                old,
                VersionState::Destroyed,
                now,
            )
            .await?;
            destroyed.extend(secret);
        }
        store::queue_garbage(&mut tx, &caller.tenant, &destroyed, now).await?;
        let detail = format!(
            "version {number} ({}); {} old versions destroyed",
            origin.as_str(),
            destroyed.len()
        );
        audit::append(
            &mut tx,
            caller,
            Entry {
                action,
                resource: &version.name(),
                result_code: "OK",
                detail: &detail,
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(Some(AddedVersion {
            credential,
            version,
            destroyed,
            fresh: true,
        }))
    }

    /// Lists versions, newest first.
    pub async fn list_versions(
        &self,
        caller: &Caller,
        id: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<Version>> {
        let size = page::page_size(page_size).map_err(page_error("page_size"))?;
        let fingerprint = page::filter_fingerprint(id);
        let before: Option<i64> =
            page::decode_token(page_token, &fingerprint).map_err(page_error("page_token"))?;
        let mut tx = self.db.begin().await?;
        self.load(&mut tx, &caller.tenant, id, false).await?;
        let rows = store::list_versions(&mut tx, &caller.tenant, id, before, size + 1).await?;
        tx.commit().await?;
        let mut items: Vec<Version> = rows.into_iter().map(|(version, _)| version).collect();
        Ok(paginate(&mut items, size, &fingerprint, |v| v.version))
    }

    /// Enables or disables a version. The current version cannot be disabled.
    pub async fn set_version_enabled(
        &self,
        caller: &Caller,
        id: &str,
        number: i64,
        enabled: bool,
    ) -> Result<Version> {
        let now = now_micros();
        let mut tx = self.db.begin().await?;
        let credential = self.load(&mut tx, &caller.tenant, id, true).await?;
        if credential.state == State::Deleted {
            return Err(CredentialError::Precondition(format!(
                "{} is deleted; undelete it first",
                credential.name()
            )));
        }
        let (mut version, _) = store::get_version(&mut tx, &caller.tenant, id, number)
            .await?
            .ok_or_else(|| CredentialError::NotFound(version_name(id, number)))?;
        if version.state == VersionState::Destroyed {
            return Err(CredentialError::Precondition(format!(
                "{} is destroyed",
                version.name()
            )));
        }
        if !enabled && number == credential.current_version {
            return Err(CredentialError::Precondition(format!(
                "{} is the current version; rotate before disabling it",
                version.name()
            )));
        }
        let (state, action) = if enabled {
            (VersionState::Enabled, "EnableCredentialVersion")
        } else {
            (VersionState::Disabled, "DisableCredentialVersion")
        };
        store::set_version_state(&mut tx, &caller.tenant, id, number, state, now).await?;
        version.state = state;
        audit::append(
            &mut tx,
            caller,
            Entry {
                action,
                resource: &version.name(),
                result_code: "OK",
                detail: "",
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(version)
    }

    /// Live credentials expiring within `within`, expired ones included, soonest first.
    pub async fn list_expiring(
        &self,
        caller: &Caller,
        within: Duration,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<Credential>> {
        let size = page::page_size(page_size).map_err(page_error("page_size"))?;
        let fingerprint = page::filter_fingerprint(&format!("within={}", within.as_secs()));
        let after: Option<(Micros, String)> =
            page::decode_token(page_token, &fingerprint).map_err(page_error("page_token"))?;
        let before = now_micros().saturating_add(micros(within));
        let mut tx = self.db.begin().await?;
        let mut items =
            store::list_expiring(&mut tx, &caller.tenant, before, after, size + 1).await?;
        tx.commit().await?;
        Ok(paginate(&mut items, size, &fingerprint, |c| {
            (c.spec.expire_time.unwrap_or_default(), c.id.clone())
        }))
    }

    // --- audit --------------------------------------------------------------------------------

    /// Lists the tenant's audit log.
    pub async fn list_audit(
        &self,
        caller: &Caller,
        filter: &AuditFilter,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<AuditEvent>> {
        let mut violations = Violations::default();
        for (field, value) in [
            ("resource", &filter.resource),
            ("action", &filter.action),
            ("principal", &filter.principal),
            ("result_code", &filter.result_code),
        ] {
            if let Some(value) = value {
                validate::text(&mut violations, field, value, 300);
            }
        }
        violations.finish()?;
        let size = page::page_size(page_size).map_err(page_error("page_size"))?;
        let fingerprint = page::filter_fingerprint(&filter.fingerprint_source());
        let after: Option<i64> =
            page::decode_token(page_token, &fingerprint).map_err(page_error("page_token"))?;
        let mut tx = self.db.begin().await?;
        let mut items = store::list_audit(&mut tx, &caller.tenant, filter, after, size + 1).await?;
        tx.commit().await?;
        Ok(paginate(&mut items, size, &fingerprint, |e| e.sequence))
    }

    /// Recomputes the tenant's hash chain.
    pub async fn verify_chain(&self, caller: &Caller) -> Result<ChainReport> {
        const BATCH: usize = 1000;
        let mut verifier = ChainVerifier::new(&caller.tenant);
        let mut after = 0;
        loop {
            let mut tx = self.db.begin().await?;
            let batch = store::audit_batch(&mut tx, &caller.tenant, after, BATCH).await?;
            tx.commit().await?;
            for event in &batch {
                if let Err(problem) = verifier.check(event) {
                    return Ok(ChainReport {
                        events_checked: verifier.checked(),
                        problem: Some(problem),
                        head_hash: String::new(),
                    });
                }
            }
            match batch.last() {
                Some(last) if batch.len() == BATCH => after = last.sequence,
                _ => break,
            }
        }
        Ok(ChainReport {
            events_checked: verifier.checked(),
            problem: None,
            head_hash: verifier.head_hash().to_owned(),
        })
    }

    // --- backup -------------------------------------------------------------------------------

    /// Streams an encrypted bundle of every credential and version of the caller's tenant.
    ///
    /// Exporting reads secret material, so it takes what AccessCredential takes: the access scope
    /// (`has_access_scope`) and a place on every credential's access policy. Each exported
    /// credential is audited. A credential the caller may not read ends the stream with an error
    /// before the last frame, so no partial bundle can be restored.
    pub async fn export(
        &self,
        caller: &Caller,
        passphrase: &str,
        has_access_scope: bool,
    ) -> Result<BundleStream> {
        let checked = if !has_access_scope {
            Err(CredentialError::MissingScope(scopes::ACCESS))
        } else if passphrase.chars().count() < MIN_PASSPHRASE {
            Err(CredentialError::invalid(
                "passphrase",
                format!("must be at least {MIN_PASSPHRASE} characters"),
            ))
        } else {
            Ok(())
        };
        let detail = match &checked {
            Ok(()) => "export started".to_owned(),
            Err(err) => err.audit_detail(),
        };
        let code = checked
            .as_ref()
            .map_or_else(CredentialError::result_code, |()| "OK");
        self.audit_now(caller, "ExportBackup", "credentials", code, &detail)
            .await?;
        checked?;

        let (writer, header) = BundleWriter::new(passphrase).await?;
        let state = ExportState {
            this: self.clone(),
            caller: caller.clone(),
            writer: Some(writer),
            after: None,
            exported: 0,
        };
        let frames = futures::stream::try_unfold(state, |mut state| async move {
            let Some(writer) = state.writer.as_mut() else {
                return Ok(None);
            };
            const BATCH: usize = 50;
            let filter = ListFilter {
                show_deleted: true,
                ..ListFilter::default()
            };
            let mut tx = state.this.db.begin().await?;
            let batch = store::list_credentials(
                &mut tx,
                &state.caller.tenant,
                &filter,
                state.after.as_deref(),
                BATCH,
            )
            .await?;
            tx.commit().await?;
            let mut frames = Vec::new();
            for credential in &batch {
                if !credential.allows(&state.caller.subject) {
                    let err = CredentialError::AccessDenied(credential.name());
                    state
                        .this
                        .audit_now(
                            &state.caller,
                            "ExportBackup",
                            &credential.name(),
                            err.result_code(),
                            &err.audit_detail(),
                        )
                        .await?;
                    return Err(err);
                }
                let record = state
                    .this
                    .backup_record(&state.caller.tenant, credential)
                    .await?;
                let versions = record.versions.len();
                frames.extend(writer.record(record)?);
                let detail = format!("{versions} versions exported");
                state
                    .this
                    .audit_now(
                        &state.caller,
                        "ExportBackup",
                        &credential.name(),
                        "OK",
                        &detail,
                    )
                    .await?;
                state.exported += 1;
            }
            state.after = batch.last().map(|c| c.id.clone()).or(state.after.take());
            if batch.len() < BATCH {
                let writer = state.writer.take().ok_or_else(|| {
                    CredentialError::BackupInvalid("export finished twice".into())
                })?;
                frames.extend(writer.finish()?);
                let detail = format!("export finished: {} credentials", state.exported);
                state
                    .this
                    .audit_now(&state.caller, "ExportBackup", "credentials", "OK", &detail)
                    .await?;
            }
            Ok(Some((frames, state)))
        });
        let stream = futures::stream::once(async move { Ok(header) }).chain(frames);
        Ok(Box::pin(stream.filter(|chunk| {
            let keep = !matches!(chunk, Ok(bytes) if bytes.is_empty());
            async move { keep }
        })))
    }

    /// Appends one audit entry in its own transaction.
    async fn audit_now(
        &self,
        caller: &Caller,
        action: &str,
        resource: &str,
        result_code: &str,
        detail: &str,
    ) -> Result<()> {
        let mut tx = self.db.begin().await?;
        let entry = Entry {
            action,
            resource,
            result_code,
            detail,
        };
        audit::append(&mut tx, caller, entry, now_micros()).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn backup_record(&self, tenant: &str, credential: &Credential) -> Result<BackupRecord> {
        let mut tx = self.db.begin().await?;
        let versions =
            store::list_versions(&mut tx, tenant, &credential.id, None, usize::MAX >> 1).await?;
        tx.commit().await?;
        let mut out = Vec::with_capacity(versions.len());
        for (version, secret) in versions.into_iter().rev() {
            let material = match secret {
                Some(secret) => {
                    let bytes = self.secrets.get(&SecretRef::parse(secret)?).await?;
                    Some(STANDARD.encode(bytes.expose()))
                }
                None => None,
            };
            out.push(BackupVersion {
                version: version.version,
                state: version.state,
                origin: version.origin,
                create_time: version.create_time,
                destroy_time: version.destroy_time,
                material,
            });
        }
        Ok(BackupRecord {
            id: credential.id.clone(),
            kind: credential.kind,
            spec: credential.spec.clone(),
            state: credential.state,
            current_version: credential.current_version,
            create_time: credential.create_time,
            update_time: credential.update_time,
            delete_time: credential.delete_time,
            purge_time: credential.purge_time,
            next_rotation_time: credential.next_rotation_time,
            versions: out,
        })
    }

    /// Restores a bundle into the caller's tenant. What exists already is left as it is; missing
    /// credentials are created and missing versions added, so restoring twice changes nothing.
    pub async fn restore<S, E>(
        &self,
        caller: &Caller,
        passphrase: &str,
        mut chunks: S,
    ) -> Result<RestoreReport>
    where
        S: Stream<Item = std::result::Result<Vec<u8>, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut report = RestoreReport::default();
        let outcome = async {
            if passphrase.is_empty() {
                return Err(CredentialError::invalid(
                    "passphrase",
                    "required in the first message",
                ));
            }
            let mut reader = BundleReader::new(passphrase);
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(|err| {
                    CredentialError::BackupInvalid(format!("receiving the bundle: {err}"))
                })?;
                reader.push(&chunk)?;
                while let Some(record) = reader.next_record().await? {
                    self.restore_record(caller, record, &mut report).await?;
                }
            }
            reader.finish()
        }
        .await;
        let (code, detail) = match &outcome {
            Ok(()) => ("OK", format!("{report:?}")),
            Err(err) => (
                err.result_code(),
                format!("{}; restored so far: {report:?}", err.audit_detail()),
            ),
        };
        let mut tx = self.db.begin().await?;
        audit::append(
            &mut tx,
            caller,
            Entry {
                action: "RestoreBackup",
                resource: "credentials",
                result_code: code,
                detail: &detail,
            },
            now_micros(),
        )
        .await?;
        tx.commit().await?;
        outcome.map(|()| report)
    }

    async fn restore_record(
        &self,
        caller: &Caller,
        record: BackupRecord,
        report: &mut RestoreReport,
    ) -> Result<()> {
        check_record(&record, self.config.max_secret_bytes)?;
        let mut tx = self.db.begin().await?;
        let existing = store::get_credential(&mut tx, &caller.tenant, &record.id, false).await?;
        let present: BTreeSet<i64> =
            store::list_versions(&mut tx, &caller.tenant, &record.id, None, usize::MAX >> 1)
                .await?
                .into_iter()
                .map(|(version, _)| version.version)
                .collect();
        tx.commit().await?;

        let missing: Vec<&BackupVersion> = record
            .versions
            .iter()
            .filter(|v| !present.contains(&v.version))
            .collect();
        report.versions_skipped +=
            i32::try_from(record.versions.len() - missing.len()).unwrap_or(i32::MAX);
        if existing.is_some() && missing.is_empty() {
            report.credentials_existing += 1;
            return Ok(());
        }

        let mut written: Vec<(i64, Option<SecretRef>)> = Vec::new();
        for version in &missing {
            let secret = match &version.material {
                Some(material) => {
                    let bytes = SecretBytes::new(STANDARD.decode(material).map_err(|_| {
                        CredentialError::BackupInvalid(format!(
                            "{}: version {} material does not decode",
                            record.id, version.version
                        ))
                    })?);
                    Some(
                        self.secrets
                            .put(&secret_scope(&caller.tenant, &record.id), &bytes)
                            .await?,
                    )
                }
                None => None,
            };
            written.push((version.version, secret));
        }
        let refs: Vec<String> = written
            .iter()
            .filter_map(|(_, s)| s.as_ref().map(|s| s.as_str().to_owned()))
            .collect();

        let applied = self
            .apply_restore(caller, &record, existing, &missing, &written)
            .await;
        match applied {
            Ok(created) => {
                if created {
                    report.credentials_created += 1;
                } else {
                    report.credentials_existing += 1;
                }
                report.versions_restored += i32::try_from(missing.len()).unwrap_or(i32::MAX);
                report.restored.push(credential_name(&record.id));
                Ok(())
            }
            Err(err) => {
                self.forget(refs).await;
                Err(err)
            }
        }
    }

    async fn apply_restore(
        &self,
        caller: &Caller,
        record: &BackupRecord,
        existing: Option<Credential>,
        missing: &[&BackupVersion],
        written: &[(i64, Option<SecretRef>)],
    ) -> Result<bool> {
        let now = now_micros();
        let mut tx = self.db.begin().await?;
        let created = existing.is_none();
        let credential = match existing {
            None => {
                let credential = Credential {
                    tenant: caller.tenant.clone(),
                    id: record.id.clone(),
                    kind: record.kind,
                    spec: record.spec.clone(),
                    state: record.state,
                    current_version: record.current_version,
                    create_time: record.create_time,
                    update_time: now,
                    delete_time: record.delete_time,
                    purge_time: record.purge_time,
                    next_rotation_time: record.next_rotation_time,
                    revision: 1,
                };
                store::insert_credential(&mut tx, &credential, None).await?;
                credential
            }
            Some(credential) => credential,
        };
        for (version, (_, secret)) in missing.iter().zip(written) {
            let row = Version {
                credential_id: record.id.clone(),
                version: version.version,
                state: version.state,
                origin: if version.state == VersionState::Destroyed {
                    version.origin
                } else {
                    Origin::Restored
                },
                create_time: version.create_time,
                destroy_time: version.destroy_time,
            };
            store::insert_version(
                &mut tx,
                &caller.tenant,
                &row,
                secret.as_ref().map(SecretRef::as_str),
                None,
            )
            .await?;
        }
        if !created {
            // A newer current version from the bundle becomes current if it is usable.
            let newer = missing
                .iter()
                .find(|v| v.version == record.current_version && v.state == VersionState::Enabled);
            if record.current_version > credential.current_version && newer.is_some() {
                let mut updated = credential.clone();
                updated.current_version = record.current_version;
                updated.revision += 1;
                updated.update_time = now;
                store::update_credential(&mut tx, &updated).await?;
            }
        }
        let detail = format!(
            "{} versions restored{}",
            missing.len(),
            if created { ", credential created" } else { "" }
        );
        audit::append(
            &mut tx,
            caller,
            Entry {
                action: "RestoreBackup",
                resource: &credential.name(),
                result_code: "OK",
                detail: &detail,
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(created)
    }

    // --- background work ----------------------------------------------------------------------

    /// Rotates every credential whose scheduled rotation is due and that Switchyard can
    /// generate; returns how many it rotated. Replicas take turns through an advisory lock, and
    /// each rotation re-checks that it is still due under its row lock, so none happens twice.
    pub async fn rotate_due(&self) -> Result<usize> {
        let mut claim = self.db.begin().await?;
        if !claim.try_lock("credentials:scheduled-rotation").await? {
            return Ok(0);
        }
        let due = store::due_rotations(&mut claim, now_micros(), 100).await?;
        let held = self.hold_or_release(claim).await?;
        let mut rotated = 0;
        for (tenant, id, kind) in due {
            let caller = Caller {
                tenant,
                subject: "system:rotation".to_owned(),
                request_id: String::new(),
            };
            match self.rotate_if_due(&caller, &id, kind).await {
                Ok(true) => rotated += 1,
                Ok(false) => {}
                Err(err) => {
                    tracing::error!(tenant = %caller.tenant, credential = %id, error = %err, "scheduled rotation failed")
                }
            }
        }
        if let Some(claim) = held {
            claim.commit().await?;
        }
        Ok(rotated)
    }

    /// Purges soft-deleted credentials past their purge time: their material first, then their
    /// records. Returns how many were purged. Replicas take turns like [`Self::rotate_due`].
    pub async fn purge_due(&self) -> Result<usize> {
        let mut claim = self.db.begin().await?;
        if !claim.try_lock("credentials:purge").await? {
            return Ok(0);
        }
        let due = store::due_purges(&mut claim, now_micros(), 100).await?;
        let held = self.hold_or_release(claim).await?;
        let purged = self.purge_each(due).await;
        if let Some(claim) = held {
            claim.commit().await?;
        }
        purged
    }

    /// Keeps a job's lock transaction open for the pass on PostgreSQL; on SQLite, whose single
    /// connection the pass itself needs (and where one process runs anyway), ends it now.
    async fn hold_or_release(&self, claim: Tx) -> Result<Option<Tx>> {
        if self.db.dialect() == switchyard_store::Dialect::Postgres {
            return Ok(Some(claim));
        }
        claim.commit().await?;
        Ok(None)
    }

    async fn purge_each(&self, due: Vec<(String, String)>) -> Result<usize> {
        let mut purged = 0;
        for (tenant, id) in due {
            let now = now_micros();
            let caller = Caller {
                tenant: tenant.clone(),
                subject: "system:purge".to_owned(),
                request_id: String::new(),
            };
            // Under the row lock: an Undelete that got there first wins, one that comes later
            // finds nothing. The material is queued for destruction in the same transaction.
            let mut tx = self.db.begin().await?;
            let still_due = store::get_credential(&mut tx, &tenant, &id, true)
                .await?
                .is_some_and(|c| {
                    c.state == State::Deleted && c.purge_time.is_some_and(|t| t <= now)
                });
            if !still_due {
                tx.rollback().await?;
                continue;
            }
            let refs = store::secret_refs(&mut tx, &tenant, &id).await?;
            store::queue_garbage(&mut tx, &tenant, &refs, now).await?;
            store::delete_credential(&mut tx, &tenant, &id).await?;
            let entry = Entry {
                action: "PurgeCredential",
                resource: &credential_name(&id),
                result_code: "OK",
                detail: "recovery window elapsed",
            };
            audit::append(&mut tx, &caller, entry, now).await?;
            tx.commit().await?;
            self.collect_garbage(refs).await;
            purged += 1;
        }
        Ok(purged)
    }

    /// Destroys queued material and forgets what was destroyed; what fails stays queued for
    /// [`Self::sweep_garbage`].
    async fn collect_garbage(&self, refs: Vec<String>) {
        for secret in refs {
            let destroyed = match SecretRef::parse(secret.clone()) {
                Ok(reference) => self.secrets.destroy(&reference).await,
                Err(err) => Err(err),
            };
            let result = match destroyed {
                Ok(()) => {
                    async {
                        let mut tx = self.db.begin().await?;
                        store::remove_garbage(&mut tx, &secret).await?;
                        tx.commit().await?;
                        Ok::<_, CredentialError>(())
                    }
                    .await
                }
                Err(err) => Err(err.into()),
            };
            if let Err(err) = result {
                tracing::warn!(secret_ref = %secret, error = %err, "destroying material failed; it stays queued");
            }
        }
    }

    /// Retries the destruction of queued material; returns how much is still queued. One replica
    /// at a time.
    pub async fn sweep_garbage(&self) -> Result<i64> {
        let mut claim = self.db.begin().await?;
        if !claim.try_lock("credentials:garbage").await? {
            return Ok(0);
        }
        let refs = store::garbage_batch(&mut claim, 100).await?;
        claim.commit().await?;
        self.collect_garbage(refs).await;
        let mut tx = self.db.begin().await?;
        let left = tx
            .query_one("SELECT COUNT(*) FROM secret_garbage", &[])
            .await?
            .get::<i64>(0)?;
        tx.commit().await?;
        metrics::gauge!("switchyard_credentials_secret_garbage").set(left as f64);
        Ok(left)
    }

    /// Publishes, per tenant, how many credentials expire within the warning window and how many
    /// are overdue for a rotation Switchyard cannot do itself; with `log`, also one structured
    /// warning per such credential.
    pub async fn report_attention(&self, log: bool) -> Result<()> {
        let now = now_micros();
        let before = now.saturating_add(micros(self.config.expiry_warning));
        let mut tx = self.db.begin().await?;
        let counts = store::attention_counts(&mut tx, before, now).await?;
        let list = if log {
            store::attention_list(&mut tx, before, now, 1000).await?
        } else {
            Vec::new()
        };
        tx.commit().await?;
        let mut reported = self
            .reported_tenants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Tenants that had something to report last time and have nothing now go back to 0.
        let now_reported: BTreeSet<String> =
            counts.iter().map(|(tenant, ..)| tenant.clone()).collect();
        for gone in reported.difference(&now_reported) {
            metrics::gauge!("switchyard_credentials_expiring", "tenant" => gone.clone()).set(0.0);
            metrics::gauge!("switchyard_credentials_rotation_overdue", "tenant" => gone.clone())
                .set(0.0);
        }
        *reported = now_reported;
        drop(reported);
        for (tenant, expiring, overdue) in counts {
            metrics::gauge!("switchyard_credentials_expiring", "tenant" => tenant.clone())
                .set(expiring as f64);
            metrics::gauge!("switchyard_credentials_rotation_overdue", "tenant" => tenant)
                .set(overdue as f64);
        }
        for (tenant, id, expire_time, rotation_due) in list {
            tracing::warn!(
                tenant,
                credential = %credential_name(&id),
                expire_time_us = expire_time,
                rotation_due_us = rotation_due,
                expired = expire_time.is_some_and(|t| t <= now),
                "credential needs attention"
            );
        }
        Ok(())
    }
}

fn paginate<T, C: serde::Serialize>(
    items: &mut Vec<T>,
    size: usize,
    fingerprint: &str,
    cursor: impl Fn(&T) -> C,
) -> Page<T>
where
    T: Clone,
{
    let next_page_token = page::next_token(items, size, fingerprint, cursor);
    Page {
        items: std::mem::take(items),
        next_page_token,
    }
}

/// A bundle is operator input: its records are checked like API input before they are stored.
fn check_record(record: &BackupRecord, max_secret_bytes: usize) -> Result<()> {
    let invalid = |what: &str| {
        CredentialError::BackupInvalid(format!(
            "record {:?}: {what}",
            record.id.chars().take(64).collect::<String>()
        ))
    };
    if !validate::is_identifier(&record.id, 63) {
        return Err(invalid("invalid credential id"));
    }
    let mut violations = Violations::default();
    validate::spec(&mut violations, "credential", &record.spec, 0, false);
    if violations.finish().is_err() {
        return Err(invalid("invalid metadata"));
    }
    let mut seen = BTreeSet::new();
    for version in &record.versions {
        if !(1..=validate::MAX_VERSION).contains(&version.version) || !seen.insert(version.version)
        {
            return Err(invalid("invalid or repeated version numbers"));
        }
        match (&version.material, version.state) {
            (None, VersionState::Destroyed) => {}
            (Some(material), VersionState::Enabled | VersionState::Disabled) => {
                if material.len() > max_secret_bytes.saturating_mul(4) / 3 + 4 {
                    return Err(invalid("material larger than max_secret_bytes"));
                }
            }
            _ => return Err(invalid("material does not match the version state")),
        }
    }
    let current_enabled = record
        .versions
        .iter()
        .any(|v| v.version == record.current_version && v.state == VersionState::Enabled);
    if !current_enabled {
        return Err(invalid(
            "the current version is not an enabled version of the bundle",
        ));
    }
    Ok(())
}
