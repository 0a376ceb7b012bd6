//! TEMPORARY stand-in for the ussdb API until the core lands on main.
#![allow(dead_code)]
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CampaignUserMap {
    pub user_id: String,
    pub campaign_key: String,
    pub variation_name: String,
    pub goal_identifier: Option<String>,
}
pub enum Durability {
    Immediate,
    Periodic(Duration),
    Never,
}
#[derive(Default)]
pub struct Options;
impl Options {
    pub fn durability(self, _d: Durability) -> Self {
        self
    }
}
#[derive(Clone, Default)]
pub struct Store(Arc<Mutex<HashMap<(String, String), CampaignUserMap>>>);
pub type Error = std::io::Error;
impl Store {
    pub fn open_with(_dir: impl AsRef<Path>, _o: Options) -> Result<Store, Error> {
        Ok(Store::default())
    }
    pub fn get(&self, u: &str, c: &str) -> Result<Option<CampaignUserMap>, Error> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .get(&(u.to_owned(), c.to_owned()))
            .cloned())
    }
    pub fn set(&self, m: &CampaignUserMap) -> Result<(), Error> {
        self.0
            .lock()
            .unwrap()
            .insert((m.user_id.clone(), m.campaign_key.clone()), m.clone());
        Ok(())
    }
    pub fn campaigns_of(&self, u: &str) -> Result<Vec<CampaignUserMap>, Error> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .values()
            .filter(|m| m.user_id == u)
            .cloned()
            .collect())
    }
    pub fn sync(&self) -> Result<(), Error> {
        Ok(())
    }
}
