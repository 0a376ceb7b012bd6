//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};

use ussdb::{CampaignUserMap, Durability, Options, Store};

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("create a temporary directory")
}

/// Small segments, so a few hundred writes span several of them.
pub fn small_segments() -> Options {
    Options::default()
        .segment_size(4096)
        .durability(Durability::Never)
}

pub fn open(dir: &Path, options: Options) -> Store {
    Store::open_with(dir, options).expect("open store")
}

pub fn map(user: &str, campaign: &str, variation: &str, goals: Option<&str>) -> CampaignUserMap {
    CampaignUserMap {
        user_id: user.to_owned(),
        campaign_key: campaign.to_owned(),
        variation_name: variation.to_owned(),
        goal_identifier: goals.map(str::to_owned),
    }
}

/// The segment files of a store directory, oldest first.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list store directory")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

/// Copies every file of `from` into a fresh temporary directory.
pub fn copy_dir(from: &Path) -> tempfile::TempDir {
    let to = tempdir();
    for entry in std::fs::read_dir(from).expect("list") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.path().join(entry.file_name())).expect("copy");
    }
    to
}
