//! The store's hash seed: two secret 64-bit SipHash keys kept in the file `SEED`, so that the index hash of a key
//! is the same in every process that opens the store. That lets hint files carry index hashes instead of keys
//! (`docs/DESIGN.md`, "Hint files"); the seed stays secret to clients, so they still cannot choose ids that pile
//! into one run of the index.
//!
//! The seed is never data: losing or damaging the file loses nothing but the hints made with it. A missing or
//! unreadable-as-a-seed file is therefore replaced by a fresh seed (with a warning for a damaged one), and every
//! hint file names the seed it was made with ([`Seed::identity`]), so hints of another seed are ignored and
//! rewritten instead of being applied with the wrong hashes.
//!
//! ## Format (32 bytes, little-endian; see `docs/FORMAT.md`)
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `USSDBKEY` |
//! | 8 | 4 | seed format version, [`SEED_VERSION`] |
//! | 12 | 8 | SipHash key k0 |
//! | 20 | 8 | SipHash key k1 |
//! | 28 | 4 | crc32 of bytes 0..28 |

#![expect(
    clippy::indexing_slicing,
    reason = "SipHash works on fixed-size arrays indexed by constants"
)]

use std::hash::{BuildHasher, RandomState};
use std::io::ErrorKind;
use std::path::Path;

use crate::dir;
use crate::vfs::Vfs;
use crate::{Error, Result};

/// Name of the seed file in a store directory.
pub(crate) const SEED_FILE: &str = "SEED";
/// Magic number at the start of the seed file.
pub(crate) const SEED_MAGIC: [u8; 8] = *b"USSDBKEY";
/// The seed format version this build writes and reads.
pub(crate) const SEED_VERSION: u32 = 1;
/// Size of the seed file in bytes.
pub(crate) const SEED_LEN: usize = 32;

/// The two SipHash keys of a store.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seed {
    k0: u64,
    k1: u64,
}

impl std::fmt::Debug for Seed {
    // The keys are the secret that keeps clients from aiming ids at one run of the index: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Seed({:#018x})", self.identity())
    }
}

impl Seed {
    /// A seed from explicit keys (tests).
    #[cfg(test)]
    pub(crate) fn from_keys(k0: u64, k1: u64) -> Seed {
        Seed { k0, k1 }
    }

    /// A fresh random seed. `RandomState` is keyed from the operating system's random source once per process
    /// and then varies per instance, and the clock and the process id keep two fresh seeds of one process apart.
    pub(crate) fn random() -> Seed {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let salt = (nanos, std::process::id());
        Seed {
            k0: RandomState::new().hash_one(salt),
            k1: RandomState::new().hash_one(salt),
        }
    }

    /// SipHash-1-3 of `bytes` under this seed.
    pub(crate) fn hash(&self, bytes: &[u8]) -> u64 {
        siphash13(self.k0, self.k1, bytes)
    }

    /// A name for this seed that does not reveal it: what hint files record to say which seed made their hashes.
    pub(crate) fn identity(&self) -> u64 {
        self.hash(b"ussdb seed identity")
    }

    /// The file's bytes.
    pub(crate) fn encode(&self) -> [u8; SEED_LEN] {
        let mut out = [0u8; SEED_LEN];
        out[..8].copy_from_slice(&SEED_MAGIC);
        out[8..12].copy_from_slice(&SEED_VERSION.to_le_bytes());
        out[12..20].copy_from_slice(&self.k0.to_le_bytes());
        out[20..28].copy_from_slice(&self.k1.to_le_bytes());
        let crc = crc32fast::hash(&out[..28]);
        out[28..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a seed file; the error says what is wrong with it.
    pub(crate) fn decode(bytes: &[u8]) -> std::result::Result<Seed, String> {
        if bytes.len() != SEED_LEN {
            return Err(format!("{} bytes, a seed file has {SEED_LEN}", bytes.len()));
        }
        if bytes[..8] != SEED_MAGIC {
            return Err("wrong magic number".into());
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let stored = u32::from_le_bytes([bytes[28], bytes[29], bytes[30], bytes[31]]);
        let computed = crc32fast::hash(&bytes[..28]);
        if stored != computed {
            return Err(format!(
                "checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
            ));
        }
        let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if version != SEED_VERSION {
            return Err(format!(
                "seed format version {version}, this build reads {SEED_VERSION}"
            ));
        }
        Ok(Seed {
            k0: u64_at(12),
            k1: u64_at(20),
        })
    }
}

/// The construction of the key hash, part of [`KeyHasher::identity`]. The first hashed the user id and the item
/// with a SipHash pass each, and its identity was the seed's alone; 2 hashes the user id only and folds the item
/// in with [`item_bits`].
const KEY_HASH_VERSION: u64 = 2;

/// The low bits of a key hash that come from the item (campaign key); the rest come from the user id.
pub(crate) const USER_SHIFT: u32 = 24;

/// Hashes keys for the index: SipHash keyed with the store's secret seed (`seed.rs`), so a client cannot choose
/// ids that pile up in one run of the table, while the hashes stay the same across processes (hint files carry
/// them instead of keys).
#[derive(Debug, Clone)]
pub(crate) struct KeyHasher {
    seed: Seed,
    weak: bool,
}

impl KeyHasher {
    /// A hasher keyed with `seed`; `weak` makes nearly all keys collide, for tests of the collision paths.
    pub(crate) fn new(seed: Seed, weak: bool) -> KeyHasher {
        KeyHasher { seed, weak }
    }

    /// Names the hash function (seed and mode) without revealing the seed: a hint file made under another one
    /// holds other hashes and must not be used.
    pub(crate) fn identity(&self) -> u64 {
        // The weak mode hashes differently from its seed, so it gets an identity of its own; so does each
        // construction of the key hash (`KEY_HASH_VERSION`): hints of an older one are scanned and made again.
        let mode = if self.weak { 0x5745_414b_5745_414b } else { 0 };
        self.seed.identity() ^ mode ^ KEY_HASH_VERSION.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    /// The index hash of a key: a user id and an item of that user (a campaign key's bytes). One SipHash pass,
    /// over the user id: its upper 40 bits are the user part, and the whole 64-bit output keys the item's few
    /// bits ([`item_bits`]).
    pub(crate) fn hash(&self, user_id: &[u8], item: &[u8]) -> u64 {
        self.key_hash(self.user_hash(user_id), item)
    }

    /// The first half of [`KeyHasher::hash`]: the user id's SipHash pass, which alone places a key in the index.
    /// A get of a user the index does not hold (a first visit) needs nothing more; [`KeyHasher::key_hash`]
    /// finishes the hash of one of the user's keys.
    pub(crate) fn user_hash(&self, user_id: &[u8]) -> UserHash {
        if self.weak {
            let part = weak_bit(user_id);
            return UserHash {
                sip: part,
                prefix: part << USER_SHIFT,
            };
        }
        let sip = self.seed.hash(user_id);
        UserHash {
            sip,
            prefix: user_prefix(sip),
        }
    }

    /// The hash of the key of `item` of the user of `user` (the second half of [`KeyHasher::hash`]).
    pub(crate) fn key_hash(&self, user: UserHash, item: &[u8]) -> u64 {
        if self.weak {
            return user.prefix | weak_bit(item);
        }
        user.prefix | item_bits(user.sip, item)
    }

    /// The hash bits shared by all keys of one user (the upper 40 bits of [`KeyHasher::hash`], shifted down).
    pub(crate) fn user_part(&self, user_id: &[u8]) -> u64 {
        self.user_hash(user_id).prefix >> USER_SHIFT
    }
}

/// The bits of a key hash that come from the user id ([`UserHash::prefix`] of its user).
pub(crate) fn user_prefix(hash: u64) -> u64 {
    (hash >> USER_SHIFT) << USER_SHIFT
}

/// A user id's hash ([`KeyHasher::user_hash`]): what all the user's key hashes share, and the key to their item
/// bits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct UserHash {
    /// The user id's whole SipHash (the weak hasher's user part).
    sip: u64,
    /// The bits every key hash of the user shares, the item's bits zero.
    pub(crate) prefix: u64,
}

/// The weak hasher's part of a user id or item: its first byte's lowest bit.
fn weak_bit(bytes: &[u8]) -> u64 {
    u64::from(bytes.first().copied().unwrap_or(0) & 1)
}

/// The low [`USER_SHIFT`] bits of a key hash: the item's bytes folded by 128-bit multiplies keyed with `user`, the
/// user id's whole SipHash under the store's secret seed. They only have to tell apart the items of one user (the
/// user part already placed the key), and a client that cannot know `user` cannot choose items that share them;
/// items are campaign and feature keys, which the application chooses anyway. This is what lets a key cost one
/// SipHash pass instead of two (`docs/DESIGN.md`, "The index").
fn item_bits(user: u64, item: &[u8]) -> u64 {
    // Constants from the digits of pi. The keyed multipliers are made odd, so none is zero whatever the key.
    const P0: u64 = 0x243f_6a88_85a3_08d3;
    const P1: u64 = 0x1319_8a2e_0370_7345;
    let key = user.rotate_left(USER_SHIFT);
    let (word_mul, tail_mul) = ((key ^ P1) | 1, (key ^ P0) | 1);
    let mut h = user ^ (item.len() as u64).wrapping_mul(P0);
    let mut words = item.chunks_exact(8);
    for word in &mut words {
        h = fold_mul(h ^ le_u64(word), word_mul);
    }
    h = fold_mul(h ^ le_tail(words.remainder()), tail_mul);
    fold_mul(h, P1) & ((1 << USER_SHIFT) - 1)
}

/// The product of `a` and `b` as 128 bits, its halves XORed: every output bit depends on every input bit.
fn fold_mul(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

/// Eight bytes as a little-endian word.
fn le_u64(word: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(word);
    u64::from_le_bytes(b)
}

/// Up to seven bytes as a little-endian word, zero above them. Two overlapping loads (or three single bytes)
/// instead of a copy into a buffer, which compiles to a call of `memcpy` for a slice of unknown length.
fn le_tail(tail: &[u8]) -> u64 {
    let n = tail.len();
    if n >= 4 {
        // Bytes 0..4 and n-4..n; the bytes both cover are the same, so OR puts each in its place once.
        let low = u32_at(tail, 0);
        let high = u32_at(tail, n - 4);
        low | (high << (8 * (n - 4)))
    } else if n > 0 {
        // Bytes 0, n/2 and n-1 cover every position of a 1..3-byte tail.
        let byte = |i: usize| u64::from(tail[i]) << (8 * i);
        byte(0) | byte(n / 2) | byte(n - 1)
    } else {
        0
    }
}

/// Four bytes of `bytes` at `at` as a little-endian word.
fn u32_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u64::from(u32::from_le_bytes(b))
}

/// The seed of the store in `dir`: read from its seed file, or made and written durably (`SEED.tmp`, fsync,
/// rename, directory fsync) when the file is missing or is not a sound seed file. Called with the directory lock
/// held, before anything is read with the seed, so no hint can ever be written with a seed that is not durable.
pub(crate) fn load_or_create(vfs: &dyn Vfs, dir: &Path) -> Result<Seed> {
    let path = dir.join(SEED_FILE);
    match read(vfs, dir)? {
        Ok(seed) => return Ok(seed),
        Err(None) => {}
        // Only hints depend on the seed, and each names its seed: a new seed costs a scan, never data.
        Err(Some(reason)) => log::warn!(
            "{}: {reason}; making a new hash seed (hint files of the old one will be ignored)",
            path.display()
        ),
    }
    let seed = Seed::random();
    dir::write_durably(vfs, dir, SEED_FILE, &seed.encode(), "write seed file")?;
    Ok(seed)
}

/// Reads the seed of the store in `dir` without making one: the inner error is `None` if there is no seed file,
/// else what is wrong with it. An error reading an existing file is the outer error.
pub(crate) fn read(vfs: &dyn Vfs, dir: &Path) -> Result<std::result::Result<Seed, Option<String>>> {
    let path = dir.join(SEED_FILE);
    match vfs.open(&path) {
        Ok(file) => {
            let mut bytes = [0u8; SEED_LEN + 1];
            let got = file
                .read_at(&mut bytes, 0)
                .map_err(|e| Error::io("read seed file", &path, e))?;
            Ok(Seed::decode(&bytes[..got]).map_err(Some))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Err(None)),
        Err(e) => Err(Error::io("open seed file", &path, e)),
    }
}

/// SipHash-1-3 (one compression round per 8-byte word, three finalization rounds), the variant std's `HashMap`
/// uses; written out because std offers no keyed constructor for it.
fn siphash13(k0: u64, k1: u64, bytes: &[u8]) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let m = le_u64(word);
        v[3] ^= m;
        sip_round(&mut v);
        v[0] ^= m;
    }
    let m = le_tail(words.remainder()) | ((bytes.len() as u64 & 0xff) << 56);
    v[3] ^= m;
    sip_round(&mut v);
    v[0] ^= m;
    v[2] ^= 0xff;
    for _ in 0..3 {
        sip_round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

#[inline(always)]
fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13);
    v[1] ^= v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17);
    v[1] ^= v[2];
    v[2] = v[2].rotate_left(32);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SipHash with c compression and d finalization rounds, to check the round structure against std's
    /// SipHash-2-4 (the only keyed SipHash std exposes).
    #[allow(deprecated)]
    fn std_siphash24(k0: u64, k1: u64, bytes: &[u8]) -> u64 {
        use std::hash::Hasher;
        let mut h = std::hash::SipHasher::new_with_keys(k0, k1);
        h.write(bytes);
        h.finish()
    }

    fn siphash24(k0: u64, k1: u64, bytes: &[u8]) -> u64 {
        let mut v = [
            k0 ^ 0x736f_6d65_7073_6575,
            k1 ^ 0x646f_7261_6e64_6f6d,
            k0 ^ 0x6c79_6765_6e65_7261,
            k1 ^ 0x7465_6462_7974_6573,
        ];
        let mut words = bytes.chunks_exact(8);
        let absorb = |v: &mut [u64; 4], m: u64| {
            v[3] ^= m;
            sip_round(v);
            sip_round(v);
            v[0] ^= m;
        };
        for word in &mut words {
            absorb(
                &mut v,
                u64::from_le_bytes(word.try_into().expect("8 bytes")),
            );
        }
        let mut last = [0u8; 8];
        last[..words.remainder().len()].copy_from_slice(words.remainder());
        absorb(
            &mut v,
            u64::from_le_bytes(last) | ((bytes.len() as u64 & 0xff) << 56),
        );
        v[2] ^= 0xff;
        for _ in 0..4 {
            sip_round(&mut v);
        }
        v[0] ^ v[1] ^ v[2] ^ v[3]
    }

    #[test]
    fn the_sip_rounds_match_std_siphash_2_4() {
        let data: Vec<u8> = (0..64u8).collect();
        for len in 0..data.len() {
            for (k0, k1) in [
                (0, 0),
                (0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908),
                (7, u64::MAX),
            ] {
                assert_eq!(
                    siphash24(k0, k1, &data[..len]),
                    std_siphash24(k0, k1, &data[..len])
                );
            }
        }
        // SipHash-1-3 itself, against CPython's (`PYTHONHASHSEED=0` keys it with zeros; `hash(b"...")`).
        assert_eq!(siphash13(0, 0, b"abc"), 0xc03b_c3a0_0426_30f2);
        assert_eq!(
            siphash13(0, 0, b"user-1234567890abcdef"),
            0x8db8_489a_69fc_88c8
        );
        assert_eq!(siphash13(0, 0, &data), 0x75e0_5fd5_bbc8_70c6);
        let seed = Seed::from_keys(1, 2);
        assert_ne!(seed.hash(b"a"), Seed::from_keys(1, 3).hash(b"a"));
        assert_ne!(seed.hash(b"a"), seed.hash(b"b"));
    }

    #[test]
    fn a_seed_round_trips_and_every_flip_or_cut_is_refused() {
        let seed = Seed::from_keys(0x1122_3344_5566_7788, 42);
        let bytes = seed.encode();
        assert_eq!(&bytes[..8], b"USSDBKEY");
        assert_eq!(Seed::decode(&bytes), Ok(seed));
        for cut in 0..bytes.len() {
            assert!(Seed::decode(&bytes[..cut]).is_err());
        }
        for byte in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes;
                bad[byte] ^= 1 << bit;
                assert!(Seed::decode(&bad).is_err(), "bit {bit} of byte {byte}");
            }
        }
        assert!(!format!("{seed:?}").contains("1122334455667788"));
    }

    #[test]
    fn a_tail_loads_as_its_bytes_zero_padded() {
        let bytes = [0x11u8, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77];
        for n in 0..=bytes.len() {
            let mut padded = [0u8; 8];
            padded[..n].copy_from_slice(&bytes[..n]);
            assert_eq!(
                le_tail(&bytes[..n]),
                u64::from_le_bytes(padded),
                "{n} bytes"
            );
        }
    }

    #[test]
    fn item_bits_tell_one_users_items_apart_and_differ_between_users() {
        let hasher = KeyHasher::new(Seed::from_keys(5, 8), false);
        let mask = (1u64 << USER_SHIFT) - 1;
        // 4,000 campaign keys of one user: by chance, two of 2^24 values would be shared about 0.5 times.
        let items: Vec<String> = (0..4_000).map(|i| format!("campaign-{i}")).collect();
        let bits = |user: &str| -> Vec<u64> {
            items
                .iter()
                .map(|item| hasher.hash(user.as_bytes(), item.as_bytes()) & mask)
                .collect()
        };
        let alice = bits("alice");
        let distinct: std::collections::HashSet<u64> = alice.iter().copied().collect();
        assert!(
            alice.len() - distinct.len() <= 3,
            "{} shared",
            alice.len() - distinct.len()
        );
        // The same items under another user: other bits (keyed by the user's SipHash), and its user part.
        let bob = bits("bob");
        let same = alice.iter().zip(&bob).filter(|(a, b)| a == b).count();
        assert!(same <= 2, "{same} items kept their bits");
        let (a, b) = (hasher.hash(b"alice", b"c"), hasher.hash(b"bob", b"c"));
        assert_eq!(a >> USER_SHIFT, hasher.user_part(b"alice"));
        assert_eq!(b >> USER_SHIFT, hasher.user_part(b"bob"));
        // Every length of item, across the word boundary, and items that differ only in their length.
        let lengths: std::collections::HashSet<u64> = (0..40)
            .map(|n| hasher.hash(b"alice", &vec![0u8; n]) & mask)
            .collect();
        assert_eq!(lengths.len(), 40);
        // Frozen (docs/FORMAT.md): hint files carry these hashes.
        let frozen = KeyHasher::new(Seed::from_keys(1, 2), false);
        assert_eq!(frozen.hash(b"user-1", b"campaign"), 0xc45d_6ad4_8d23_28fa);
        assert_eq!(
            frozen.hash(b"user-1234567890abcdef", b""),
            0x9086_c35b_daeb_2e96
        );
        assert_eq!(frozen.identity(), 0x1615_a40c_ab95_5a69);
        // The construction is part of the identity, so hints of the first one (two SipHash passes) are not used.
        let seed = Seed::from_keys(5, 8);
        assert_ne!(hasher.identity(), seed.identity());
    }

    #[test]
    fn random_seeds_differ() {
        assert_ne!(Seed::random(), Seed::random());
    }
}
