//! The whole process as operators and clients meet it: health and reflection without a token,
//! the scope of every method declared, the HTTP edge, request ids, and malformed input.

// Shared test helpers unwrap too: a failure should stop the test where it happens.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use prost::Message;
use switchyard_e2e::{ALL_SCOPES, Backend, TestServer, config, token};
use switchyard_proto::credentials::v1 as pb;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test]
async fn health_and_reflection_answer_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(Backend::Sqlite, dir.path())).await;
    let channel = server.channel().await;
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "switchyard.credentials.v1.CredentialService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }

    use tonic_reflection::pb::{v1, v1alpha};
    let list_v1 = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let mut responses = client
        .server_reflection_info(futures::stream::iter([list_v1]))
        .await
        .unwrap()
        .into_inner();
    let listed = format!("{:?}", responses.message().await.unwrap().unwrap());
    assert!(
        listed.contains("switchyard.credentials.v1.CredentialService"),
        "{listed}"
    );

    let list_v1alpha = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let mut responses = client
        .server_reflection_info(futures::stream::iter([list_v1alpha]))
        .await
        .unwrap()
        .into_inner();
    let listed = format!("{:?}", responses.message().await.unwrap().unwrap());
    assert!(
        listed.contains("switchyard.credentials.v1.CredentialService"),
        "{listed}"
    );
    server.stop().await;
}

#[test]
fn every_method_declares_its_scope() {
    let set =
        prost_types::FileDescriptorSet::decode(switchyard_proto::FILE_DESCRIPTOR_SET).unwrap();
    for table in [switchyard_credentials::SCOPES, switchyard_ai::SCOPES] {
        let (package, service) = table.service.rsplit_once('.').unwrap();
        let declared: BTreeSet<String> = table
            .methods
            .iter()
            .map(|(method, _)| (*method).to_owned())
            .collect();
        let described: BTreeSet<String> = set
            .file
            .iter()
            .filter(|file| file.package() == package)
            .flat_map(|file| file.service.iter())
            .filter(|s| s.name() == service)
            .flat_map(|s| s.method.iter().map(|m| m.name().to_owned()))
            .collect();
        assert!(!described.is_empty(), "{}", table.service);
        assert_eq!(
            described, declared,
            "every RPC of {} has exactly one scope entry",
            table.service
        );
        for method in table.checked_by_handler {
            assert!(declared.contains(*method));
        }
    }
}

#[tokio::test]
async fn http_edge_serves_probes_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(Backend::Sqlite, dir.path())).await;
    let mut client = server
        .credentials(Some(token("acme", "alice", ALL_SCOPES)))
        .await;
    client
        .list_credentials(pb::ListCredentialsRequest::default())
        .await
        .unwrap();
    let base = format!("http://{}", server.http);
    assert_eq!(
        reqwest::get(format!("{base}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("method=\"ListCredentials\"")
            && metrics.contains("switchyard_grpc_requests_total"),
        "{metrics}"
    );
    assert_eq!(
        reqwest::get(format!("{base}/nothing-here"))
            .await
            .unwrap()
            .status(),
        404
    );
    server.stop().await;
}

#[tokio::test]
async fn request_ids_reach_the_audit_log_and_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(Backend::Sqlite, dir.path())).await;
    let mut client = server
        .credentials(Some(token("acme", "alice", ALL_SCOPES)))
        .await;
    let mut request = tonic::Request::new(pb::CreateCredentialRequest {
        credential_id: "traced".into(),
        credential: Some(pb::Credential {
            kind: pb::CredentialKind::ApiKey as i32,
            ..Default::default()
        }),
        payload: Some(pb::SecretPayload {
            data: b"x".to_vec(),
        }),
        request_id: String::new(),
    });
    request
        .metadata_mut()
        .insert("x-request-id", "req-abc-123".parse().unwrap());
    let response = client.create_credential(request).await.unwrap();
    assert_eq!(
        response.metadata().get("x-request-id").unwrap(),
        "req-abc-123"
    );
    let events = client
        .list_audit_events(pb::ListAuditEventsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events[0].request_id, "req-abc-123");
    // Without one, the server makes one up and returns it.
    let response = client
        .list_credentials(pb::ListCredentialsRequest::default())
        .await
        .unwrap();
    assert!(!response.metadata().get("x-request-id").unwrap().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn malformed_messages_never_take_the_server_down() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(Backend::Sqlite, dir.path())).await;
    let channel = server.channel().await;
    let bearer: tonic::metadata::MetadataValue<_> =
        format!("Bearer {}", token("acme", "alice", ALL_SCOPES))
            .parse()
            .unwrap();
    // Byte strings that are not valid messages of the request types, sent as a
    // google.protobuf.BytesValue whose field 1 lands on each request's first field.
    let payloads: Vec<Vec<u8>> = vec![
        vec![0xff; 64],
        vec![0x80; 16],
        b"\x0a\xff\xff\xff\xff\x0f".to_vec(),
        (0..=255).collect(),
    ];
    let methods = [
        "CreateCredential",
        "GetCredential",
        "ListCredentials",
        "UpdateCredential",
        "DeleteCredential",
        "AccessCredential",
        "RotateCredential",
        "ListAuditEvents",
        "VerifyAuditChain",
        "ExportBackup",
    ];
    for method in methods {
        for payload in &payloads {
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            grpc.ready().await.unwrap();
            let mut request = tonic::Request::new(payload.clone());
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
            let path = format!("/switchyard.credentials.v1.CredentialService/{method}");
            let result = grpc
                .unary::<Vec<u8>, Vec<u8>, _>(
                    request,
                    path.parse().unwrap(),
                    tonic_prost::ProstCodec::default(),
                )
                .await;
            if let Err(status) = result {
                assert_ne!(status.code(), Code::Unknown, "{method}: {status:?}");
            }
        }
    }
    let mut health = HealthClient::new(channel);
    let status = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    server.stop().await;
}
