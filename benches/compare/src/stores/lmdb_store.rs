//! LMDB through heed. Buffered = MDB_NOSYNC | MDB_NOMETASYNC plus a background `mdb_env_sync`;
//! durable = LMDB's default, an fdatasync per commit (writers serialise on the write lock).

use super::Syncer;
use crate::codec::{decode_entry, decode_value, encode_key, encode_value, user_prefix, with_key};
use crate::{CampaignUserMap, Kv, Mode, Res};
use heed::types::Bytes;
use heed::{CommitOrAbort, Database, Env, EnvFlags, EnvOpenOptions};
use std::path::Path;

pub struct LmdbStore {
    _syncer: Option<Syncer>,
    // 'static stands for "as long as `env`", which this struct keeps alive beside it.
    db: Database<'static, Bytes, Bytes>,
    env: Env,
}

/// Address space only: LMDB maps this much but the file grows with the data. `LMDB_MAP_SIZE`
/// overrides it (valgrind cannot map the default).
const MAP_SIZE: usize = 64 << 30;

impl LmdbStore {
    pub fn open(dir: &Path, mode: Mode) -> Res<LmdbStore> {
        std::fs::create_dir_all(dir)?;
        let mut options = EnvOpenOptions::new();
        let map_size = std::env::var("LMDB_MAP_SIZE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(MAP_SIZE);
        options.map_size(map_size).max_dbs(1);
        if mode == Mode::Buffered {
            // SAFETY: no other process opens this directory, and a crash may lose (never
            // corrupt) the writes since the last sync, which is what Buffered means.
            unsafe { options.flags(EnvFlags::NO_SYNC | EnvFlags::NO_META_SYNC) };
        }
        // SAFETY: the directory is private to this process and opened once.
        let env = unsafe { options.open(dir)? };
        let db = env
            .create_databases_and_commit(env.write_txn()?, |opener, wtxn| {
                opener
                    .create_database::<Bytes, Bytes>(wtxn, Some("maps"))
                    .map(CommitOrAbort::<_, ()>::Commit)
            })?
            .unwrap_commit();
        // SAFETY: a Database is a dbi number checked against its Env at each use; heed borrows
        // the Env only to keep it open, and this struct owns a handle to that same Env for as
        // long as the Database lives.
        let db: Database<'static, Bytes, Bytes> = unsafe { std::mem::transmute(db) };
        let syncer = (mode == Mode::Buffered).then(|| {
            let env = env.clone();
            Syncer::start("lmdb", move || {
                let _ = env.force_sync();
            })
        });
        Ok(LmdbStore {
            _syncer: syncer,
            env,
            db,
        })
    }
}

impl Kv for LmdbStore {
    fn get(&self, user_id: &str, campaign_key: &str) -> Res<Option<CampaignUserMap>> {
        let rtxn = self.env.read_txn()?;
        with_key(user_id, campaign_key, |key| {
            self.db
                .get(&rtxn, key)?
                .map(|v| decode_value(user_id, campaign_key, v))
                .transpose()
        })
    }

    fn set(&self, map: &CampaignUserMap) -> Res<()> {
        self.set_many(std::slice::from_ref(map))
    }

    fn set_many(&self, maps: &[CampaignUserMap]) -> Res<()> {
        let mut wtxn = self.env.write_txn()?;
        for m in maps {
            let key = encode_key(&m.user_id, &m.campaign_key);
            self.db.put(&mut wtxn, &key, &encode_value(m))?;
        }
        wtxn.commit()?;
        Ok(())
    }

    fn campaigns_of(&self, user_id: &str) -> Res<Option<Vec<CampaignUserMap>>> {
        let rtxn = self.env.read_txn()?;
        let prefix = user_prefix(user_id);
        let mut out = Vec::new();
        for entry in self.db.prefix_iter(&rtxn, &prefix)? {
            let (k, v) = entry?;
            out.push(decode_entry(user_id, k, v)?);
        }
        Ok(Some(out))
    }

    fn sync(&self) -> Res<()> {
        Ok(self.env.force_sync()?)
    }
}
