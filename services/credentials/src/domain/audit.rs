//! The append-only audit log: each tenant's entries form a SHA-256 hash chain.
//!
//! An entry's hash covers its content (tenant, time, principal, action, resource, result,
//! detail, request id) and the previous entry's hash, but not its sequence number, so that the
//! verifier can tell an edited entry (its hash no longer matches) from an intact entry moved out
//! of place (its previous hash is not its predecessor's hash) and from a gap (a missing number).
//! Anyone able to rewrite every later entry could forge a consistent chain; record the head
//! hash that `VerifyAuditChain` returns elsewhere to detect that, or a truncated tail.

use sha2::{Digest, Sha256};
use switchyard_store::Tx;

use super::error::Result;
use super::model::{AuditEvent, Caller, ChainBreak, ChainProblem, Micros};
use crate::store;

/// The previous hash of a chain's first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Longest detail text kept.
const MAX_DETAIL: usize = 1024;

/// The hash of an entry with the given previous hash.
pub fn entry_hash(tenant: &str, event: &AuditEvent) -> String {
    // A JSON array of strings and numbers serializes the same way every time.
    let canonical = serde_json::json!([
        tenant,
        event.time,
        event.principal,
        event.action,
        event.resource,
        event.result_code,
        event.detail,
        event.request_id,
        event.previous_hash,
    ]);
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

/// What to record.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// The RPC or job.
    pub action: &'a str,
    /// The resource name.
    pub resource: &'a str,
    /// A gRPC code name.
    pub result_code: &'a str,
    /// Facts; never secret material.
    pub detail: &'a str,
}

/// Appends an entry to the caller's tenant's chain inside `tx`, which must then commit.
pub async fn append(
    tx: &mut Tx,
    caller: &Caller,
    entry: Entry<'_>,
    now: Micros,
) -> Result<AuditEvent> {
    let head = store::lock_audit_head(tx, &caller.tenant).await?;
    let (sequence, previous_hash) = match head {
        Some((sequence, hash)) => (sequence + 1, hash),
        None => (1, GENESIS_HASH.to_owned()),
    };
    let mut detail = entry.detail.to_owned();
    if detail.len() > MAX_DETAIL {
        let mut cut = MAX_DETAIL;
        while !detail.is_char_boundary(cut) {
            cut -= 1;
        }
        detail.truncate(cut);
    }
    let mut event = AuditEvent {
        sequence,
        time: now,
        principal: caller.subject.clone(),
        action: entry.action.to_owned(),
        resource: entry.resource.chars().take(300).collect(),
        result_code: entry.result_code.to_owned(),
        detail,
        request_id: caller.request_id.clone(),
        previous_hash,
        hash: String::new(),
    };
    event.hash = entry_hash(&caller.tenant, &event);
    store::insert_audit(tx, &caller.tenant, &event).await?;
    Ok(event)
}

/// Walks a chain in sequence order and stops at the first break.
#[derive(Debug)]
pub struct ChainVerifier {
    tenant: String,
    expected_sequence: i64,
    previous_hash: String,
    checked: i64,
}

impl ChainVerifier {
    /// A verifier for `tenant`'s chain.
    pub fn new(tenant: &str) -> Self {
        ChainVerifier {
            tenant: tenant.to_owned(),
            expected_sequence: 1,
            previous_hash: GENESIS_HASH.to_owned(),
            checked: 0,
        }
    }

    /// Checks the next entry.
    pub fn check(&mut self, event: &AuditEvent) -> Result<(), ChainBreak> {
        self.checked += 1;
        if event.sequence != self.expected_sequence {
            return Err(ChainBreak {
                sequence: self.expected_sequence,
                kind: ChainProblem::Missing,
            });
        }
        if entry_hash(&self.tenant, event) != event.hash {
            return Err(ChainBreak {
                sequence: event.sequence,
                kind: ChainProblem::Modified,
            });
        }
        if event.previous_hash != self.previous_hash {
            return Err(ChainBreak {
                sequence: event.sequence,
                kind: ChainProblem::Reordered,
            });
        }
        self.expected_sequence += 1;
        self.previous_hash = event.hash.clone();
        Ok(())
    }

    /// Entries read so far.
    pub fn checked(&self) -> i64 {
        self.checked
    }

    /// The hash of the last intact entry.
    pub fn head_hash(&self) -> &str {
        &self.previous_hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<AuditEvent> {
        let mut previous = GENESIS_HASH.to_owned();
        (1..=n)
            .map(|sequence| {
                let mut event = AuditEvent {
                    sequence,
                    time: sequence * 1000,
                    principal: "alice".into(),
                    action: "AccessCredential".into(),
                    resource: format!("credentials/c{sequence}"),
                    result_code: "OK".into(),
                    detail: String::new(),
                    request_id: String::new(),
                    previous_hash: previous.clone(),
                    hash: String::new(),
                };
                event.hash = entry_hash("acme", &event);
                previous = event.hash.clone();
                event
            })
            .collect()
    }

    fn verify(events: &[AuditEvent]) -> Option<ChainBreak> {
        let mut verifier = ChainVerifier::new("acme");
        events.iter().find_map(|e| verifier.check(e).err())
    }

    #[test]
    fn intact_chain_verifies() {
        assert_eq!(verify(&chain(5)), None);
    }

    #[test]
    fn modification_is_found_where_it_is() {
        let mut events = chain(5);
        events[2].principal = "mallory".into();
        assert_eq!(
            verify(&events),
            Some(ChainBreak {
                sequence: 3,
                kind: ChainProblem::Modified
            })
        );
    }

    #[test]
    fn deletion_is_found() {
        let mut events = chain(5);
        events.remove(1);
        assert_eq!(
            verify(&events),
            Some(ChainBreak {
                sequence: 2,
                kind: ChainProblem::Missing
            })
        );
    }

    #[test]
    fn reordering_is_found() {
        let mut events = chain(5);
        // Swap the contents of entries 2 and 3 but keep the sequence numbers in place.
        let (two, three) = (events[1].clone(), events[2].clone());
        events[1] = AuditEvent {
            sequence: 2,
            ..three
        };
        events[2] = AuditEvent { sequence: 3, ..two };
        assert_eq!(
            verify(&events),
            Some(ChainBreak {
                sequence: 2,
                kind: ChainProblem::Reordered
            })
        );
    }

    #[test]
    fn another_tenants_chain_does_not_verify() {
        let events = chain(2);
        let mut verifier = ChainVerifier::new("other");
        assert!(verifier.check(&events[0]).is_err());
    }
}
