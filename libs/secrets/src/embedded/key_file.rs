//! The master key file: base64 of 32 bytes, mode 0600, created on first start.
//!
//! File operations here are synchronous: they run at start-up and during a master-key rotation,
//! on a few bytes.

use std::ffi::OsString;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use zeroize::Zeroizing;

use super::{BASE64, MasterKey, decode_key, random_key};
use crate::SecretError;

/// Loads the master key from `path`, or creates it when the file does not exist and no data key
/// has been stored yet. `stored` is the fingerprint the stored data keys are wrapped under.
///
/// A rotation that committed but crashed before renaming `master.key.next` over the key file is
/// finished here; a `master.key.next` whose rotation never committed is deleted.
pub(super) fn load(path: &Path, stored: Option<&str>) -> Result<MasterKey, SecretError> {
    let next = next_path(path);
    match read(path)? {
        Some(current) if stored.is_none_or(|stored| stored == current.fingerprint) => {
            if fs::symlink_metadata(&next).is_ok() {
                tracing::info!(path = %next.display(), "removing the key of a master key rotation that did not commit");
                discard(&next);
            }
            Ok(current)
        }
        current => {
            // Here either the file is missing, or it holds another key than the stored data keys'.
            let Some(stored) = stored else {
                create(path)?;
                return read(path)?.ok_or_else(|| missing(path));
            };
            if let Some(next_key) = read(&next)?
                && next_key.fingerprint == stored
            {
                promote(&next, path)?;
                tracing::info!(path = %path.display(), "finished an interrupted master key rotation");
                return Ok(next_key);
            }
            Err(match current {
                Some(current) => super::mismatch(
                    &super::KeySource::File(path.to_owned()),
                    &current.fingerprint,
                    stored,
                ),
                None => SecretError::Config(format!(
                    "the master key file {} does not exist, but the store holds data keys wrapped \
                     by the master key with fingerprint {stored}; restore the file or supply the \
                     key in SWITCHYARD_SECRETS__MASTER_KEY",
                    path.display()
                )),
            })
        }
    }
}

fn missing(path: &Path) -> SecretError {
    SecretError::Config(format!(
        "the master key file {} disappeared",
        path.display()
    ))
}

/// `master.key` → `master.key.next`.
fn next_path(path: &Path) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(".next");
    PathBuf::from(name)
}

fn io_error(action: &str, path: &Path, err: &io::Error) -> SecretError {
    SecretError::Config(format!("{action} {}: {err}", path.display()))
}

/// Reads a key file, or `None` if there is none. Refuses a file that others may read.
fn read(path: &Path) -> Result<Option<MasterKey>, SecretError> {
    let metadata = match fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(io_error("reading the master key file", path, &err)),
    };
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretError::Config(format!(
            "the master key file {} is accessible by group or others (mode {mode:o}); \
             restrict it with `chmod 600 {}`",
            path.display(),
            path.display()
        )));
    }
    let text = Zeroizing::new(
        fs::read_to_string(path)
            .map_err(|err| io_error("reading the master key file", path, &err))?,
    );
    let what = path.display();
    let bytes = decode_key(&text, &what)?;
    MasterKey::from_bytes(&bytes, &what).map(Some)
}

/// Creates the key file with a new random key. Losing a race with another process that creates
/// it at the same moment is fine: the caller reads whichever key won.
fn create(path: &Path) -> Result<(), SecretError> {
    let dir = parent(path);
    if !dir.exists() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|err| io_error("creating the directory", dir, &err))?;
    }
    let key = random_key();
    match write_new(path, &key) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "generated a new secret store master key");
            Ok(())
        }
        Err(err) if err.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(io_error("creating the master key file", path, &err)),
    }
}

/// Writes the key for a rotation to `master.key.next`, durably, and returns that path.
pub(super) fn write_next(path: &Path, key: &[u8]) -> Result<PathBuf, SecretError> {
    let next = next_path(path);
    match fs::remove_file(&next) {
        Ok(()) => {}
        Err(err) if err.kind() == ErrorKind::NotFound => {}
        Err(err) => return Err(io_error("removing", &next, &err)),
    }
    write_new(&next, key).map_err(|err| io_error("writing the new master key to", &next, &err))?;
    Ok(next)
}

/// Renames `master.key.next` over `master.key`, durably.
pub(super) fn promote(next: &Path, path: &Path) -> Result<(), SecretError> {
    fs::rename(next, path)
        .and_then(|()| sync_dir(parent(path)))
        .map_err(|err| {
            SecretError::Config(format!(
                "the master key was rotated, but moving {} over {} failed ({err}); the new key is \
                 in {} and the store will finish the move when it next opens",
                next.display(),
                path.display(),
                next.display()
            ))
        })
}

/// Deletes the key file of a rotation that did not commit.
pub(super) fn discard(next: &Path) {
    if let Err(err) = fs::remove_file(next) {
        tracing::warn!(path = %next.display(), error = %err, "could not remove an unused master key file");
    }
}

/// Creates `path` (never overwriting), mode 0600, writes the key as base64 and syncs the file and
/// its directory.
fn write_new(path: &Path, key: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let mut encoded = Zeroizing::new(BASE64.encode(key));
    encoded.push('\n');
    file.write_all(encoded.as_bytes())?;
    file.sync_all()?;
    sync_dir(parent(path))
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Makes a rename or a new directory entry durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
