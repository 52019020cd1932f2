//! The scopes of the credentials service, shared by the API's scope table and the domain's own
//! checks of audited methods.

/// Reading credential metadata, versions and expiry.
pub const READ: &str = "credentials.read";
/// Creating, changing, rotating and deleting credentials.
pub const WRITE: &str = "credentials.write";
/// Reading secret material (AccessCredential, and ExportBackup with the backup scope).
pub const ACCESS: &str = "credentials.access";
/// Reading and verifying the audit log.
pub const AUDIT: &str = "credentials.audit";
/// Exporting and restoring backups.
pub const BACKUP: &str = "credentials.backup";
