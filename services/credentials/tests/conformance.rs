//! The credentials domain and its repository, run against both record-store backends
//! (embedded SQLite and PostgreSQL) with the embedded secret store: one suite, two backends.

// Shared test helpers unwrap too: a failure should stop the test where it happens.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use switchyard_credentials::domain::error::CredentialError;
use switchyard_credentials::domain::model::*;
use switchyard_credentials::domain::service::{CreateInput, Credentials, UpdateField};
use switchyard_credentials::{CredentialsConfig, open};
use switchyard_secrets::{EmbeddedConfig, EmbeddedSecretStore, SecretBytes};
use switchyard_store::{Db, testing};

struct Backend {
    domain: Credentials,
    db: Db,
    _dirs: Vec<tempfile::TempDir>,
}

async fn sqlite(config: CredentialsConfig) -> Backend {
    let (db, dir) = testing::sqlite_db().await.unwrap();
    let (secrets_db, secrets_dir) = testing::sqlite_db().await.unwrap();
    let secrets =
        EmbeddedSecretStore::open(&EmbeddedConfig::default(), secrets_db, secrets_dir.path())
            .await
            .unwrap();
    let domain = open(db.clone(), Arc::new(secrets), config).await.unwrap();
    Backend {
        domain,
        db,
        _dirs: vec![dir, secrets_dir],
    }
}

async fn postgres(config: CredentialsConfig) -> Backend {
    let db = testing::postgres_db().await.unwrap();
    let secrets_db = testing::postgres_db().await.unwrap();
    let key_dir = tempfile::tempdir().unwrap();
    let secrets = EmbeddedSecretStore::open(&EmbeddedConfig::default(), secrets_db, key_dir.path())
        .await
        .unwrap();
    let domain = open(db.clone(), Arc::new(secrets), config).await.unwrap();
    Backend {
        domain,
        db,
        _dirs: vec![key_dir],
    }
}

/// Runs one scenario on both backends.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(#[tokio::test] async fn $name() { super::$name(super::sqlite(super::config()).await).await; })*
        }
        mod on_postgres {
            $(#[tokio::test] async fn $name() { super::$name(super::postgres(super::config()).await).await; })*
        }
    };
}

conformance!(
    create_get_and_idempotent_retry,
    validation_reports_every_field,
    list_filters_and_pages,
    update_with_mask_and_etag,
    soft_delete_undelete_and_purge,
    access_rules_and_audit,
    rotation_versions_and_retention,
    scheduled_rotation_runs_once,
    expiry_and_attention,
    audit_chain_detects_tampering,
    backup_round_trip_into_fresh_store,
    export_needs_the_rights_of_access,
    tenants_are_isolated,
);

fn config() -> CredentialsConfig {
    CredentialsConfig {
        recovery_window: Duration::from_millis(200),
        min_rotation_period: Duration::from_secs(1),
        ..CredentialsConfig::default()
    }
}

fn caller(tenant: &str) -> Caller {
    Caller {
        tenant: tenant.into(),
        subject: "alice".into(),
        request_id: "req-1".into(),
    }
}

fn input(id: &str, kind: Kind, secret: &str) -> CreateInput {
    CreateInput {
        id: id.into(),
        kind: Some(kind),
        spec: CredentialSpec {
            provider: "openai".into(),
            ..CredentialSpec::default()
        },
        payload: SecretBytes::new(secret.as_bytes().to_vec()),
        request_id: None,
    }
}

async fn material(
    domain: &Credentials,
    caller: &Caller,
    name: &str,
) -> Result<String, CredentialError> {
    let accessed = domain.access(caller, name, true).await?;
    Ok(String::from_utf8(accessed.material.expose().to_vec()).unwrap())
}

/// (principal, resource, result code) of the tenant's audit entries of one action, oldest first.
async fn audit_outcomes(
    b: &Backend,
    caller: &Caller,
    action: &str,
) -> Vec<(String, String, String)> {
    let filter = AuditFilter {
        action: Some(action.into()),
        ..AuditFilter::default()
    };
    let events = b
        .domain
        .list_audit(caller, &filter, 0, "")
        .await
        .unwrap()
        .items;
    events
        .into_iter()
        .map(|e| (e.principal, e.resource, e.result_code))
        .collect()
}

fn owned(rows: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    rows.iter()
        .map(|(p, r, c)| ((*p).to_owned(), (*r).to_owned(), (*c).to_owned()))
        .collect()
}

fn fields(err: CredentialError) -> Vec<String> {
    match err {
        CredentialError::Invalid(violations) => violations.into_iter().map(|v| v.field).collect(),
        other => panic!("expected invalid argument, got {other:?}"),
    }
}

async fn create_get_and_idempotent_retry(b: Backend) {
    let acme = caller("acme");
    let mut create = input("openai-prod", Kind::ApiKey, "sk-1");
    create.request_id = Some("create-1".into());
    let created = b.domain.create(&acme, create).await.unwrap();
    assert_eq!(created.name(), "credentials/openai-prod");
    assert_eq!(created.current_version, 1);
    let fetched = b.domain.get(&acme, "openai-prod").await.unwrap();
    assert_eq!(fetched, created);

    // A retry with the same request id returns the first result instead of failing.
    let mut retry = input("openai-prod", Kind::ApiKey, "sk-1");
    retry.request_id = Some("create-1".into());
    assert_eq!(b.domain.create(&acme, retry).await.unwrap(), created);
    // Without a request id a second create is a conflict.
    assert!(matches!(
        b.domain
            .create(&acme, input("openai-prod", Kind::ApiKey, "sk-2"))
            .await,
        Err(CredentialError::AlreadyExists(_))
    ));
    assert_eq!(
        material(&b.domain, &acme, "credentials/openai-prod")
            .await
            .unwrap(),
        "sk-1"
    );
}

async fn validation_reports_every_field(b: Backend) {
    let acme = caller("acme");
    let mut bad = input("Bad_Id", Kind::UsernamePassword, "not json");
    bad.spec.labels = BTreeMap::from([("Bad Key".into(), "v".into())]);
    bad.spec.expire_time = Some(1);
    bad.spec.rotation.retained_versions = 1000;
    let got = fields(b.domain.create(&acme, bad).await.unwrap_err());
    for expected in [
        "credential_id",
        "payload.data",
        "credential.expire_time",
        "credential.rotation_policy.retained_versions",
    ] {
        assert!(
            got.iter().any(|f| f == expected),
            "{expected} missing from {got:?}"
        );
    }
    assert!(
        got.iter().any(|f| f.starts_with("credential.labels")),
        "{got:?}"
    );

    let mut huge = input("huge", Kind::ApiKey, "x");
    huge.payload = SecretBytes::new(vec![b'x'; 64 * 1024 + 1]);
    assert_eq!(
        fields(b.domain.create(&acme, huge).await.unwrap_err()),
        ["payload.data"]
    );
    let mut no_kind = input("no-kind", Kind::ApiKey, "x");
    no_kind.kind = None;
    assert_eq!(
        fields(b.domain.create(&acme, no_kind).await.unwrap_err()),
        ["credential.kind"]
    );

    assert_eq!(
        fields(
            b.domain
                .list(&acme, &ListFilter::default(), 10, "garbage")
                .await
                .unwrap_err()
        ),
        ["page_token"]
    );
    assert_eq!(
        fields(
            b.domain
                .list(&acme, &ListFilter::default(), -1, "")
                .await
                .unwrap_err()
        ),
        ["page_size"]
    );
    for name in [
        "",
        "credentials/",
        "credentials/UPPER",
        "credentials/x/versions/0",
        "other/x",
        "credentials/x/versions/99999999999999999999",
    ] {
        assert_eq!(
            fields(b.domain.access(&acme, name, true).await.unwrap_err()),
            ["name"],
            "{name:?}"
        );
    }
}

async fn list_filters_and_pages(b: Backend) {
    let acme = caller("acme");
    for i in 0..7 {
        let mut create = input(&format!("cred-{i}"), Kind::ApiKey, "k");
        create.spec.provider = if i % 2 == 0 {
            "openai".into()
        } else {
            "github".into()
        };
        create.spec.labels = BTreeMap::from([(
            "env".into(),
            if i < 3 { "prod".into() } else { "dev".into() },
        )]);
        b.domain.create(&acme, create).await.unwrap();
    }
    b.domain.delete(&acme, "cred-6", "").await.unwrap();

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = b
            .domain
            .list(&acme, &ListFilter::default(), 2, &token)
            .await
            .unwrap();
        assert!(page.items.len() <= 2);
        seen.extend(page.items.into_iter().map(|c| c.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        seen,
        ["cred-0", "cred-1", "cred-2", "cred-3", "cred-4", "cred-5"],
        "deleted hidden, all pages"
    );

    let openai = ListFilter {
        provider: Some("openai".into()),
        ..ListFilter::default()
    };
    let ids: Vec<_> = b
        .domain
        .list(&acme, &openai, 0, "")
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, ["cred-0", "cred-2", "cred-4"]);

    let prod_github = ListFilter {
        provider: Some("github".into()),
        labels: BTreeMap::from([("env".into(), "prod".into())]),
        ..ListFilter::default()
    };
    let ids: Vec<_> = b
        .domain
        .list(&acme, &prod_github, 0, "")
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, ["cred-1"]);

    let deleted = ListFilter {
        state: Some(State::Deleted),
        ..ListFilter::default()
    };
    let ids: Vec<_> = b
        .domain
        .list(&acme, &deleted, 0, "")
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, ["cred-6"]);

    // A token from one filter is refused with another.
    let first = b.domain.list(&acme, &openai, 1, "").await.unwrap();
    assert!(
        b.domain
            .list(&acme, &ListFilter::default(), 1, &first.next_page_token)
            .await
            .is_err()
    );
}

async fn update_with_mask_and_etag(b: Backend) {
    let acme = caller("acme");
    let created = b
        .domain
        .create(&acme, input("gh", Kind::ApiKey, "ghp"))
        .await
        .unwrap();
    let change = CredentialSpec {
        display_name: "GitHub bot".into(),
        provider: "ignored".into(),
        labels: BTreeMap::from([("team".into(), "platform".into())]),
        ..CredentialSpec::default()
    };
    let mask = BTreeSet::from([UpdateField::DisplayName, UpdateField::Labels]);
    let updated = b
        .domain
        .update(&acme, "gh", change.clone(), &mask, &created.etag())
        .await
        .unwrap();
    assert_eq!(updated.spec.display_name, "GitHub bot");
    assert_eq!(
        updated.spec.provider, "openai",
        "fields outside the mask are kept"
    );
    assert_eq!(updated.spec.labels["team"], "platform");
    assert_ne!(updated.etag(), created.etag());
    // The old etag is stale now.
    assert!(matches!(
        b.domain
            .update(&acme, "gh", change, &mask, &created.etag())
            .await,
        Err(CredentialError::EtagMismatch(_))
    ));
    let labelled = ListFilter {
        labels: BTreeMap::from([("team".into(), "platform".into())]),
        ..ListFilter::default()
    };
    assert_eq!(
        b.domain
            .list(&acme, &labelled, 0, "")
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    // A rotation policy computes the next rotation time.
    let rotating = CredentialSpec {
        rotation: RotationPolicy {
            rotation_period_secs: 3600,
            retained_versions: 2,
        },
        ..CredentialSpec::default()
    };
    let updated = b
        .domain
        .update(
            &acme,
            "gh",
            rotating,
            &BTreeSet::from([UpdateField::RotationPolicy]),
            "",
        )
        .await
        .unwrap();
    assert_eq!(
        updated.next_rotation_time,
        Some(updated.create_time + 3_600_000_000)
    );
}

async fn soft_delete_undelete_and_purge(b: Backend) {
    let acme = caller("acme");
    b.domain
        .create(&acme, input("temp", Kind::ApiKey, "k"))
        .await
        .unwrap();
    let deleted = b.domain.delete(&acme, "temp", "").await.unwrap();
    assert_eq!(deleted.state, State::Deleted);
    assert!(deleted.purge_time.is_some());
    assert!(
        b.domain
            .access(&acme, "credentials/temp", true)
            .await
            .is_err()
    );
    assert!(matches!(
        b.domain.delete(&acme, "temp", "").await,
        Err(CredentialError::Precondition(_))
    ));
    let restored = b.domain.undelete(&acme, "temp").await.unwrap();
    assert_eq!(restored.state, State::Active);
    assert_eq!(
        material(&b.domain, &acme, "credentials/temp")
            .await
            .unwrap(),
        "k"
    );

    b.domain.delete(&acme, "temp", "").await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(b.domain.purge_due().await.unwrap(), 1);
    assert!(matches!(
        b.domain.get(&acme, "temp").await,
        Err(CredentialError::NotFound(_))
    ));
    assert_eq!(b.domain.purge_due().await.unwrap(), 0);
}

async fn access_rules_and_audit(b: Backend) {
    let acme = caller("acme");
    let mut restricted = input("restricted", Kind::ApiKey, "k");
    restricted.spec.allowed_subjects = vec!["service:ai".into()];
    b.domain.create(&acme, restricted).await.unwrap();

    assert!(matches!(
        b.domain.access(&acme, "credentials/restricted", true).await,
        Err(CredentialError::AccessDenied(_))
    ));
    let ai = Caller {
        subject: "service:ai".into(),
        ..acme.clone()
    };
    assert_eq!(
        material(&b.domain, &ai, "credentials/restricted")
            .await
            .unwrap(),
        "k"
    );
    assert!(matches!(
        b.domain.access(&ai, "credentials/restricted", false).await,
        Err(CredentialError::MissingScope(_))
    ));
    assert!(matches!(
        b.domain.access(&ai, "credentials/absent", true).await,
        Err(CredentialError::NotFound(_))
    ));

    assert_eq!(
        audit_outcomes(&b, &acme, "AccessCredential").await,
        owned(&[
            ("alice", "credentials/restricted", "PERMISSION_DENIED"),
            ("service:ai", "credentials/restricted/versions/1", "OK"),
            ("service:ai", "credentials/restricted", "PERMISSION_DENIED"),
            ("service:ai", "credentials/absent", "NOT_FOUND"),
        ])
    );
    let everything = b
        .domain
        .list_audit(&acme, &AuditFilter::default(), 0, "")
        .await
        .unwrap()
        .items;
    let events: Vec<_> = everything
        .iter()
        .filter(|e| e.action == "AccessCredential")
        .collect();
    assert!(events.iter().all(|e| e.request_id == "req-1"));
    // Filters by resource include the versions of a credential.
    let by_resource = AuditFilter {
        resource: Some("credentials/restricted".into()),
        ..AuditFilter::default()
    };
    assert_eq!(
        b.domain
            .list_audit(&acme, &by_resource, 0, "")
            .await
            .unwrap()
            .items
            .len(),
        4,
        "create + 3 accesses"
    );
    let newest = AuditFilter {
        newest_first: true,
        ..AuditFilter::default()
    };
    let page = b.domain.list_audit(&acme, &newest, 2, "").await.unwrap();
    assert_eq!(page.items[0].resource, "credentials/absent");
    let next = b
        .domain
        .list_audit(&acme, &newest, 2, &page.next_page_token)
        .await
        .unwrap();
    assert!(next.items[0].sequence < page.items[1].sequence);
}

async fn rotation_versions_and_retention(b: Backend) {
    let acme = caller("acme");
    let mut create = input("hook", Kind::WebhookSigningSecret, "whsec_first");
    create.spec.rotation.retained_versions = 3;
    b.domain.create(&acme, create).await.unwrap();
    let first_ref: String = b
        .db
        .query_opt("SELECT secret_ref FROM credential_versions WHERE credential_id = 'hook' AND version = 1", &[])
        .await
        .unwrap()
        .unwrap()
        .get(0)
        .unwrap();

    let (credential, v2) = b
        .domain
        .rotate(&acme, "hook", None, Some("rot-1"))
        .await
        .unwrap();
    assert_eq!(
        (credential.current_version, v2.version, v2.origin),
        (2, 2, Origin::Generated)
    );
    // Retrying with the same request id does not add a version.
    let (_, again) = b
        .domain
        .rotate(&acme, "hook", None, Some("rot-1"))
        .await
        .unwrap();
    assert_eq!(again.version, 2);
    let generated = material(&b.domain, &acme, "credentials/hook")
        .await
        .unwrap();
    assert!(generated.starts_with("whsec_") && generated != "whsec_first");
    assert_eq!(
        material(&b.domain, &acme, "credentials/hook/versions/1")
            .await
            .unwrap(),
        "whsec_first"
    );

    b.domain
        .rotate(
            &acme,
            "hook",
            Some(SecretBytes::new(b"whsec_three".to_vec())),
            None,
        )
        .await
        .unwrap();
    b.domain
        .rotate(
            &acme,
            "hook",
            Some(SecretBytes::new(b"whsec_four".to_vec())),
            None,
        )
        .await
        .unwrap();
    let versions = b
        .domain
        .list_versions(&acme, "hook", 0, "")
        .await
        .unwrap()
        .items;
    let states: Vec<(i64, VersionState)> = versions.iter().map(|v| (v.version, v.state)).collect();
    assert_eq!(
        states,
        [
            (4, VersionState::Enabled),
            (3, VersionState::Enabled),
            (2, VersionState::Enabled),
            (1, VersionState::Destroyed)
        ],
        "retention keeps 3 versions"
    );
    let queued =
        b.db.query_opt("SELECT COUNT(*) FROM secret_garbage", &[])
            .await
            .unwrap()
            .unwrap();
    assert_eq!(queued.get::<i64>(0).unwrap(), 0, "nothing left queued");
    let first = switchyard_secrets::SecretRef::parse(first_ref).unwrap();
    assert!(
        matches!(
            b.domain.secrets().get(&first).await,
            Err(switchyard_secrets::SecretError::NotFound(_))
        ),
        "the destroyed version's material is gone from the secret store"
    );
    assert!(matches!(
        b.domain
            .access(&acme, "credentials/hook/versions/1", true)
            .await,
        Err(CredentialError::Unavailable {
            state: "destroyed",
            ..
        })
    ));

    b.domain
        .set_version_enabled(&acme, "hook", 3, false)
        .await
        .unwrap();
    assert!(matches!(
        b.domain
            .access(&acme, "credentials/hook/versions/3", true)
            .await,
        Err(CredentialError::Unavailable {
            state: "disabled",
            ..
        })
    ));
    b.domain
        .set_version_enabled(&acme, "hook", 3, true)
        .await
        .unwrap();
    assert_eq!(
        material(&b.domain, &acme, "credentials/hook/versions/3")
            .await
            .unwrap(),
        "whsec_three"
    );
    assert!(matches!(
        b.domain.set_version_enabled(&acme, "hook", 4, false).await,
        Err(CredentialError::Precondition(_))
    ));

    // A kind Switchyard cannot generate needs its material supplied.
    b.domain
        .create(&acme, input("key", Kind::ApiKey, "sk"))
        .await
        .unwrap();
    assert_eq!(
        fields(b.domain.rotate(&acme, "key", None, None).await.unwrap_err()),
        ["payload"]
    );
    // Versions page newest first.
    let first = b.domain.list_versions(&acme, "hook", 2, "").await.unwrap();
    let second = b
        .domain
        .list_versions(&acme, "hook", 2, &first.next_page_token)
        .await
        .unwrap();
    assert_eq!(
        second.items.iter().map(|v| v.version).collect::<Vec<_>>(),
        [2, 1]
    );
}

async fn scheduled_rotation_runs_once(b: Backend) {
    let acme = caller("acme");
    let mut create = input("auto", Kind::Generic, "first");
    create.spec.rotation.rotation_period_secs = 1;
    b.domain.create(&acme, create).await.unwrap();
    let mut manual = input("manual", Kind::ApiKey, "sk");
    manual.spec.rotation.rotation_period_secs = 1;
    b.domain.create(&acme, manual).await.unwrap();
    assert_eq!(b.domain.rotate_due().await.unwrap(), 0, "not due yet");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Two passes at once (two replicas): the credential is rotated once.
    let (first, second) = tokio::join!(b.domain.rotate_due(), b.domain.rotate_due());
    assert_eq!(first.unwrap() + second.unwrap(), 1);
    let auto = b.domain.get(&acme, "auto").await.unwrap();
    assert_eq!(auto.current_version, 2);
    assert!(auto.next_rotation_time.unwrap() > auto.update_time);
    assert_eq!(
        b.domain.get(&acme, "manual").await.unwrap().current_version,
        1,
        "API keys are not generated"
    );
    let events = b
        .domain
        .list_audit(
            &acme,
            &AuditFilter {
                action: Some("ScheduledRotation".into()),
                ..AuditFilter::default()
            },
            0,
            "",
        )
        .await
        .unwrap()
        .items;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].principal, "system:rotation");
}

async fn expiry_and_attention(b: Backend) {
    let acme = caller("acme");
    let soon = switchyard_store::now_micros() + 300_000;
    let mut expiring = input("expiring", Kind::ApiKey, "k");
    expiring.spec.expire_time = Some(soon);
    b.domain.create(&acme, expiring).await.unwrap();
    let mut later = input("later", Kind::ApiKey, "k");
    later.spec.expire_time = Some(soon + 86_400_000_000 * 60);
    b.domain.create(&acme, later).await.unwrap();
    b.domain
        .create(&acme, input("never", Kind::ApiKey, "k"))
        .await
        .unwrap();

    let listed = b
        .domain
        .list_expiring(&acme, Duration::from_secs(86_400), 0, "")
        .await
        .unwrap()
        .items;
    assert_eq!(
        listed.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["expiring"]
    );
    b.domain.report_attention(true).await.unwrap();

    assert_eq!(
        material(&b.domain, &acme, "credentials/expiring")
            .await
            .unwrap(),
        "k"
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(matches!(
        b.domain.access(&acme, "credentials/expiring", true).await,
        Err(CredentialError::Expired { .. })
    ));
    let all = b
        .domain
        .list_expiring(&acme, Duration::from_secs(86_400 * 90), 1, "")
        .await
        .unwrap();
    assert_eq!(
        all.items[0].id, "expiring",
        "soonest first, expired included"
    );
    let next = b
        .domain
        .list_expiring(
            &acme,
            Duration::from_secs(86_400 * 90),
            1,
            &all.next_page_token,
        )
        .await
        .unwrap();
    assert_eq!(next.items[0].id, "later");
}

async fn audit_chain_detects_tampering(b: Backend) {
    let acme = caller("acme");
    b.domain
        .create(&acme, input("a", Kind::ApiKey, "k"))
        .await
        .unwrap();
    for _ in 0..3 {
        material(&b.domain, &acme, "credentials/a").await.unwrap();
    }
    let report = b.domain.verify_chain(&acme).await.unwrap();
    assert_eq!((report.events_checked, report.problem.clone()), (4, None));
    assert_eq!(report.head_hash.len(), 64);

    b.db.execute(
        "UPDATE audit_events SET principal = 'mallory' WHERE tenant = 'acme' AND sequence = 3",
        &[],
    )
    .await
    .unwrap();
    let report = b.domain.verify_chain(&acme).await.unwrap();
    assert_eq!(
        report.problem,
        Some(ChainBreak {
            sequence: 3,
            kind: ChainProblem::Modified
        })
    );

    b.db.execute(
        "UPDATE audit_events SET principal = 'alice' WHERE tenant = 'acme' AND sequence = 3",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(
        b.domain.verify_chain(&acme).await.unwrap().problem,
        None,
        "restoring the row heals it"
    );
    b.db.execute(
        "DELETE FROM audit_events WHERE tenant = 'acme' AND sequence = 2",
        &[],
    )
    .await
    .unwrap();
    let report = b.domain.verify_chain(&acme).await.unwrap();
    assert_eq!(
        report.problem,
        Some(ChainBreak {
            sequence: 2,
            kind: ChainProblem::Missing
        })
    );
}

async fn backup_round_trip_into_fresh_store(b: Backend) {
    let acme = caller("acme");
    let mut hook = input("hook", Kind::WebhookSigningSecret, "whsec_v1");
    hook.spec.labels = BTreeMap::from([("env".into(), "prod".into())]);
    b.domain.create(&acme, hook).await.unwrap();
    b.domain
        .rotate(
            &acme,
            "hook",
            Some(SecretBytes::new(b"whsec_v2".to_vec())),
            None,
        )
        .await
        .unwrap();
    b.domain
        .set_version_enabled(&acme, "hook", 1, false)
        .await
        .unwrap();
    b.domain
        .create(&acme, input("key", Kind::ApiKey, "sk-key"))
        .await
        .unwrap();
    b.domain
        .create(&acme, input("gone", Kind::ApiKey, "sk-gone"))
        .await
        .unwrap();
    b.domain.delete(&acme, "gone", "").await.unwrap();

    assert!(
        b.domain.export(&acme, "short", true).await.is_err(),
        "passphrases are at least 16 characters"
    );
    let passphrase = "a long operator passphrase";
    let bundle = collect(b.domain.export(&acme, passphrase, true).await.unwrap()).await;
    for secret in ["whsec_v1", "whsec_v2", "sk-key", "sk-gone"] {
        assert!(
            !contains(&bundle, secret.as_bytes()),
            "{secret} in plaintext in the bundle"
        );
    }

    let fresh = sqlite(config()).await;
    let restore = |bytes: Vec<u8>, pass: &'static str| {
        let domain = fresh.domain.clone();
        let acme = acme.clone();
        async move {
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                bytes.chunks(1000).map(|c| Ok(c.to_vec())).collect();
            domain
                .restore(&acme, pass, futures::stream::iter(chunks))
                .await
        }
    };
    assert!(matches!(
        restore(bundle.clone(), "the wrong passphrase!!").await,
        Err(CredentialError::BackupInvalid(_))
    ));
    let report = restore(bundle.clone(), "a long operator passphrase")
        .await
        .unwrap();
    assert_eq!(
        (report.credentials_created, report.versions_restored),
        (3, 4)
    );
    assert_eq!(
        material(&fresh.domain, &acme, "credentials/hook")
            .await
            .unwrap(),
        "whsec_v2"
    );
    assert_eq!(
        material(&fresh.domain, &acme, "credentials/key")
            .await
            .unwrap(),
        "sk-key"
    );
    let hook = fresh.domain.get(&acme, "hook").await.unwrap();
    assert_eq!(hook.spec.labels["env"], "prod");
    assert_eq!(hook.current_version, 2);
    let versions = fresh
        .domain
        .list_versions(&acme, "hook", 0, "")
        .await
        .unwrap()
        .items;
    assert_eq!(
        versions[1].state,
        VersionState::Disabled,
        "version states survive"
    );
    assert_eq!(
        fresh.domain.get(&acme, "gone").await.unwrap().state,
        State::Deleted
    );

    // Restoring again changes nothing.
    let again = restore(bundle.clone(), "a long operator passphrase")
        .await
        .unwrap();
    assert_eq!(
        (
            again.credentials_created,
            again.credentials_existing,
            again.versions_restored,
            again.versions_skipped
        ),
        (0, 3, 0, 4)
    );
    // A cut bundle is refused as truncated.
    let err = restore(
        bundle[..bundle.len() - 10].to_vec(),
        "a long operator passphrase",
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("truncated") || err.to_string().contains("corrupt"),
        "{err}"
    );
    let audit = fresh
        .domain
        .list_audit(
            &acme,
            &AuditFilter {
                action: Some("RestoreBackup".into()),
                ..AuditFilter::default()
            },
            0,
            "",
        )
        .await
        .unwrap();
    assert!(
        audit
            .items
            .iter()
            .any(|e| e.result_code == "INVALID_ARGUMENT"),
        "failed restores are audited"
    );

    // Restoring into an existing installation adds only what is missing.
    b.domain
        .rotate(
            &acme,
            "key",
            Some(SecretBytes::new(b"sk-key-2".to_vec())),
            None,
        )
        .await
        .unwrap();
    let newer = collect(b.domain.export(&acme, passphrase, true).await.unwrap()).await;
    let report = restore(newer, "a long operator passphrase").await.unwrap();
    assert_eq!(
        (report.credentials_created, report.versions_restored),
        (0, 1)
    );
    assert_eq!(
        material(&fresh.domain, &acme, "credentials/key")
            .await
            .unwrap(),
        "sk-key-2"
    );
}

async fn collect(stream: switchyard_credentials::domain::service::BundleStream) -> Vec<u8> {
    use futures::TryStreamExt;
    stream.try_concat().await.unwrap()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn tenants_are_isolated(b: Backend) {
    let acme = caller("acme");
    let globex = caller("globex");
    b.domain
        .create(&acme, input("shared-name", Kind::ApiKey, "acme-secret"))
        .await
        .unwrap();
    assert!(matches!(
        b.domain.get(&globex, "shared-name").await,
        Err(CredentialError::NotFound(_))
    ));
    assert!(matches!(
        b.domain
            .access(&globex, "credentials/shared-name", true)
            .await,
        Err(CredentialError::NotFound(_))
    ));
    assert!(matches!(
        b.domain.rotate(&globex, "shared-name", None, None).await,
        Err(CredentialError::NotFound(_))
    ));
    assert!(matches!(
        b.domain.delete(&globex, "shared-name", "").await,
        Err(CredentialError::NotFound(_))
    ));
    assert!(
        b.domain
            .list(&globex, &ListFilter::default(), 0, "")
            .await
            .unwrap()
            .items
            .is_empty()
    );
    // The same id in another tenant is another credential.
    b.domain
        .create(&globex, input("shared-name", Kind::ApiKey, "globex-secret"))
        .await
        .unwrap();
    assert_eq!(
        material(&b.domain, &acme, "credentials/shared-name")
            .await
            .unwrap(),
        "acme-secret"
    );
    assert_eq!(
        material(&b.domain, &globex, "credentials/shared-name")
            .await
            .unwrap(),
        "globex-secret"
    );
    // Each tenant has its own audit chain.
    let globex_events = b
        .domain
        .list_audit(&globex, &AuditFilter::default(), 0, "")
        .await
        .unwrap()
        .items;
    assert!(globex_events.iter().all(|e| e.sequence <= 6));
    assert!(
        b.domain
            .verify_chain(&globex)
            .await
            .unwrap()
            .problem
            .is_none()
    );
    assert!(
        b.domain
            .verify_chain(&acme)
            .await
            .unwrap()
            .problem
            .is_none()
    );
}

async fn export_needs_the_rights_of_access(b: Backend) {
    use futures::TryStreamExt;

    let acme = caller("acme");
    b.domain
        .create(&acme, input("open", Kind::ApiKey, "k"))
        .await
        .unwrap();
    let passphrase = "a long operator passphrase";
    assert!(matches!(
        b.domain.export(&acme, passphrase, false).await,
        Err(CredentialError::MissingScope(_))
    ));

    let mut restricted = input("restricted", Kind::ApiKey, "k");
    restricted.spec.allowed_subjects = vec!["service:ai".into()];
    b.domain.create(&acme, restricted).await.unwrap();
    let stream = b.domain.export(&acme, passphrase, true).await.unwrap();
    let err = stream.try_concat().await.unwrap_err();
    assert!(matches!(err, CredentialError::AccessDenied(_)), "{err:?}");

    let ai = Caller {
        subject: "service:ai".into(),
        ..acme.clone()
    };
    collect(b.domain.export(&ai, passphrase, true).await.unwrap()).await;
    assert_eq!(
        audit_outcomes(&b, &acme, "ExportBackup").await,
        owned(&[
            ("alice", "credentials", "PERMISSION_DENIED"),
            ("alice", "credentials", "OK"),
            ("alice", "credentials/open", "OK"),
            ("alice", "credentials/restricted", "PERMISSION_DENIED"),
            ("service:ai", "credentials", "OK"),
            ("service:ai", "credentials/open", "OK"),
            ("service:ai", "credentials/restricted", "OK"),
            ("service:ai", "credentials", "OK"),
        ]),
        "every exported credential is audited"
    );
}
