//! The credentials service through a real gRPC client, against a whole Switchyard process, on
//! both record stores: authentication, tenancy, scopes, the audit log and its tamper detection,
//! invalid input, backup and restore over streams, and restarts.

// Shared test helpers unwrap too: a failure should stop the test where it happens.
#![allow(clippy::unwrap_used)]

use switchyard::ServiceName;
use switchyard_e2e::{ALL_SCOPES, Backend, CredentialClient, TestServer, config, token};
use switchyard_proto::credentials::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $name() { super::$name(super::Backend::Sqlite).await; })*
        }
        mod postgres {
            $(#[tokio::test] async fn $name() { super::$name(super::Backend::Postgres).await; })*
        }
    };
}

on_both_backends!(
    authentication_tenancy_scopes_and_audit,
    invalid_input_is_answered_with_field_violations,
    backup_streams_restore_into_a_fresh_installation,
    restart_loses_nothing_and_tampering_is_named,
    oversized_messages_are_refused,
    no_plaintext_secret_is_stored,
);

fn create_request(
    id: &str,
    kind: pb::CredentialKind,
    secret: &[u8],
) -> pb::CreateCredentialRequest {
    pb::CreateCredentialRequest {
        credential_id: id.into(),
        credential: Some(pb::Credential {
            kind: kind as i32,
            provider: "openai".into(),
            ..Default::default()
        }),
        payload: Some(pb::SecretPayload {
            data: secret.to_vec(),
        }),
        request_id: String::new(),
    }
}

async fn access(client: &mut CredentialClient, name: &str) -> Result<Vec<u8>, tonic::Status> {
    let response = client
        .access_credential(pb::AccessCredentialRequest { name: name.into() })
        .await?;
    Ok(response.into_inner().payload.unwrap().data)
}

fn reason(status: &tonic::Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default()
}

fn violated_fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_error_details()
        .bad_request()
        .map(|bad| {
            bad.field_violations
                .iter()
                .map(|v| v.field.clone())
                .collect()
        })
        .unwrap_or_default()
}

async fn authentication_tenancy_scopes_and_audit(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(backend, dir.path())).await;

    let mut anonymous = server.credentials(None).await;
    let err = anonymous
        .get_credential(pb::GetCredentialRequest {
            name: "credentials/x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::Unauthenticated, "UNAUTHENTICATED")
    );
    let mut forged = server.credentials(Some("not-a-jwt".into())).await;
    let err = forged
        .list_credentials(pb::ListCredentialsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let mut alice = server
        .credentials(Some(token("acme", "alice", ALL_SCOPES)))
        .await;
    let created = alice
        .create_credential(create_request(
            "openai-prod",
            pb::CredentialKind::ApiKey,
            b"sk-one",
        ))
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap();
    assert_eq!(created.name, "credentials/openai-prod");
    let read = alice
        .get_credential(pb::GetCredentialRequest {
            name: "credentials/openai-prod".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap();
    assert_eq!(read, created);
    let rotated = alice
        .rotate_credential(pb::RotateCredentialRequest {
            name: "credentials/openai-prod".into(),
            payload: Some(pb::SecretPayload {
                data: b"sk-two".to_vec(),
            }),
            request_id: "rotate-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rotated.credential.unwrap().current_version, 2);
    assert_eq!(
        access(&mut alice, "credentials/openai-prod").await.unwrap(),
        b"sk-two"
    );
    assert_eq!(
        access(&mut alice, "credentials/openai-prod/versions/1")
            .await
            .unwrap(),
        b"sk-one"
    );

    // Another tenant sees nothing of it, not even that it exists.
    let mut bob = server
        .credentials(Some(token("globex", "bob", ALL_SCOPES)))
        .await;
    for result in [
        bob.get_credential(pb::GetCredentialRequest {
            name: "credentials/openai-prod".into(),
        })
        .await
        .map(drop),
        access(&mut bob, "credentials/openai-prod").await.map(drop),
        bob.delete_credential(pb::DeleteCredentialRequest {
            name: "credentials/openai-prod".into(),
            etag: String::new(),
        })
        .await
        .map(drop),
    ] {
        assert_eq!(result.unwrap_err().code(), Code::NotFound);
    }
    let listed = bob
        .list_credentials(pb::ListCredentialsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.credentials.is_empty());

    // A valid token without the access scope is refused, and the refusal is audited.
    let mut carol = server
        .credentials(Some(token("acme", "carol", &["credentials.read"])))
        .await;
    let err = access(&mut carol, "credentials/openai-prod")
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::PermissionDenied, "MISSING_SCOPE")
    );
    let err = carol
        .create_credential(create_request("other", pb::CredentialKind::ApiKey, b"x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = carol
        .list_audit_events(pb::ListAuditEventsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::PermissionDenied,
        "the audit log needs credentials.audit"
    );

    let events = alice
        .list_audit_events(pb::ListAuditEventsRequest {
            action: "AccessCredential".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let seen: Vec<(String, String, String)> = events
        .into_iter()
        .map(|e| (e.principal, e.resource, e.result_code))
        .collect();
    assert_eq!(
        seen,
        [
            (
                "alice".into(),
                "credentials/openai-prod/versions/2".into(),
                "OK".into()
            ),
            (
                "alice".into(),
                "credentials/openai-prod/versions/1".into(),
                "OK".into()
            ),
            (
                "carol".into(),
                "credentials/openai-prod".into(),
                "PERMISSION_DENIED".into()
            ),
        ]
    );
    // Bob's failed access is in his own tenant's log, not in acme's.
    let bobs = bob
        .list_audit_events(pb::ListAuditEventsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(bobs.len(), 1);
    assert_eq!(bobs[0].result_code, "NOT_FOUND");
    let verified = alice
        .verify_audit_chain(pb::VerifyAuditChainRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(verified.intact, "{verified:?}");
    server.stop().await;
}

async fn invalid_input_is_answered_with_field_violations(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(backend, dir.path())).await;
    let mut client = server
        .credentials(Some(token("acme", "alice", ALL_SCOPES)))
        .await;

    for name in [
        "",
        "credentials/",
        "credentials/Has Space",
        "credentials/x/versions/0",
        "keys/x",
        "credentials/x/versions/abc",
    ] {
        let err = access(&mut client, name).await.unwrap_err();
        assert_eq!(violated_fields(&err), ["name"], "{name:?}");
    }
    let err = client
        .create_credential(create_request("Bad_Name", pb::CredentialKind::ApiKey, b"x"))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["credential_id"]);
    let err = client
        .create_credential(create_request(
            "big",
            pb::CredentialKind::ApiKey,
            &vec![b'x'; 64 * 1024 + 1],
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["payload.data"]);
    let mut unknown_kind = create_request("kind", pb::CredentialKind::ApiKey, b"x");
    unknown_kind.credential.as_mut().unwrap().kind = 99;
    assert_eq!(
        violated_fields(&client.create_credential(unknown_kind).await.unwrap_err()),
        ["credential.kind"]
    );
    let mut bad_time = create_request("time", pb::CredentialKind::ApiKey, b"x");
    bad_time.credential.as_mut().unwrap().expire_time = Some(prost_types::Timestamp {
        seconds: i64::MAX,
        nanos: 0,
    });
    assert_eq!(
        violated_fields(&client.create_credential(bad_time).await.unwrap_err()),
        ["credential.expire_time"]
    );

    let err = client
        .list_credentials(pb::ListCredentialsRequest {
            page_token: "bm90IGEgdG9rZW4".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["page_token"]);
    let err = client
        .list_credentials(pb::ListCredentialsRequest {
            page_size: -5,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["page_size"]);

    client
        .create_credential(create_request("target", pb::CredentialKind::ApiKey, b"x"))
        .await
        .unwrap();
    let update = |paths: &[&str]| pb::UpdateCredentialRequest {
        credential: Some(pb::Credential {
            name: "credentials/target".into(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }),
    };
    let err = client
        .update_credential(update(&["kind"]))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["update_mask.paths[0]"]);
    let err = client.update_credential(update(&[])).await.unwrap_err();
    assert_eq!(violated_fields(&err), ["update_mask"]);
    let err = client
        .update_credential(pb::UpdateCredentialRequest {
            credential: Some(pb::Credential {
                name: "credentials/target".into(),
                etag: "\"999\"".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["display_name".into()],
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::Aborted, "ETAG_MISMATCH")
    );
    let err = client
        .list_expiring_credentials(pb::ListExpiringCredentialsRequest {
            within: Some(prost_types::Duration {
                seconds: -1,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["within"]);
    let err = client
        .export_backup(pb::ExportBackupRequest {
            passphrase: "short".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["passphrase"]);
    server.stop().await;
}

async fn backup_streams_restore_into_a_fresh_installation(backend: Backend) {
    use futures::StreamExt;

    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(backend, dir.path())).await;
    let mut source = server
        .credentials(Some(token("acme", "alice", ALL_SCOPES)))
        .await;
    let mut expected = Vec::new();
    for i in 0..12 {
        let id = format!("cred-{i:02}");
        let secret = format!("secret-{i}-{}", "x".repeat(i * 500)).into_bytes();
        source
            .create_credential(create_request(&id, pb::CredentialKind::Generic, &secret))
            .await
            .unwrap();
        expected.push((format!("credentials/{id}/versions/1"), secret));
        // Every third credential has a generated second version.
        if i % 3 == 0 {
            source
                .rotate_credential(pb::RotateCredentialRequest {
                    name: format!("credentials/{id}"),
                    ..Default::default()
                })
                .await
                .unwrap();
            let name = format!("credentials/{id}/versions/2");
            let material = access(&mut source, &name).await.unwrap();
            expected.push((name, material));
        }
    }
    let passphrase = "correct horse battery staple";
    let mut stream = source
        .export_backup(pb::ExportBackupRequest {
            passphrase: passphrase.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut bundle = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        bundle.extend(message.chunk);
    }
    for (_, secret) in &expected {
        let needle = &secret[..secret.len().min(20)];
        assert!(
            !bundle.windows(needle.len()).any(|w| w == needle),
            "plaintext in the bundle"
        );
    }
    server.stop().await;

    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = TestServer::start(config(backend, fresh_dir.path())).await;
    let mut target = fresh
        .credentials(Some(token("acme", "alice", ALL_SCOPES)))
        .await;
    let upload = |bundle: &[u8], passphrase: &str| {
        let mut messages = vec![pb::RestoreBackupRequest {
            passphrase: passphrase.into(),
            chunk: Vec::new(),
        }];
        messages.extend(bundle.chunks(777).map(|chunk| pb::RestoreBackupRequest {
            passphrase: String::new(),
            chunk: chunk.to_vec(),
        }));
        futures::stream::iter(messages).boxed()
    };
    let err = target
        .restore_backup(upload(&bundle, "a wrong passphrase here"))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::InvalidArgument, "BACKUP_INVALID")
    );
    let report = target
        .restore_backup(upload(&bundle, passphrase))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (report.credentials_created, report.versions_restored),
        (12, 16)
    );
    for (name, secret) in &expected {
        assert_eq!(&access(&mut target, name).await.unwrap(), secret, "{name}");
    }
    let again = target
        .restore_backup(upload(&bundle, passphrase))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            again.credentials_created,
            again.credentials_existing,
            again.versions_skipped
        ),
        (0, 12, 16)
    );
    fresh.stop().await;
}

async fn restart_loses_nothing_and_tampering_is_named(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let config = config(backend, dir.path());
    let server = TestServer::start(config.clone()).await;
    let mut client = server
        .credentials(Some(token("acme", "alice", ALL_SCOPES)))
        .await;
    client
        .create_credential(create_request(
            "keep",
            pb::CredentialKind::ApiKey,
            b"sk-keep",
        ))
        .await
        .unwrap();
    for _ in 0..3 {
        access(&mut client, "credentials/keep").await.unwrap();
    }
    server.stop().await;

    let server = TestServer::start(config.clone()).await;
    let mut client = server
        .credentials(Some(token("acme", "alice", ALL_SCOPES)))
        .await;
    assert_eq!(
        access(&mut client, "credentials/keep").await.unwrap(),
        b"sk-keep"
    );
    let chain = client
        .verify_audit_chain(pb::VerifyAuditChainRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(chain.intact);
    assert_eq!(chain.events_checked, 5);

    let db = switchyard::open_db(&config, "credentials").await.unwrap();
    db.execute(
        "UPDATE audit_events SET result_code = 'PERMISSION_DENIED' WHERE tenant = 'acme' AND sequence = 2",
        &[],
    )
    .await
    .unwrap();
    let chain = client
        .verify_audit_chain(pb::VerifyAuditChainRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!chain.intact);
    assert_eq!(chain.first_invalid_sequence, 2);
    assert_eq!(chain.problem, pb::ChainProblem::Modified as i32);
    assert!(
        chain.description.contains("audit event 2"),
        "{}",
        chain.description
    );
    server.stop().await;
}

async fn oversized_messages_are_refused(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(backend, dir.path());
    config.server.max_message_bytes = 4096;
    // The gateway needs messages larger than its largest webhook body.
    let server = TestServer::start_services(config, &[ServiceName::Credentials]).await;
    let mut client = server
        .credentials(Some(token("acme", "alice", ALL_SCOPES)))
        .await;
    let err = client
        .create_credential(create_request(
            "big",
            pb::CredentialKind::ApiKey,
            &[b'x'; 8192],
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{err:?}"
    );
    // The server is still there.
    client
        .create_credential(create_request("small", pb::CredentialKind::ApiKey, b"x"))
        .await
        .unwrap();
    server.stop().await;
}

async fn no_plaintext_secret_is_stored(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let config = config(backend, dir.path());
    let server = TestServer::start(config.clone()).await;
    let mut client = server
        .credentials(Some(token("acme", "alice", ALL_SCOPES)))
        .await;
    let secret = format!("plaintext-canary-{}", uuid::Uuid::new_v4().simple());
    client
        .create_credential(create_request(
            "canary",
            pb::CredentialKind::ApiKey,
            secret.as_bytes(),
        ))
        .await
        .unwrap();
    client
        .rotate_credential(pb::RotateCredentialRequest {
            name: "credentials/canary".into(),
            payload: Some(pb::SecretPayload {
                data: secret.as_bytes().to_vec(),
            }),
            request_id: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(
        access(&mut client, "credentials/canary").await.unwrap(),
        secret.as_bytes()
    );
    server.stop().await;

    let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
    let needles = [secret.clone(), hex];
    match backend {
        Backend::Sqlite => {
            // Every file the installation wrote: databases, WAL, keys.
            for entry in std::fs::read_dir(dir.path()).unwrap() {
                let path = entry.unwrap().path();
                let bytes = std::fs::read(&path).unwrap();
                for needle in &needles {
                    assert!(
                        !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                        "{needle} in {}",
                        path.display()
                    );
                }
            }
        }
        Backend::Postgres => {
            // Every row of every table of both schemas, as PostgreSQL prints it.
            for component in ["credentials", "secrets"] {
                let db = switchyard::open_db(&config, component).await.unwrap();
                let schema = format!("{}{component}", config.database.schema_prefix);
                let tables = db
                    .query(
                        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1",
                        &[schema.as_str().into()],
                    )
                    .await
                    .unwrap();
                assert!(tables.len() >= 2, "{schema} has its tables");
                for table in tables {
                    let table: String = table.get(0).unwrap();
                    let rows = db
                        .query(
                            &format!("SELECT CAST(t AS TEXT) FROM {schema}.{table} t"),
                            &[],
                        )
                        .await
                        .unwrap();
                    for row in rows {
                        let text: String = row.get(0).unwrap();
                        for needle in &needles {
                            assert!(
                                !text.contains(needle.as_str()),
                                "{needle} in {schema}.{table}"
                            );
                        }
                    }
                }
            }
        }
    }
}
