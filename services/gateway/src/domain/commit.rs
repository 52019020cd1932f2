//! Committing accepted webhooks. On SQLite, which commits one transaction at a time, the
//! receiver hands each event to one committer task, which writes whatever has queued up (each
//! event with its deliveries) in one transaction and answers every sender when it is durable:
//! one commit, and one disk flush, serves many webhooks (ingest at 16 senders: 3 500 → 8 000
//! events/s). PostgreSQL commits concurrent transactions together by itself, and a single
//! committer would only serialize them (6 600 → 4 100 events/s), so there each webhook commits
//! in its own transaction on its own connection. docs/benchmarks.md has the runs.

use std::collections::HashMap;
use std::sync::Arc;

use switchyard_store::{Db, Dialect, StoreError};
use tokio::sync::{Notify, mpsc, oneshot};

use super::{Event, delivery};
use crate::store::{self, Stored};

/// Events written in one transaction at most.
const MAX_BATCH: usize = 256;
/// Events waiting for the committer at most; beyond, receivers wait for room.
const QUEUE: usize = 4096;

pub(crate) struct Pending {
    event: Event,
    reply: oneshot::Sender<Result<Stored, StoreError>>,
}

/// The handle receivers commit through.
#[derive(Debug, Clone)]
pub(crate) enum Committer {
    /// Through the committer task.
    Grouped(mpsc::Sender<Pending>),
    /// Each in its own transaction.
    Direct(Db, Arc<Notify>),
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("event", &self.event.id)
            .finish()
    }
}

impl Committer {
    /// The committer for `db` (grouped on SQLite, direct on PostgreSQL); `wake` is notified
    /// when deliveries were made.
    pub(crate) fn start(db: Db, wake: Arc<Notify>) -> Committer {
        if db.dialect() == Dialect::Postgres {
            return Committer::Direct(db, wake);
        }
        let (queue, received) = mpsc::channel(QUEUE);
        tokio::spawn(run(db, wake, received));
        Committer::Grouped(queue)
    }

    /// Commits `event` (once per delivery id) with its deliveries; returns when it is durable.
    pub(crate) async fn commit(&self, event: Event) -> Result<Stored, StoreError> {
        match self {
            Committer::Direct(db, wake) => {
                let (mut stored, deliveries) = write(db, &[&event]).await?;
                if deliveries > 0 {
                    wake.notify_one();
                }
                stored.pop().ok_or(StoreError::NoRow)
            }
            Committer::Grouped(queue) => {
                let (reply, answer) = oneshot::channel();
                let stopped = || StoreError::Interrupted("the committer has stopped".into());
                queue
                    .send(Pending { event, reply })
                    .await
                    .map_err(|_| stopped())?;
                answer.await.map_err(|_| stopped())?
            }
        }
    }
}

async fn run(db: Db, wake: Arc<Notify>, mut received: mpsc::Receiver<Pending>) {
    while let Some(first) = received.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match received.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        let events: Vec<&Event> = batch.iter().map(|pending| &pending.event).collect();
        match write(&db, &events).await {
            Ok((stored, deliveries)) => {
                if deliveries > 0 {
                    wake.notify_one();
                }
                for (pending, stored) in batch.into_iter().zip(stored) {
                    let _ = pending.reply.send(Ok(stored));
                }
            }
            Err(err) => {
                // Nothing of the batch is stored: every sender gets an error and retries.
                let message = err.to_string();
                for pending in batch {
                    let _ = pending
                        .reply
                        .send(Err(StoreError::Interrupted(message.clone())));
                }
            }
        }
    }
}

/// Writes `events` and their deliveries in one transaction.
async fn write(db: &Db, events: &[&Event]) -> Result<(Vec<Stored>, usize), StoreError> {
    let mut tx = db.begin().await?;
    let mut stored = Vec::with_capacity(events.len());
    let mut deliveries = 0;
    // Each tenant's subscriptions are read (and their filters compiled) once per commit.
    let mut candidates: HashMap<&str, delivery::Candidates> = HashMap::new();
    for event in events {
        let outcome = store::insert_event(&mut tx, event).await?;
        if !outcome.duplicate {
            let tenant = event.tenant.as_str();
            if !candidates.contains_key(tenant) {
                let loaded = delivery::Candidates::load(&mut tx, tenant).await?;
                candidates.insert(tenant, loaded);
            }
            if let Some(candidates) = candidates.get(tenant) {
                deliveries += candidates.fan_out(&mut tx, event).await?;
            }
        }
        stored.push(outcome);
    }
    tx.commit().await?;
    Ok((stored, deliveries))
}
