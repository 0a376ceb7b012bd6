//! fjall 3. Buffered = fjall's default (each write reaches the OS, no fsync) plus a background
//! `persist(SyncAll)`; durable = `persist(SyncData)` (fdatasync of the journal) after each insert.
//! Block cache 1 GiB (default 32 MiB).

use super::Syncer;
use crate::codec::{decode_entry, decode_value, encode_key, encode_value, user_prefix, with_key};
use crate::{CampaignUserMap, Kv, Mode, Res};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use std::path::Path;

const CACHE_BYTES: u64 = 1 << 30;

pub struct FjallStore {
    _syncer: Option<Syncer>,
    db: Database,
    maps: Keyspace,
    mode: Mode,
}

impl FjallStore {
    pub fn open(dir: &Path, mode: Mode) -> Res<FjallStore> {
        // fjall's 32 MiB default cache would make it read blocks through the OS at 1M
        // mappings while the other stores keep theirs in memory: give it the 1 GiB they get.
        let db = Database::builder(dir).cache_size(CACHE_BYTES).open()?;
        let maps = db.keyspace("maps", KeyspaceCreateOptions::default)?;
        let syncer = (mode == Mode::Buffered).then(|| {
            let db = db.clone();
            Syncer::start("fjall", move || {
                let _ = db.persist(PersistMode::SyncAll);
            })
        });
        Ok(FjallStore {
            _syncer: syncer,
            db,
            maps,
            mode,
        })
    }
}

impl Kv for FjallStore {
    fn get(&self, user_id: &str, campaign_key: &str) -> Res<Option<CampaignUserMap>> {
        with_key(user_id, campaign_key, |key| {
            self.maps
                .get(key)?
                .map(|v| decode_value(user_id, campaign_key, &v))
                .transpose()
        })
    }

    fn set(&self, m: &CampaignUserMap) -> Res<()> {
        self.maps
            .insert(encode_key(&m.user_id, &m.campaign_key), encode_value(m))?;
        if self.mode == Mode::Durable {
            self.db.persist(PersistMode::SyncData)?;
        }
        Ok(())
    }

    fn set_many(&self, maps: &[CampaignUserMap]) -> Res<()> {
        let mut batch = self.db.batch();
        for m in maps {
            batch.insert(
                &self.maps,
                encode_key(&m.user_id, &m.campaign_key),
                encode_value(m),
            );
        }
        batch.commit()?;
        Ok(())
    }

    fn campaigns_of(&self, user_id: &str) -> Res<Option<Vec<CampaignUserMap>>> {
        let mut out = Vec::new();
        for guard in self.maps.prefix(user_prefix(user_id)) {
            let (k, v) = guard.into_inner()?;
            out.push(decode_entry(user_id, &k, &v)?);
        }
        Ok(Some(out))
    }

    fn sync(&self) -> Res<()> {
        Ok(self.db.persist(PersistMode::SyncAll)?)
    }
}
