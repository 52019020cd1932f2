//! The backup bundle: a header, then frames each encrypted with XChaCha20-Poly1305 under a key
//! derived from the operator's passphrase with Argon2id.
//!
//! ```text
//! header: "SWYDBAK1" | m_cost u32 | t_cost u32 | p_cost u32 | salt [16] | nonce prefix [16]
//! frame:  length u32 | ciphertext (plaintext JSON + 16-byte tag)
//! ```
//! Frame `i` uses the nonce `prefix || i` (big-endian u64) and the header as associated data
//! followed by one byte that is 1 only on the last frame. Reordered, dropped, duplicated or
//! spliced frames therefore fail to decrypt, and a bundle cut short is missing its last frame.
//! Secret material exists in plaintext only inside the encrypted frames.

use argon2::{Algorithm, Argon2, Params, Version as ArgonVersion};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::error::{CredentialError, Result};
use super::model::{CredentialSpec, Kind, Micros, Origin, State, VersionState};

const MAGIC: &[u8; 8] = b"SWYDBAK1";
const HEADER_LEN: usize = 8 + 4 * 3 + 16 + 16;
/// Largest frame: one credential with its versions. The largest valid one (100 versions of
/// 1 MiB, base64 in JSON) is about 134 MiB; the writer refuses anything larger, so every bundle
/// it writes can be read back.
const MAX_FRAME: usize = 160 * 1024 * 1024;
/// Shortest passphrase accepted.
pub const MIN_PASSPHRASE: usize = 16;

// Argon2id parameters for new bundles (OWASP's recommendation: 19 MiB, 2 passes).
const M_COST_KIB: u32 = 19 * 1024;
const T_COST: u32 = 2;
const P_COST: u32 = 1;

/// One credential and all of its versions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupRecord {
    /// The credential id.
    pub id: String,
    /// Its kind.
    pub kind: Kind,
    /// Its metadata.
    pub spec: CredentialSpec,
    /// Its state.
    pub state: State,
    /// The current version.
    pub current_version: i64,
    /// Times, as stored.
    pub create_time: Micros,
    /// Last change.
    pub update_time: Micros,
    /// Soft-delete time.
    pub delete_time: Option<Micros>,
    /// Purge time.
    pub purge_time: Option<Micros>,
    /// Next scheduled rotation.
    pub next_rotation_time: Option<Micros>,
    /// Every version, oldest first.
    pub versions: Vec<BackupVersion>,
}

/// One version, with its material unless it was destroyed.
#[derive(Clone, Serialize, Deserialize)]
pub struct BackupVersion {
    /// The version number.
    pub version: i64,
    /// Its state.
    pub state: VersionState,
    /// Its origin.
    pub origin: Origin,
    /// When it was added.
    pub create_time: Micros,
    /// When it was destroyed.
    pub destroy_time: Option<Micros>,
    /// The material, base64; absent for destroyed versions.
    pub material: Option<String>,
}

impl std::fmt::Debug for BackupVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupVersion")
            .field("version", &self.version)
            .field("state", &self.state)
            .field("material", &self.material.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Drop for BackupVersion {
    fn drop(&mut self) {
        if let Some(material) = &mut self.material {
            zeroize::Zeroize::zeroize(material);
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Frame {
    Record(Box<BackupRecord>),
    End { records: u64 },
}

// Bounds on the parameters a bundle's header may ask for: a crafted header must not make the
// server spend more memory or time than a few times the default.
const MAX_M_COST_KIB: u32 = 64 * 1024;
const MAX_T_COST: u32 = 8;
const MAX_P_COST: u32 = 4;

/// Argon2id on a blocking thread: it takes tens of milliseconds and megabytes by design, which
/// must not stall the async workers.
async fn derive_key(
    passphrase: Zeroizing<String>,
    salt: [u8; 16],
    m: u32,
    t: u32,
    p: u32,
) -> Result<Zeroizing<[u8; 32]>> {
    let params = Params::new(m, t, p, Some(32)).map_err(|err| {
        CredentialError::BackupInvalid(format!("key derivation parameters: {err}"))
    })?;
    tokio::task::spawn_blocking(move || {
        let mut key = Zeroizing::new([0u8; 32]);
        Argon2::new(Algorithm::Argon2id, ArgonVersion::V0x13, params)
            .hash_password_into(passphrase.as_bytes(), &salt, key.as_mut())
            .map_err(|err| CredentialError::BackupInvalid(format!("key derivation: {err}")))?;
        Ok(key)
    })
    .await
    .map_err(|err| CredentialError::BackupInvalid(format!("key derivation: {err}")))?
}

fn nonce(prefix: &[u8; 16], counter: u64) -> XNonce {
    let mut bytes = [0u8; 24];
    bytes[..16].copy_from_slice(prefix);
    bytes[16..].copy_from_slice(&counter.to_be_bytes());
    XNonce::from(bytes)
}

fn aad(header: &[u8], last: bool) -> Vec<u8> {
    let mut aad = header.to_vec();
    aad.push(u8::from(last));
    aad
}

/// Writes a bundle frame by frame.
pub struct BundleWriter {
    cipher: XChaCha20Poly1305,
    header: Vec<u8>,
    prefix: [u8; 16],
    counter: u64,
    records: u64,
}

impl std::fmt::Debug for BundleWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleWriter")
            .field("records", &self.records)
            .finish()
    }
}

impl BundleWriter {
    /// Derives the key and returns the writer with the header bytes to emit first.
    pub async fn new(passphrase: &str) -> Result<(Self, Vec<u8>)> {
        let mut salt = [0u8; 16];
        let mut prefix = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        rand::rngs::OsRng.fill_bytes(&mut prefix);
        let passphrase = Zeroizing::new(passphrase.to_owned());
        let key = derive_key(passphrase, salt, M_COST_KIB, T_COST, P_COST).await?;
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MAGIC);
        for value in [M_COST_KIB, T_COST, P_COST] {
            header.extend_from_slice(&value.to_be_bytes());
        }
        header.extend_from_slice(&salt);
        header.extend_from_slice(&prefix);
        let writer = BundleWriter {
            cipher: XChaCha20Poly1305::new(key.as_ref().into()),
            header: header.clone(),
            prefix,
            counter: 0,
            records: 0,
        };
        Ok((writer, header))
    }

    fn frame(&mut self, frame: &Frame, last: bool) -> Result<Vec<u8>> {
        let plaintext = Zeroizing::new(
            serde_json::to_vec(frame)
                .map_err(|err| CredentialError::BackupInvalid(err.to_string()))?,
        );
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce(&self.prefix, self.counter),
                Payload {
                    msg: &plaintext,
                    aad: &aad(&self.header, last),
                },
            )
            .map_err(|_| CredentialError::BackupInvalid("encryption failed".into()))?;
        self.counter += 1;
        if ciphertext.len() > MAX_FRAME {
            return Err(CredentialError::BackupInvalid(format!(
                "a credential's versions take {} bytes, more than a frame holds ({MAX_FRAME})",
                ciphertext.len()
            )));
        }
        let length = u32::try_from(ciphertext.len())
            .map_err(|_| CredentialError::BackupInvalid("frame too large".into()))?;
        let mut out = Vec::with_capacity(4 + ciphertext.len());
        out.extend_from_slice(&length.to_be_bytes());
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    /// The encrypted frame of one record.
    pub fn record(&mut self, record: BackupRecord) -> Result<Vec<u8>> {
        self.records += 1;
        self.frame(&Frame::Record(Box::new(record)), false)
    }

    /// The final frame.
    pub fn finish(mut self) -> Result<Vec<u8>> {
        let records = self.records;
        self.frame(&Frame::End { records }, true)
    }
}

/// Reads a bundle from chunks as they arrive.
pub struct BundleReader {
    passphrase: Zeroizing<String>,
    buffer: Vec<u8>,
    state: ReaderState,
}

enum ReaderState {
    Header,
    Frames {
        cipher: Box<XChaCha20Poly1305>,
        header: Vec<u8>,
        prefix: [u8; 16],
        counter: u64,
        records: u64,
    },
    Done,
}

impl std::fmt::Debug for BundleReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleReader")
            .field("buffered", &self.buffer.len())
            .finish()
    }
}

impl BundleReader {
    /// A reader for a bundle protected by `passphrase`.
    pub fn new(passphrase: &str) -> Self {
        BundleReader {
            passphrase: Zeroizing::new(passphrase.to_owned()),
            buffer: Vec::new(),
            state: ReaderState::Header,
        }
    }

    /// Adds received bytes.
    pub fn push(&mut self, chunk: &[u8]) -> Result<()> {
        if self.buffer.len() + chunk.len() > MAX_FRAME + HEADER_LEN + 4 {
            return Err(CredentialError::BackupInvalid("frame too large".into()));
        }
        self.buffer.extend_from_slice(chunk);
        Ok(())
    }

    /// The next complete record, if enough bytes have arrived.
    pub async fn next_record(&mut self) -> Result<Option<BackupRecord>> {
        loop {
            match &mut self.state {
                ReaderState::Done => {
                    if self.buffer.is_empty() {
                        return Ok(None);
                    }
                    return Err(CredentialError::BackupInvalid(
                        "data after the last frame".into(),
                    ));
                }
                ReaderState::Header => {
                    if self.buffer.len() < HEADER_LEN {
                        return Ok(None);
                    }
                    let header: Vec<u8> = self.buffer.drain(..HEADER_LEN).collect();
                    if &header[..8] != MAGIC {
                        return Err(CredentialError::BackupInvalid(
                            "not a Switchyard backup bundle".into(),
                        ));
                    }
                    let read_u32 = |at: usize| {
                        let mut bytes = [0u8; 4];
                        bytes.copy_from_slice(&header[at..at + 4]);
                        u32::from_be_bytes(bytes)
                    };
                    let (m, t, p) = (read_u32(8), read_u32(12), read_u32(16));
                    if m > MAX_M_COST_KIB || t > MAX_T_COST || p > MAX_P_COST {
                        return Err(CredentialError::BackupInvalid(
                            "key derivation parameters out of range".into(),
                        ));
                    }
                    let mut salt = [0u8; 16];
                    salt.copy_from_slice(&header[20..36]);
                    let key = derive_key(self.passphrase.clone(), salt, m, t, p).await?;
                    let mut prefix = [0u8; 16];
                    prefix.copy_from_slice(&header[36..52]);
                    self.state = ReaderState::Frames {
                        cipher: Box::new(XChaCha20Poly1305::new(key.as_ref().into())),
                        header,
                        prefix,
                        counter: 0,
                        records: 0,
                    };
                }
                ReaderState::Frames {
                    cipher,
                    header,
                    prefix,
                    counter,
                    records,
                } => {
                    if self.buffer.len() < 4 {
                        return Ok(None);
                    }
                    let mut length = [0u8; 4];
                    length.copy_from_slice(&self.buffer[..4]);
                    let length = u32::from_be_bytes(length) as usize;
                    if length > MAX_FRAME {
                        return Err(CredentialError::BackupInvalid("frame too large".into()));
                    }
                    if self.buffer.len() < 4 + length {
                        return Ok(None);
                    }
                    let ciphertext: Vec<u8> = self.buffer.drain(..4 + length).skip(4).collect();
                    let decrypt = |last: bool| {
                        cipher.decrypt(
                            &nonce(prefix, *counter),
                            Payload {
                                msg: &ciphertext,
                                aad: &aad(header, last),
                            },
                        )
                    };
                    let (plaintext, last) = match decrypt(false) {
                        Ok(plaintext) => (plaintext, false),
                        Err(_) => match decrypt(true) {
                            Ok(plaintext) => (plaintext, true),
                            Err(_) => {
                                return Err(CredentialError::BackupInvalid(if *counter == 0 {
                                    "cannot decrypt: wrong passphrase or corrupt bundle".into()
                                } else {
                                    format!("frame {counter} is corrupt or out of order")
                                }));
                            }
                        },
                    };
                    let plaintext = Zeroizing::new(plaintext);
                    *counter += 1;
                    let frame: Frame = serde_json::from_slice(&plaintext).map_err(|_| {
                        CredentialError::BackupInvalid(format!("frame {counter} does not decode"))
                    })?;
                    match (frame, last) {
                        (Frame::Record(record), false) => {
                            *records += 1;
                            return Ok(Some(*record));
                        }
                        (Frame::End { records: expected }, true) if expected == *records => {
                            self.state = ReaderState::Done;
                        }
                        _ => {
                            return Err(CredentialError::BackupInvalid(
                                "the bundle's frames are inconsistent".into(),
                            ));
                        }
                    }
                }
            }
        }
    }

    /// Checks that the whole bundle, up to its last frame, was read.
    pub fn finish(&self) -> Result<()> {
        match self.state {
            ReaderState::Done if self.buffer.is_empty() => Ok(()),
            ReaderState::Done => Err(CredentialError::BackupInvalid(
                "data after the last frame".into(),
            )),
            _ => Err(CredentialError::BackupInvalid(
                "the bundle is truncated: its last frame is missing".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, material: &str) -> BackupRecord {
        BackupRecord {
            id: id.into(),
            kind: Kind::ApiKey,
            spec: CredentialSpec::default(),
            state: State::Active,
            current_version: 1,
            create_time: 1,
            update_time: 1,
            delete_time: None,
            purge_time: None,
            next_rotation_time: None,
            versions: vec![BackupVersion {
                version: 1,
                state: VersionState::Enabled,
                origin: Origin::Supplied,
                create_time: 1,
                destroy_time: None,
                material: Some(material.into()),
            }],
        }
    }

    const PASS: &str = "correct horse battery staple";

    async fn bundle(records: &[(&str, &str)]) -> Vec<u8> {
        let (mut writer, mut out) = BundleWriter::new(PASS).await.unwrap();
        for (id, material) in records {
            out.extend(writer.record(record(id, material)).unwrap());
        }
        out.extend(writer.finish().unwrap());
        out
    }

    async fn read_all(bytes: &[u8], passphrase: &str, chunk: usize) -> Result<Vec<BackupRecord>> {
        let mut reader = BundleReader::new(passphrase);
        let mut out = Vec::new();
        for piece in bytes.chunks(chunk) {
            reader.push(piece)?;
            while let Some(record) = reader.next_record().await? {
                out.push(record);
            }
        }
        reader.finish()?;
        Ok(out)
    }

    #[tokio::test]
    async fn round_trip_in_any_chunking_without_plaintext() {
        let bytes = bundle(&[("a", "c2VjcmV0LWE"), ("b", "c2VjcmV0LWI")]).await;
        assert!(!bytes.windows(11).any(|w| w == b"c2VjcmV0LWE"));
        for chunk in [1, 7, 4096] {
            let records = read_all(&bytes, PASS, chunk).await.unwrap();
            assert_eq!(records.len(), 2);
            assert_eq!(
                records[1].versions[0].material.as_deref(),
                Some("c2VjcmV0LWI")
            );
        }
    }

    #[tokio::test]
    async fn wrong_passphrase_truncation_and_tampering_are_refused() {
        let bytes = bundle(&[("a", "x"), ("b", "y")]).await;
        let err = read_all(&bytes, "a wrong passphrase!!", 4096)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("wrong passphrase"), "{err}");

        let last_frame_start = bytes.len()
            - (4 + 16
                + serde_json::to_vec(&Frame::End { records: 2 })
                    .unwrap()
                    .len());
        let err = read_all(&bytes[..last_frame_start], PASS, 4096)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");

        let mut tampered = bytes.clone();
        let middle = HEADER_LEN + 10;
        tampered[middle] ^= 1;
        assert!(read_all(&tampered, PASS, 4096).await.is_err());

        let mut extended = bytes.clone();
        extended.push(0);
        assert!(read_all(&extended, PASS, 4096).await.is_err());

        assert!(
            read_all(
                b"not a bundle at all, clearly not one........................",
                PASS,
                4096
            )
            .await
            .is_err()
        );
    }
}
