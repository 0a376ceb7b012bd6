//! What a `--dir` holds, so that commands that read never create a store and commands that write never turn a
//! directory of other files into one (opening a store also removes `*.tmp` files it takes for its own).

use std::path::Path;

/// What is at a `--dir` path.
#[derive(Debug, PartialEq, Eq)]
pub enum DirState {
    /// Nothing: a store would be created.
    Missing,
    /// A directory with nothing in it but what an interrupted creation of a store leaves (`LOCK`, `*.tmp` of
    /// the store's own files).
    Empty,
    /// A store: the directory holds the `SEED` or `MANIFEST` file or a segment (`*.seg`).
    Store,
    /// A directory with other files and no store; `example` names one of them.
    Other { example: String },
    /// Something that is not a directory.
    NotADirectory,
}

/// Looks at `dir` without changing anything.
pub fn state(dir: &Path) -> Result<DirState, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DirState::Missing),
        Err(_) if dir.exists() && !dir.is_dir() => return Ok(DirState::NotADirectory),
        Err(e) => return Err(format!("cannot list {}: {e}", dir.display())),
    };
    let mut example = None;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == "SEED" || name == "MANIFEST" || name.ends_with(".seg") {
            return Ok(DirState::Store);
        }
        let leftover = matches!(&*name, "LOCK" | "SEED.tmp" | "MANIFEST.tmp");
        if !leftover && example.is_none() {
            example = Some(name.into_owned());
        }
    }
    Ok(match example {
        Some(example) => DirState::Other { example },
        None => DirState::Empty,
    })
}
