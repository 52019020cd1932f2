//! Background work: scheduled rotation, purging of soft-deleted credentials past their recovery
//! window, destruction of queued secret material, and the report of credentials that need
//! attention. Every replica runs the loop; the
//! domain's locks make each piece of work happen once.

use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::{Credentials, CredentialsConfig};

/// Runs the background work until `shutdown` is cancelled.
pub async fn run(domain: Credentials, config: CredentialsConfig, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(config.rotation_check_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_report: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        match domain.rotate_due().await {
            Ok(0) => {}
            Ok(rotated) => tracing::info!(rotated, "scheduled rotations done"),
            Err(err) => tracing::error!(error = %err, "scheduled rotation pass failed"),
        }
        match domain.purge_due().await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "purged deleted credentials"),
            Err(err) => tracing::error!(error = %err, "purge pass failed"),
        }
        match domain.sweep_garbage().await {
            Ok(0) => {}
            Ok(queued) => tracing::warn!(queued, "secret material is still queued for destruction"),
            Err(err) => tracing::error!(error = %err, "destroying queued secret material failed"),
        }
        let log = last_report.is_none_or(|at| at.elapsed() >= config.attention_report_interval);
        match domain.report_attention(log).await {
            Ok(()) if log => last_report = Some(Instant::now()),
            Ok(()) => {}
            Err(err) => tracing::error!(error = %err, "attention report failed"),
        }
    }
}
