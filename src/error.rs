//! The one error type of the crate.
//!
//! Every variant carries the context a user needs to act on it: which file, which offset, which key. `Corrupted`
//! (bytes on disk are wrong) is kept apart from `Io` (the operating system refused), because they call for
//! different responses: restore or repair the first, retry or free space for the second.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in ussdb.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The operating system refused an I/O operation.
    Io {
        /// What ussdb was doing, e.g. "append to segment".
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Bytes on disk are not what ussdb wrote: a checksum mismatch, an impossible length, an undecodable value.
    Corrupted {
        /// The damaged file.
        path: PathBuf,
        /// Byte offset of the damaged record or header within the file.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A file that does not start with the ussdb magic number where a segment or hint file was expected.
    BadMagic {
        /// The file.
        path: PathBuf,
    },
    /// A file written by a newer (or unknown) on-disk format version.
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found in the file.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// A user id, campaign key, feature key or variation name that cannot be stored (empty, or an id too long).
    InvalidKey {
        /// Which argument: `"user_id"`, `"campaign_key"`, `"feature_key"` or `"variation_name"`.
        field: &'static str,
        /// The offending value, shortened to 64 characters.
        key: String,
        /// Why it was refused.
        reason: String,
    },
    /// An encoded value larger than the format allows.
    ValueTooLarge {
        /// The mapping's user id.
        user_id: String,
        /// The mapping's campaign key (an FME record's feature key).
        campaign_key: String,
        /// Size of the encoded value in bytes.
        len: usize,
        /// The limit, [`crate::MAX_VALUE_LEN`].
        max: usize,
    },
    /// An option outside its documented range.
    InvalidOption {
        /// The option's name.
        option: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// Another process (or another `Store` in this process) has the directory open.
    Locked {
        /// The lock file that is held.
        path: PathBuf,
    },
    /// The path given to `open` exists and is not a directory.
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// A write to a store opened with `Options::read_only`.
    ReadOnly {
        /// The store's directory.
        path: PathBuf,
    },
    /// A store opened before this process was forked: the child shares the parent's files but not its engine,
    /// so using it from the child would corrupt the store.
    Forked {
        /// The store's directory.
        path: PathBuf,
        /// The process that opened it.
        opened_by: u32,
    },
    /// An earlier fsync or write failed, so the on-disk state is unknown; the store refuses writes until it is
    /// reopened (a failed fsync may have silently dropped dirty pages, so retrying it would lie).
    Poisoned {
        /// The failure that poisoned the store.
        reason: String,
    },
    /// An import stopped at a record it could not read or store. The mappings before it were stored, none after
    /// it, so the import can be resumed right after the record once it is fixed.
    Import {
        /// Where the record is, e.g. `line 17` or `array element 17`.
        at: String,
        /// Mappings stored before it.
        imported: u64,
        /// What is wrong with the record (or with writing it).
        source: Box<Error>,
    },
    /// A backend other than the local log failed: a network store could not be reached, refused the
    /// credentials, answered in a way that cannot be read, or timed out. `target` names what was contacted
    /// (a URL without its password, a cluster's seed list); `kind` says what a caller can do about it.
    Backend {
        /// Which backend, e.g. `"redis"`.
        backend: &'static str,
        /// What kind of failure, for callers that retry or fall back.
        kind: BackendErrorKind,
        /// What was contacted or read, e.g. `redis://127.0.0.1:6379/0` or a key.
        target: String,
        /// The backend's own error.
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// An export wrote every intact mapping but skipped damaged records (run `repair` to drop them for good).
    Export {
        /// Mappings written.
        written: u64,
        /// Damaged records skipped.
        skipped: u64,
        /// The first of them.
        first: Box<Error>,
    },
    /// A user storage record in JSON that could not be read.
    #[cfg(feature = "json")]
    Json {
        /// Where in the input the parser stopped (e.g. `column 55`, or `line 8, column 3` inside a multi-line
        /// array element), or empty when unknown. The message gives it once: `source`'s own line and column,
        /// which count from the start of the record, are left out of the text.
        context: String,
        /// The parser's error.
        source: serde_json::Error,
    },
}

/// What kind of failure an [`Error::Backend`] is: whether retrying, fixing configuration or fixing data helps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendErrorKind {
    /// The backend could not be reached or dropped the connection; retrying later may succeed.
    Unavailable,
    /// The backend did not answer in time; retrying later may succeed.
    Timeout,
    /// The backend refused the credentials or the command (wrong password, missing permission).
    Refused,
    /// The backend answered with data that cannot be read (e.g. a value that is not the expected JSON).
    InvalidData,
    /// The configuration given for the backend is wrong (e.g. an unparsable URL).
    Config,
    /// Anything else the backend reported.
    Other,
}

impl fmt::Display for BackendErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendErrorKind::Unavailable => "unavailable",
            BackendErrorKind::Timeout => "timed out",
            BackendErrorKind::Refused => "refused",
            BackendErrorKind::InvalidData => "invalid data",
            BackendErrorKind::Config => "misconfigured",
            BackendErrorKind::Other => "failed",
        })
    }
}

impl Error {
    /// An [`Error::Backend`] for a store other than the local log (a network backend, say).
    pub fn backend(
        backend: &'static str,
        kind: BackendErrorKind,
        target: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Error {
        Error::Backend {
            backend,
            kind,
            target: target.into(),
            source: source.into(),
        }
    }

    /// The kind of a backend failure, if this is one.
    pub fn backend_kind(&self) -> Option<BackendErrorKind> {
        match self {
            Error::Backend { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupted(
        path: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Error {
        Error::Corrupted {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid_key(field: &'static str, key: &str, reason: impl Into<String>) -> Error {
        Error::InvalidKey {
            field,
            key: shorten(key),
            reason: reason.into(),
        }
    }

    /// True when the error says the bytes on disk are damaged (as opposed to the OS failing or bad input).
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            Error::Corrupted { .. } | Error::BadMagic { .. } | Error::UnsupportedVersion { .. }
        )
    }
}

/// Keeps error messages readable when a caller passes a megabyte-long id.
pub(crate) fn shorten(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() <= MAX {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(MAX).collect();
    out.push('…');
    out
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { op, path, source } => {
                write!(f, "{op} failed for {}: {source}", path.display())
            }
            Error::Corrupted {
                path,
                offset,
                reason,
            } => {
                write!(
                    f,
                    "corrupted data in {} at offset {offset}: {reason}",
                    path.display()
                )
            }
            Error::BadMagic { path } => {
                write!(
                    f,
                    "{} is not a ussdb file (wrong magic number)",
                    path.display()
                )
            }
            Error::UnsupportedVersion {
                path,
                found,
                supported,
            } => write!(
                f,
                "{} has format version {found}, this build reads up to version {supported}; upgrade ussdb",
                path.display()
            ),
            Error::InvalidKey { field, key, reason } => {
                write!(f, "invalid {field} {key:?}: {reason}")
            }
            Error::ValueTooLarge {
                user_id,
                campaign_key,
                len,
                max,
            } => write!(
                f,
                "value for user {:?} campaign {:?} is {len} bytes, over the limit of {max} bytes encoded",
                shorten(user_id),
                shorten(campaign_key)
            ),
            Error::InvalidOption { option, reason } => {
                write!(f, "invalid option {option}: {reason}")
            }
            Error::Locked { path } => write!(
                f,
                "the store is already open (lock {} is held by another process or handle)",
                path.display()
            ),
            Error::NotADirectory { path } => {
                write!(f, "{} exists and is not a directory", path.display())
            }
            Error::ReadOnly { path } => write!(
                f,
                "the store in {} is open read-only; reopen it without read_only to write",
                path.display()
            ),
            Error::Forked { path, opened_by } => write!(
                f,
                "the store in {} was opened by process {opened_by} before this process was forked; open it \
                 after forking, in the process that uses it (for example in gunicorn's post_fork hook)",
                path.display()
            ),
            Error::Poisoned { reason } => write!(
                f,
                "the store refuses writes after an earlier failure ({reason}); reopen it to recover"
            ),
            Error::Import {
                at,
                imported,
                source,
            } => match imported {
                1 => write!(
                    f,
                    "import stopped at {at}: {source} (1 mapping before it was imported, none after it)"
                ),
                n => write!(
                    f,
                    "import stopped at {at}: {source} ({n} mappings before it were imported, none after it)"
                ),
            },
            Error::Export {
                written,
                skipped,
                first,
            } => write!(
                f,
                "export wrote {written} mappings and skipped {skipped} damaged record(s), the first: {first}; \
                 run repair to drop them"
            ),
            #[cfg(feature = "json")]
            Error::Json { context, source } => {
                let message = source.to_string();
                let own_position = format!(" at line {} column {}", source.line(), source.column());
                let message = message.strip_suffix(&own_position).unwrap_or(&message);
                if context.is_empty() {
                    write!(f, "invalid user storage JSON: {message}")
                } else {
                    write!(f, "invalid user storage JSON at {context}: {message}")
                }
            }
            Error::Backend {
                backend,
                kind,
                target,
                source,
            } => write!(f, "{backend} backend {kind} at {target}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            #[cfg(feature = "json")]
            Error::Json { source, .. } => Some(source),
            Error::Import { source, .. } => Some(&**source),
            Error::Export { first, .. } => Some(&**first),
            Error::Backend { source, .. } => Some(&**source),
            _ => None,
        }
    }
}
