//! The AI service through real clients against a whole Switchyard process: gRPC Complete and
//! StreamComplete, the OpenAI-compatible HTTP endpoints, scopes, and usage records that survive a
//! restart.

// Shared test helpers unwrap too: a failure should stop the test where it happens.
#![allow(clippy::unwrap_used)]

use switchyard_e2e::{Backend, TestServer, config, token};
use switchyard_proto::ai::v1 as pb;
use switchyard_proto::ai::v1::ai_service_client::AiServiceClient;
use tonic::Code;

fn ask(text: &str) -> pb::ChatRequest {
    pb::ChatRequest {
        model: "echo".into(),
        messages: vec![pb::Message {
            role: pb::Role::User as i32,
            parts: vec![pb::Part {
                kind: Some(pb::part::Kind::Text(text.into())),
                cache_breakpoint: false,
            }],
            name: String::new(),
        }],
        ..Default::default()
    }
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

#[tokio::test]
async fn echo_over_grpc_and_the_openai_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(Backend::Sqlite, dir.path());
    let server = TestServer::start(config.clone()).await;
    let caller = token("acme", "alice", &["ai.*"]);
    let mut client = AiServiceClient::new(server.channel().await);

    let response = client
        .complete(with_token(
            pb::CompleteRequest {
                chat: Some(ask("hello over grpc")),
            },
            &caller,
        ))
        .await
        .unwrap()
        .into_inner()
        .response
        .unwrap();
    let text = match &response.message.as_ref().unwrap().parts[0].kind {
        Some(pb::part::Kind::Text(text)) => text.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(text, "hello over grpc");
    assert_eq!(response.finish_reason, pb::FinishReason::Stop as i32);
    assert_eq!(response.cost.unwrap().currency_code, "USD");

    let mut stream = client
        .stream_complete(with_token(
            pb::StreamCompleteRequest {
                chat: Some(ask("a streamed answer")),
            },
            &caller,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut streamed = String::new();
    let mut done = None;
    while let Some(message) = stream.message().await.unwrap() {
        match message.event.unwrap() {
            pb::stream_complete_response::Event::Delta(delta) => streamed.push_str(&delta.text),
            pb::stream_complete_response::Event::Done(response) => done = Some(response),
        }
    }
    assert_eq!(streamed, "a streamed answer");
    assert!(done.unwrap().usage.unwrap().output_tokens > 0);

    // A token without ai.complete is refused.
    let reader = token("acme", "carol", &["ai.read"]);
    let err = client
        .complete(with_token(
            pb::CompleteRequest {
                chat: Some(ask("x")),
            },
            &reader,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let models = client
        .list_models(with_token(pb::ListModelsRequest::default(), &reader))
        .await
        .unwrap()
        .into_inner();
    assert!(models.models.iter().any(|m| m.id == "echo"));
    assert!(models.catalogue_date.is_some());

    // The OpenAI-compatible endpoint, as the SDKs call it.
    let http = reqwest::Client::new();
    let url = format!("http://{}/v1/chat/completions", server.http);
    let body = serde_json::json!({"model": "echo", "messages": [{"role": "user", "content": "hi over http"}]});
    let completion: serde_json::Value = http
        .post(&url)
        .bearer_auth(&caller)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(
        completion["choices"][0]["message"]["content"],
        "hi over http"
    );
    assert_eq!(completion["choices"][0]["finish_reason"], "stop");
    assert!(completion["usage"]["total_tokens"].as_u64().unwrap() > 0);

    let body = serde_json::json!({"model": "echo", "stream": true, "stream_options": {"include_usage": true},
                                  "messages": [{"role": "user", "content": "stream over http"}]});
    let sse = http
        .post(&url)
        .bearer_auth(&caller)
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events: Vec<&str> = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(*events.last().unwrap(), "[DONE]");
    let chunks: Vec<serde_json::Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "stream over http");
    assert!(
        chunks.iter().all(|c| c["id"] == chunks[0]["id"]),
        "one id for the whole stream"
    );
    assert!(
        chunks.last().unwrap()["usage"]["completion_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );

    let unknown = serde_json::json!({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]});
    let refused = http
        .post(&url)
        .bearer_auth(&caller)
        .json(&unknown)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let error: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert_eq!(error["error"]["param"], "model");
    assert_eq!(
        http.post(&url).json(&body).send().await.unwrap().status(),
        401
    );

    let listed: serde_json::Value = http
        .get(format!("http://{}/v1/models", server.http))
        .bearer_auth(&caller)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "echo")
    );

    // Embeddings over gRPC, and over HTTP as strings, as token ids, and in base64.
    let embedded = client
        .embed(with_token(
            pb::EmbedRequest {
                model: "echo-embedding".into(),
                inputs: vec!["the cat sat".into(), "the cat sat".into()],
                dimensions: 32,
                ..Default::default()
            },
            &caller,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(embedded.embeddings.len(), 2);
    assert_eq!(embedded.embeddings[1].index, 1);
    assert_eq!(embedded.embeddings[0].values.len(), 32);
    assert_eq!(embedded.embeddings[0].values, embedded.embeddings[1].values);
    let embeddings_url = format!("http://{}/v1/embeddings", server.http);
    let embed_http = |body: serde_json::Value| {
        let (http, url, caller) = (http.clone(), embeddings_url.clone(), caller.clone());
        async move {
            let response = http
                .post(url)
                .bearer_auth(caller)
                .json(&body)
                .send()
                .await
                .unwrap();
            (
                response.status().as_u16(),
                response.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let (status, floats) = embed_http(
        serde_json::json!({"model": "echo-embedding", "input": "the cat sat", "dimensions": 32}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(floats["object"], "list");
    let grpc_values: Vec<f64> = embedded.embeddings[0]
        .values
        .iter()
        .map(|&v| f64::from(v))
        .collect();
    let http_values: Vec<f64> =
        serde_json::from_value(floats["data"][0]["embedding"].clone()).unwrap();
    assert_eq!(http_values, grpc_values);
    // "the cat sat" in cl100k_base, as LangChain sends it.
    let (_, from_ids) = embed_http(serde_json::json!({"model": "echo-embedding", "input": [[1820, 8415, 7731]], "dimensions": 32})).await;
    assert_eq!(
        from_ids["data"][0]["embedding"],
        floats["data"][0]["embedding"]
    );
    let (_, encoded) = embed_http(serde_json::json!({"model": "echo-embedding", "input": ["the cat sat"], "dimensions": 32, "encoding_format": "base64"})).await;
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f64> = bytes
        .chunks_exact(4)
        .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        .collect();
    assert_eq!(decoded, grpc_values);
    let (status, error) = embed_http(serde_json::json!({"model": "echo", "input": "x"})).await;
    assert_eq!(status, 400, "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("embeddings"),
        "{error}"
    );
    let (status, error) =
        embed_http(serde_json::json!({"model": "echo-embedding", "input": {"text": "x"}})).await;
    assert_eq!(
        (status, error["error"]["param"].as_str()),
        (400, Some("input"))
    );

    // Stopping flushes the usage records; they are there after a restart.
    server.stop().await;
    let server = TestServer::start(config).await;
    let mut client = AiServiceClient::new(server.channel().await);
    let usage = client
        .list_usage(with_token(pb::ListUsageRequest::default(), &caller))
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(
        usage.len(),
        8,
        "two gRPC and two HTTP completions, one gRPC and three HTTP embeddings"
    );
    assert!(
        usage
            .iter()
            .all(|r| r.result_code == "OK" && r.principal == "alice")
    );
    server.stop().await;
}

#[tokio::test]
async fn openai_deployments_read_their_key_from_the_credentials_service() {
    use switchyard_proto::credentials::v1 as cred;
    use switchyard_proto::credentials::v1::credential_service_client::CredentialServiceClient;
    use switchyard_testkit::fake_openai::FakeOpenAi;

    let fake = FakeOpenAi::start().await.with_api_key("sk-from-vault");
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(Backend::Sqlite, dir.path());
    config.ai.deployments.insert(
        "openai-main".into(),
        switchyard_ai::config::DeploymentConfig {
            provider: "openai".into(),
            model: "gpt-4o-mini".into(),
            provider_model: None,
            base_url: Some(fake.base_url()),
            credential: Some("credentials/openai-key".into()),
            organization: None,
            project: None,
            timeout: std::time::Duration::from_secs(5),
            weight: 1,
            rpm: 0,
            tpm: 0,
        },
    );
    for (name, model) in [
        ("openai-dalle", "dall-e-3"),
        ("openai-whisper", "whisper-1"),
    ] {
        config.ai.deployments.insert(
            name.into(),
            switchyard_ai::config::DeploymentConfig {
                provider: "openai".into(),
                model: model.into(),
                provider_model: None,
                base_url: Some(fake.base_url()),
                credential: Some("credentials/openai-key".into()),
                organization: None,
                project: None,
                timeout: std::time::Duration::from_secs(5),
                weight: 1,
                rpm: 0,
                tpm: 0,
            },
        );
    }
    let server = TestServer::start(config).await;

    // The operator stores the provider key in the system tenant.
    let operator = token("system", "operator", &["credentials.*"]);
    let mut credentials = CredentialServiceClient::new(server.channel().await);
    credentials
        .create_credential(with_token(
            cred::CreateCredentialRequest {
                credential_id: "openai-key".into(),
                credential: Some(cred::Credential {
                    kind: cred::CredentialKind::ApiKey as i32,
                    provider: "openai".into(),
                    ..Default::default()
                }),
                payload: Some(cred::SecretPayload {
                    data: b"sk-from-vault".to_vec(),
                }),
                request_id: String::new(),
            },
            &operator,
        ))
        .await
        .unwrap();

    let caller = token("acme", "alice", &["ai.complete"]);
    let mut client = AiServiceClient::new(server.channel().await);
    let mut chat = ask("via the real key");
    chat.model = "gpt-4o-mini".into();
    let response = client
        .complete(with_token(
            pb::CompleteRequest { chat: Some(chat) },
            &caller,
        ))
        .await
        .unwrap()
        .into_inner()
        .response
        .unwrap();
    assert_eq!(
        (response.provider.as_str(), response.deployment.as_str()),
        ("openai", "openai-main")
    );
    assert_eq!(
        fake.requests()[0].headers["authorization"],
        "Bearer sk-from-vault"
    );

    // The key was read as service:ai, and that read is in the system tenant's audit log.
    let audit = credentials
        .list_audit_events(with_token(
            cred::ListAuditEventsRequest {
                action: "AccessCredential".into(),
                ..Default::default()
            },
            &operator,
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(audit.len(), 1);
    assert_eq!(
        (audit[0].principal.as_str(), audit[0].result_code.as_str()),
        ("service:ai", "OK")
    );

    // Images and transcripts over gRPC: the audio goes up in pieces.
    let png_signature = switchyard_testkit::fake_openai::PNG_SIGNATURE;
    let images = client
        .generate_image(with_token(
            pb::GenerateImageRequest {
                model: "dall-e-3".into(),
                prompt: "a lighthouse".into(),
                ..Default::default()
            },
            &caller,
        ))
        .await
        .unwrap()
        .into_inner();
    let Some(pb::generated_image::Image::Data(png)) = &images.images[0].image else {
        panic!("{images:?}")
    };
    assert_eq!(png[..8], png_signature);
    assert_eq!(images.cost.unwrap().amount_micros, 40_000, "four cents");
    let spoken = "Good morning everyone. Let us start.";
    let pieces = [
        pb::transcribe_request::Part::Config(pb::TranscribeConfig {
            model: "whisper-1".into(),
            filename: "standup.wav".into(),
            segment_timestamps: true,
            ..Default::default()
        }),
        pb::transcribe_request::Part::Audio(spoken.as_bytes()[..10].to_vec()),
        pb::transcribe_request::Part::Audio(spoken.as_bytes()[10..].to_vec()),
    ]
    .map(|part| pb::TranscribeRequest { part: Some(part) });
    let transcript = client
        .transcribe(with_token(futures::stream::iter(pieces), &caller))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(transcript.text, spoken);
    assert_eq!(transcript.segments.len(), 2);
    let config_later = [pb::transcribe_request::Part::Audio(b"x".to_vec())]
        .map(|part| pb::TranscribeRequest { part: Some(part) });
    let err = client
        .transcribe(with_token(futures::stream::iter(config_later), &caller))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // The same over the OpenAI-compatible endpoints.
    let http = reqwest::Client::new();
    let base = format!("http://{}/v1", server.http);
    let generated: serde_json::Value = http
        .post(format!("{base}/images/generations"))
        .bearer_auth(&caller)
        .json(&serde_json::json!({"model": "dall-e-3", "prompt": "a lighthouse"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = generated["data"][0]["url"].as_str().unwrap();
    let fetched = reqwest::get(url).await.unwrap().bytes().await.unwrap();
    assert_eq!(fetched[..8], png_signature);
    let upload = |format: &str| {
        reqwest::multipart::Form::new()
            .part(
                "file",
                reqwest::multipart::Part::bytes(spoken.as_bytes().to_vec())
                    .file_name("standup.wav"),
            )
            .text("model", "whisper-1")
            .text("response_format", format.to_owned())
    };
    let srt = http
        .post(format!("{base}/audio/transcriptions"))
        .bearer_auth(&caller)
        .multipart(upload("srt"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        srt,
        "1\n00:00:00,000 --> 00:00:01,500\nGood morning everyone.\n\n2\n00:00:01,500 --> 00:00:03,000\nLet us start.\n\n"
    );
    let verbose: serde_json::Value = http
        .post(format!("{base}/audio/transcriptions"))
        .bearer_auth(&caller)
        .multipart(upload("verbose_json").text("timestamp_granularities[]", "word"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(verbose["words"].as_array().unwrap().len(), 6);
    assert_eq!(verbose["duration"], 3.0);
    let refused = http
        .post(format!("{base}/audio/transcriptions"))
        .bearer_auth(&caller)
        .multipart(reqwest::multipart::Form::new().text("model", "whisper-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let error: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["param"], "file");

    // A constitution through the OpenAI SDKs' extra_body, served by the echo model.
    let completion: serde_json::Value = http
        .post(format!("{base}/chat/completions"))
        .bearer_auth(&caller)
        .json(
            &serde_json::json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}],
                                  "constitution": {"name": "helpful-honest-harmless"}}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        completion["constitution_trace"].as_array().unwrap().len(),
        3
    );
    server.stop().await;
}
