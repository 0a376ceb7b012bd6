//! The in-memory limit: std's HashMap behind an RwLock, holding the same encoded keys and values
//! as the peers, so a get pays the same decode into an owned map.

use crate::codec::{decode_value, encode_key, encode_value, with_key};
use crate::{CampaignUserMap, Kv, Res};
use std::collections::HashMap;
use std::sync::RwLock;

type Bytes = Box<[u8]>;

#[derive(Default)]
pub struct HashMapStore {
    map: RwLock<HashMap<Bytes, Bytes>>,
}

impl Kv for HashMapStore {
    fn get(&self, user_id: &str, campaign_key: &str) -> Res<Option<CampaignUserMap>> {
        with_key(user_id, campaign_key, |key| {
            let map = self.map.read().map_err(|_| "poisoned")?;
            map.get(key)
                .map(|v| decode_value(user_id, campaign_key, v))
                .transpose()
        })
    }

    fn set(&self, m: &CampaignUserMap) -> Res<()> {
        let key = encode_key(&m.user_id, &m.campaign_key).into_boxed_slice();
        let value = encode_value(m).into_boxed_slice();
        self.map.write().map_err(|_| "poisoned")?.insert(key, value);
        Ok(())
    }

    fn campaigns_of(&self, _user_id: &str) -> Res<Option<Vec<CampaignUserMap>>> {
        Ok(None)
    }

    fn sync(&self) -> Res<()> {
        Ok(())
    }
}
