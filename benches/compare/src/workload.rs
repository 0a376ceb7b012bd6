//! The data every store is measured on, shaped like an SDK's: users with ids of 8–64 bytes, each
//! bucketed into a few campaigns whose keys are also 8–64 bytes, a short variation name, and
//! goals joined by `_vwo_` once the user converts.

use crate::{CampaignUserMap, Kv, Res};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Every stored user is in this many campaigns, so `campaigns_of` returns this many maps.
pub const CAMPAIGNS_PER_USER: usize = 4;
const CAMPAIGN_POOL: usize = 64;
const ALNUM: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
const VARIATIONS: [&str; 4] = ["Control", "Variation-1", "Variation-2", "Variation-3"];
const GOALS: [&str; 6] = [
    "purchase",
    "signup",
    "add_to_cart",
    "newsletter",
    "checkout_started",
    "page_view_pricing",
];

/// Prefill in chunks this big; peers with transactions commit once per chunk.
pub const PREFILL_CHUNK: usize = 10_000;

pub struct Workload {
    /// What the store is filled with, in random user order.
    pub stored: Vec<CampaignUserMap>,
    /// The distinct users of `stored`.
    pub users: Vec<String>,
    /// Keys that are not in the store: a new visitor, the commonest miss for an SDK.
    pub missing: Vec<(String, String)>,
    /// Goal-append rewrites of stored mappings.
    pub overwrites: Vec<CampaignUserMap>,
    campaigns: Vec<String>,
    seed: u64,
}

impl Workload {
    /// `n` stored mappings (rounded down to whole users), and up to `side` missing keys and
    /// overwrites.
    pub fn new(n: usize, side: usize, seed: u64) -> Workload {
        let mut rng = SmallRng::seed_from_u64(seed);
        let campaigns: Vec<String> = (0..CAMPAIGN_POOL)
            .map(|i| random_id(&mut rng, i as u64, 8))
            .collect();
        let user_count = (n / CAMPAIGNS_PER_USER).max(1);
        let users: Vec<String> = (0..user_count)
            .map(|i| random_id(&mut rng, i as u64, 8))
            .collect();
        let mut stored = Vec::with_capacity(user_count * CAMPAIGNS_PER_USER);
        for (u, user) in users.iter().enumerate() {
            for j in 0..CAMPAIGNS_PER_USER {
                stored.push(CampaignUserMap {
                    user_id: user.clone(),
                    campaign_key: campaigns[user_campaign(u, j)].clone(),
                    variation_name: VARIATIONS[rng.random_range(0..VARIATIONS.len())].to_owned(),
                    goal_identifier: rng.random_bool(0.3).then(|| random_goals(&mut rng, 1)),
                });
            }
        }
        let side = side.min(stored.len());
        // Ids of missing users start past every stored index, so they cannot collide.
        let missing = (0..side)
            .map(|i| {
                let user = random_id(&mut rng, (user_count + i) as u64, 8);
                let campaign = campaigns[rng.random_range(0..CAMPAIGN_POOL)].clone();
                (user, campaign)
            })
            .collect();
        let overwrites = (0..side)
            .map(|_| {
                let mut m = stored[rng.random_range(0..stored.len())].clone();
                m.goal_identifier = Some(random_goals(&mut rng, 2));
                m
            })
            .collect();
        Workload {
            stored,
            users,
            missing,
            overwrites,
            campaigns,
            seed,
        }
    }

    /// New mappings, none of them stored nor among `missing`: `stream` picks a disjoint id range
    /// so that several writers never collide.
    pub fn fresh(&self, stream: usize, count: usize) -> Vec<CampaignUserMap> {
        let mut rng = SmallRng::seed_from_u64(self.seed ^ ((stream as u64 + 1) * 0x9e37_79b9));
        // Past the stored and missing users; each stream gets its own block of 2^32 ids.
        let base = (1u64 << 40) + ((stream as u64) << 32);
        (0..count)
            .map(|i| CampaignUserMap {
                user_id: random_id(&mut rng, base + i as u64, 12),
                campaign_key: self.campaigns[rng.random_range(0..CAMPAIGN_POOL)].clone(),
                variation_name: VARIATIONS[rng.random_range(0..VARIATIONS.len())].to_owned(),
                goal_identifier: None,
            })
            .collect()
    }

    /// Fills `store` with `stored`.
    pub fn prefill(&self, store: &dyn Kv) -> Res<()> {
        for chunk in self.stored.chunks(PREFILL_CHUNK) {
            store.set_many(chunk)?;
        }
        Ok(())
    }
}

fn user_campaign(user: usize, j: usize) -> usize {
    // 13·j mod 64 is distinct for j < 4, so a user's campaigns are distinct.
    (user * 7 + j * 13) % CAMPAIGN_POOL
}

/// A random alphanumeric id of 8–64 bytes that ends in `index` as fixed-width hex: unique per
/// index, and the random head spreads keys over an ordered store as real ids would.
fn random_id(rng: &mut SmallRng, index: u64, suffix_len: usize) -> String {
    let len = rng.random_range(8..=64usize).max(suffix_len);
    let mut id: String = (0..len - suffix_len)
        .map(|_| ALNUM[rng.random_range(0..ALNUM.len())] as char)
        .collect();
    id.push_str(&format!("{index:0suffix_len$x}"));
    id
}

fn random_goals(rng: &mut SmallRng, count: usize) -> String {
    (0..count)
        .map(|_| GOALS[rng.random_range(0..GOALS.len())])
        .collect::<Vec<_>>()
        .join("_vwo_")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn keys_are_distinct_and_sized_like_real_ids() {
        let w = Workload::new(4_000, 500, 7);
        let stored: HashSet<_> = w
            .stored
            .iter()
            .map(|m| (m.user_id.clone(), m.campaign_key.clone()))
            .collect();
        assert_eq!(stored.len(), w.stored.len());
        assert!(w.missing.iter().all(|k| !stored.contains(k)));
        let fresh = w.fresh(0, 500);
        let other = w.fresh(1, 500);
        for m in fresh.iter().chain(&other) {
            assert!(!stored.contains(&(m.user_id.clone(), m.campaign_key.clone())));
        }
        assert!(w.stored.iter().all(
            |m| (8..=64).contains(&m.user_id.len()) && (8..=64).contains(&m.campaign_key.len())
        ));
    }
}
