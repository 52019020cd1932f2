//! Fixtures shared by the AI integration tests: the caller, a chat request, deployments, keys,
//! and a gateway on a fresh test database.

// Each test binary compiles this module and uses only some of its helpers.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use switchyard_ai::config::{AiConfig, DeploymentConfig};
use switchyard_ai::domain::catalogue::Catalogue;
use switchyard_ai::domain::model::{Caller, ChatRequest, Message, Part, Role};
use switchyard_ai::providers::Adapters;
use switchyard_ai::providers::keys::StaticKeys;
use switchyard_ai::{Ai, COMPONENT, usage};
use switchyard_store::{Db, testing};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The tenant `acme`'s `alice`.
pub fn caller() -> Caller {
    Caller {
        tenant: "acme".into(),
        subject: "alice".into(),
    }
}

/// `text` from the user to `model`, after the `system` prompt (which counts in the tokens).
pub fn ask(model: &str, system: &str, text: &str) -> ChatRequest {
    ChatRequest {
        model: model.into(),
        messages: vec![
            Message {
                role: Role::System,
                parts: vec![Part::text(system)],
                name: None,
            },
            Message {
                role: Role::User,
                parts: vec![Part::text(text)],
                name: None,
            },
        ],
        ..ChatRequest::default()
    }
}

/// A deployment of `model` on `provider`, under its own name and without organization or
/// project, weighing 1 and without rate limits.
pub fn deployment(
    provider: &str,
    model: &str,
    base_url: Option<&str>,
    credential: Option<&str>,
    timeout: Duration,
) -> DeploymentConfig {
    DeploymentConfig {
        provider: provider.into(),
        model: model.into(),
        provider_model: None,
        base_url: base_url.map(Into::into),
        credential: credential.map(Into::into),
        organization: None,
        project: None,
        timeout,
        weight: 1,
        rpm: 0,
        tpm: 0,
    }
}

/// These `(credential, key)` pairs.
pub fn keys(pairs: &[(&str, &str)]) -> Arc<StaticKeys> {
    Arc::new(StaticKeys::new(pairs.iter().map(|(credential, key)| {
        ((*credential).to_owned(), SecretString::from(*key))
    })))
}

/// A gateway and what it runs on.
pub struct Gateway {
    pub ai: Ai,
    /// The gateway's database.
    pub db: Db,
    /// The usage writer: cancelling `shutdown` makes it flush what is left and end.
    pub writer: JoinHandle<()>,
    pub shutdown: CancellationToken,
    /// Holds the database's file.
    pub dir: tempfile::TempDir,
}

/// A gateway for `config` with these adapters, on a fresh migrated SQLite database; usage is
/// written every `config.usage_flush_interval`, with room for 100 waiting records.
pub async fn open_ai(config: &AiConfig, adapters: Adapters) -> Gateway {
    let (db, dir) = testing::sqlite_db().await.unwrap();
    db.migrate(COMPONENT, usage::MIGRATIONS).await.unwrap();
    let shutdown = CancellationToken::new();
    let (recorder, writer) = usage::start(
        db.clone(),
        config.usage_flush_interval,
        100,
        shutdown.clone(),
    );
    let ai = Ai::new(
        Catalogue::load(&config.models).unwrap(),
        config,
        adapters,
        recorder,
        db.clone(),
    );
    Gateway {
        ai,
        db,
        writer,
        shutdown,
        dir,
    }
}
