//! redb. Buffered = `Durability::None` commits plus a background empty `Immediate` commit (redb
//! only reclaims pages at durable commits, so without it the file would grow without bound);
//! durable = `Durability::Immediate`, redb's default.

use super::Syncer;
use crate::codec::{decode_entry, decode_value, encode_key, encode_value, user_prefix, with_key};
use crate::{CampaignUserMap, Kv, Mode, Res};
use redb::{Database, Durability, ReadableDatabase, TableDefinition};
use std::path::Path;
use std::sync::Arc;

const MAPS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("maps");

pub struct RedbStore {
    _syncer: Option<Syncer>,
    db: Arc<Database>,
    durability: Durability,
}

impl RedbStore {
    pub fn open(dir: &Path, mode: Mode) -> Res<RedbStore> {
        std::fs::create_dir_all(dir)?;
        let db = Arc::new(Database::create(dir.join("maps.redb"))?);
        let txn = db.begin_write()?;
        txn.open_table(MAPS)?;
        txn.commit()?;
        let durability = match mode {
            Mode::Buffered => Durability::None,
            Mode::Durable => Durability::Immediate,
        };
        let syncer = (mode == Mode::Buffered).then(|| {
            let db = Arc::clone(&db);
            Syncer::start("redb", move || {
                let _ = durable_commit(&db);
            })
        });
        Ok(RedbStore {
            _syncer: syncer,
            db,
            durability,
        })
    }
}

fn durable_commit(db: &Database) -> Res<()> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    txn.commit()?;
    Ok(())
}

impl Kv for RedbStore {
    fn get(&self, user_id: &str, campaign_key: &str) -> Res<Option<CampaignUserMap>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(MAPS)?;
        with_key(user_id, campaign_key, |key| {
            table
                .get(key)?
                .map(|v| decode_value(user_id, campaign_key, v.value()))
                .transpose()
        })
    }

    fn set(&self, map: &CampaignUserMap) -> Res<()> {
        self.set_many(std::slice::from_ref(map))
    }

    fn set_many(&self, maps: &[CampaignUserMap]) -> Res<()> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(self.durability)?;
        {
            let mut table = txn.open_table(MAPS)?;
            for m in maps {
                let key = encode_key(&m.user_id, &m.campaign_key);
                table.insert(key.as_slice(), encode_value(m).as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn campaigns_of(&self, user_id: &str) -> Res<Option<Vec<CampaignUserMap>>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(MAPS)?;
        let prefix = user_prefix(user_id);
        let mut out = Vec::new();
        for entry in table.range::<&[u8]>(prefix.as_slice()..)? {
            let (k, v) = entry?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            out.push(decode_entry(user_id, k.value(), v.value())?);
        }
        Ok(Some(out))
    }

    fn sync(&self) -> Res<()> {
        durable_commit(&self.db)
    }
}
