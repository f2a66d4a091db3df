//! Lock files: a service's schema written down and checked in, so that a change that would
//! break its callers fails a test (or `rpc check`) instead of a deployment.
//!
//! The file is the schema as pretty JSON: the service, each method with its arguments, result
//! and fingerprint, and every type's structure. In a test of your own:
//!
//! ```no_run
//! # #[rpc_core::service] pub trait Calc { async fn add(&self, a: i64, b: i64) -> i64; }
//! #[test]
//! fn calc_keeps_its_wire_format() {
//!     rpc_cli::lockfile::assert_compatible::<CalcClient>("calc.lock.json");
//! }
//! ```
//!
//! The first run writes the file; commit it. Later runs fail on each incompatible change: a
//! method removed, or one whose arguments or result are encoded differently. Adding methods
//! passes. To accept a change on purpose, delete the file, or run `rpc lock`, and commit the
//! new one: its diff shows what changed.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use rpc_core::ServiceClient;
use rpc_core::schema::{Incompatibility, ServiceSchema, incompatibilities};

/// Why a lock file check failed.
#[derive(Debug)]
pub enum LockError {
    /// The file could not be read or written.
    Io {
        /// The lock file's path.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// The file is not a lock file.
    Malformed(String),
    /// The service's schema could not be made.
    Schema(rpc_core::schema::SchemaError),
    /// The service changed in ways that break callers built from the lock file.
    Incompatible(Vec<Incompatibility>),
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::Io { path, error } => {
                write!(
                    f,
                    "the lock file {} could not be used: {error}",
                    path.display()
                )
            }
            LockError::Malformed(why) => {
                write!(f, "the lock file is not a service's schema: {why}")
            }
            LockError::Schema(error) => error.fmt(f),
            LockError::Incompatible(changes) => {
                writeln!(f, "the service changed in ways that break its callers:")?;
                for change in changes {
                    writeln!(f, "  - {change}")?;
                }
                write!(
                    f,
                    "If the change is meant, write the lock file again (`rpc lock`, or delete \
                     it and rerun) and commit it."
                )
            }
        }
    }
}

impl std::error::Error for LockError {}

/// What a lock file check found.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked {
    /// The file did not exist; it was written.
    Written,
    /// The service is compatible with the file; these methods are new since it was written.
    Compatible {
        /// The methods added.
        added: Vec<String>,
    },
}

/// Writes `schema` to `path` as a lock file.
pub fn write(schema: &ServiceSchema, path: impl AsRef<Path>) -> Result<(), LockError> {
    let mut text =
        serde_json::to_string_pretty(schema).map_err(|e| LockError::Malformed(e.to_string()))?;
    text.push('\n');
    let path = path.as_ref();
    std::fs::write(path, text).map_err(|error| io_error(path, error))
}

fn io_error(path: &Path, error: io::Error) -> LockError {
    LockError::Io {
        path: path.to_owned(),
        error,
    }
}

/// Reads the lock file at `path`.
pub fn read(path: impl AsRef<Path>) -> Result<ServiceSchema, LockError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|error| io_error(path, error))?;
    serde_json::from_str(&text).map_err(|e| LockError::Malformed(e.to_string()))
}

/// Compares `schema` with the lock file at `path`; writes the file if there is none.
pub fn check(schema: &ServiceSchema, path: impl AsRef<Path>) -> Result<Checked, LockError> {
    let path = path.as_ref();
    if !path.exists() {
        write(schema, path)?;
        return Ok(Checked::Written);
    }
    let locked = read(path)?;
    let broken = incompatibilities(&locked, schema);
    if !broken.is_empty() {
        return Err(LockError::Incompatible(broken));
    }
    let added = schema
        .methods
        .iter()
        .filter(|method| locked.method(&method.name).is_none())
        .map(|method| method.name.clone())
        .collect();
    Ok(Checked::Compatible { added })
}

/// For a test: panics, listing each incompatible change, unless client `C`'s service is
/// compatible with the lock file at `path` (which is written if there is none).
///
/// # Panics
///
/// On an incompatible change, or a lock file that cannot be read or written.
pub fn assert_compatible<C: ServiceClient>(path: impl AsRef<Path>) {
    let schema = match C::INFO.describe() {
        Ok(schema) => schema,
        Err(error) => panic!("{}", LockError::Schema(error)),
    };
    if let Err(error) = check(schema, path) {
        panic!("{error}");
    }
}
