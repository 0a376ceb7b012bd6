//! RocksDB (opt-in feature `rocksdb`). Buffered = WAL written without sync plus a background
//! `flush_wal(true)`; durable = `WriteOptions::set_sync(true)`, whose writer queue gives it
//! group commit.

use super::Syncer;
use crate::codec::{decode_entry, decode_value, encode_key, encode_value, user_prefix, with_key};
use crate::{CampaignUserMap, Kv, Mode, Res};
use rocksdb::{
    BlockBasedOptions, Cache, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions,
};
use std::path::Path;
use std::sync::Arc;

pub struct RocksStore {
    _syncer: Option<Syncer>,
    db: Arc<DB>,
    mode: Mode,
}

impl RocksStore {
    pub fn open(dir: &Path, mode: Mode) -> Res<RocksStore> {
        let mut options = Options::default();
        options.create_if_missing(true);
        // The same 1 GiB of cache as the other stores, and bloom filters so that a miss need
        // not read a block (fjall has them by default).
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&Cache::new_lru_cache(1 << 30));
        table.set_bloom_filter(10.0, false);
        options.set_block_based_table_factory(&table);
        let db = Arc::new(DB::open(&options, dir)?);
        let syncer = (mode == Mode::Buffered).then(|| {
            let db = Arc::clone(&db);
            Syncer::start("rocksdb", move || {
                let _ = db.flush_wal(true);
            })
        });
        Ok(RocksStore {
            _syncer: syncer,
            db,
            mode,
        })
    }

    fn write_options(&self) -> WriteOptions {
        let mut w = WriteOptions::default();
        w.set_sync(self.mode == Mode::Durable);
        w
    }
}

impl Kv for RocksStore {
    fn get(&self, user_id: &str, campaign_key: &str) -> Res<Option<CampaignUserMap>> {
        with_key(user_id, campaign_key, |key| {
            self.db
                .get_pinned(key)?
                .map(|v| decode_value(user_id, campaign_key, &v))
                .transpose()
        })
    }

    fn set(&self, m: &CampaignUserMap) -> Res<()> {
        let key = encode_key(&m.user_id, &m.campaign_key);
        self.db
            .put_opt(key, encode_value(m), &self.write_options())?;
        Ok(())
    }

    fn set_many(&self, maps: &[CampaignUserMap]) -> Res<()> {
        let mut batch = WriteBatch::default();
        for m in maps {
            batch.put(encode_key(&m.user_id, &m.campaign_key), encode_value(m));
        }
        self.db.write_opt(batch, &self.write_options())?;
        Ok(())
    }

    fn campaigns_of(&self, user_id: &str) -> Res<Option<Vec<CampaignUserMap>>> {
        let prefix = user_prefix(user_id);
        let mut out = Vec::new();
        for entry in self
            .db
            .iterator(IteratorMode::From(&prefix, Direction::Forward))
        {
            let (k, v) = entry?;
            if !k.starts_with(&prefix) {
                break;
            }
            out.push(decode_entry(user_id, &k, &v)?);
        }
        Ok(Some(out))
    }

    fn sync(&self) -> Res<()> {
        Ok(self.db.flush_wal(true)?)
    }
}
