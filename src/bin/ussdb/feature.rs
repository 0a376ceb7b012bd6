//! The commands for the FME SDKs' records (one per user and feature flag, and per mutually exclusive group under
//! `_vwo_meta_meg_<groupId>`): print, store, erase and list them as the SDKs' JSON. Import and export carry them
//! with the campaign mappings.

use std::io::Read;
use std::process::ExitCode;

use clap::Subcommand;
use ussdb::{FeatureRecord, Store};

use super::{Access, Cli, describe, open, stdout_failed};

#[derive(Subcommand)]
pub enum Command {
    /// Print a user's FME record for a feature flag as the SDKs' JSON (exit code 1 when there is none).
    ///
    /// FEATURE is the flag's key, or `_vwo_meta_meg_<groupId>` for a mutually exclusive group's winner.
    ///
    /// Example: ussdb --dir ./data get-feature checkout user-42
    GetFeature {
        /// The feature flag's key (or `_vwo_meta_meg_<groupId>`).
        feature: String,
        /// The user's id.
        user: String,
    },
    /// Store an FME record given as the JSON an FME SDK passes to its connector's set() (replacing any earlier
    /// record of its user and feature).
    ///
    /// The JSON needs featureKey and userId (snake_case and PascalCase names are read too), or may be one record
    /// keyed by its storage key as the SDKs' example connectors keep it ({"checkout_user-42": {...}}). Every
    /// member is kept byte for byte, ids as the numbers they are.
    ///
    /// Example: ussdb --dir ./data set-feature '{"featureKey":"checkout","userId":"user-42","rolloutId":3,"rolloutKey":"checkout_rollout1","rolloutVariationId":1}'
    SetFeature {
        /// The record's JSON; read from standard input when absent or `-`.
        json: Option<String>,
    },
    /// Erase a user's FME record for a feature flag (exit code 1 when there was none).
    ///
    /// Example: ussdb --dir ./data delete-feature checkout user-42
    DeleteFeature {
        /// The feature flag's key (or `_vwo_meta_meg_<groupId>`).
        feature: String,
        /// The user's id.
        user: String,
    },
    /// Print every FME record of a user as JSON Lines, sorted by feature key.
    ///
    /// Example: ussdb --dir ./data features user-42
    Features {
        /// The user's id.
        user: String,
    },
}

impl Command {
    /// The subcommand's name, as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Command::GetFeature { .. } => "get-feature",
            Command::SetFeature { .. } => "set-feature",
            Command::DeleteFeature { .. } => "delete-feature",
            Command::Features { .. } => "features",
        }
    }
}

pub fn run(cli: &Cli, command: &Command) -> Result<ExitCode, String> {
    let err = |e: ussdb::Error| describe(cli, &e);
    match command {
        Command::GetFeature { feature, user } => {
            match open(cli, Access::Read)?
                .get_feature(feature, user)
                .map_err(err)?
            {
                Some(rec) => out!("{}", rec.to_json()),
                None => return Ok(ExitCode::from(1)),
            }
        }
        Command::SetFeature { json } => {
            let text = match json.as_deref() {
                Some(text) if text != "-" => text.to_owned(),
                _ => {
                    let mut text = String::new();
                    std::io::stdin()
                        .read_to_string(&mut text)
                        .map_err(|e| format!("cannot read standard input: {e}"))?;
                    text
                }
            };
            // Checked before the store is opened, so a refused record leaves no new store.
            let rec = FeatureRecord::from_json(text.trim()).map_err(err)?;
            open(cli, Access::Create)?.set_feature(&rec).map_err(err)?;
        }
        Command::DeleteFeature { feature, user } => {
            if !open(cli, Access::Change)?
                .delete_feature(feature, user)
                .map_err(err)?
            {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Features { user } => {
            for rec in open(cli, Access::Read)?.features_of(user).map_err(err)? {
                out!("{}", rec.to_json());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The `stats` line for FME records (a walk over the store: the index does not keep kinds).
pub fn print_stats(store: &Store) -> Result<(), String> {
    let n = store.count_features().map_err(|e| e.to_string())?;
    out!("fme records          {n}");
    Ok(())
}
