use crate::{CampaignUserMap, Kv, Mode, Res, SYNC_PERIOD};
use std::path::Path;
use ussdb::{Durability, Options, Store};

pub struct UssdbStore {
    store: Store,
}

impl UssdbStore {
    pub fn open(dir: &Path, mode: Mode) -> Res<UssdbStore> {
        let durability = match mode {
            Mode::Buffered => Durability::Periodic(SYNC_PERIOD),
            Mode::Durable => Durability::Immediate,
        };
        let mut options = Options::default().durability(durability);
        // For experiments only (the tables use the default): smaller segments put more of the
        // data in sealed, memory-mapped segments.
        if let Some(bytes) = std::env::var("USSDB_SEGMENT_SIZE")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            options = options.segment_size(bytes);
        }
        let store = Store::open_with(dir, options)?;
        Ok(UssdbStore { store })
    }
}

impl Kv for UssdbStore {
    fn get(&self, user_id: &str, campaign_key: &str) -> Res<Option<CampaignUserMap>> {
        Ok(self.store.get(user_id, campaign_key)?)
    }

    fn set(&self, map: &CampaignUserMap) -> Res<()> {
        Ok(self.store.set(map)?)
    }

    fn campaigns_of(&self, user_id: &str) -> Res<Option<Vec<CampaignUserMap>>> {
        Ok(Some(self.store.campaigns_of(user_id)?))
    }

    fn sync(&self) -> Res<()> {
        Ok(self.store.sync()?)
    }
}
