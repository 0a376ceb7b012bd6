//! sled 0.34 (the latest stable; 1.0 is still in alpha). Buffered = sled's own background flush
//! (`flush_every_ms(1000)`); durable = `flush()` after each insert. sled's flush ends in
//! sync_file_range, not fsync, so its "durable" figures are marked as such.

use crate::codec::{decode_entry, decode_value, encode_key, encode_value, user_prefix, with_key};
use crate::{CampaignUserMap, Kv, Mode, Res, SYNC_PERIOD};
use std::path::Path;

pub struct SledStore {
    db: sled::Db,
    mode: Mode,
}

impl SledStore {
    pub fn open(dir: &Path, mode: Mode) -> Res<SledStore> {
        let every = (mode == Mode::Buffered).then(|| SYNC_PERIOD.as_millis() as u64);
        let db = sled::Config::new().path(dir).flush_every_ms(every).open()?;
        Ok(SledStore { db, mode })
    }
}

impl Kv for SledStore {
    fn get(&self, user_id: &str, campaign_key: &str) -> Res<Option<CampaignUserMap>> {
        with_key(user_id, campaign_key, |key| {
            self.db
                .get(key)?
                .map(|v| decode_value(user_id, campaign_key, &v))
                .transpose()
        })
    }

    fn set(&self, m: &CampaignUserMap) -> Res<()> {
        self.db
            .insert(encode_key(&m.user_id, &m.campaign_key), encode_value(m))?;
        if self.mode == Mode::Durable {
            self.db.flush()?;
        }
        Ok(())
    }

    fn campaigns_of(&self, user_id: &str) -> Res<Option<Vec<CampaignUserMap>>> {
        let mut out = Vec::new();
        for entry in self.db.scan_prefix(user_prefix(user_id)) {
            let (k, v) = entry?;
            out.push(decode_entry(user_id, &k, &v)?);
        }
        Ok(Some(out))
    }

    fn sync(&self) -> Res<()> {
        self.db.flush()?;
        Ok(())
    }
}
