//! The run's bookkeeping per resource id: 128-bit keys and a map from them that stays compact
//! and grows in small steps.
//!
//! An ingest remembers every id it writes (to replace a row when the id comes again) and every
//! id of the previous snapshot it touches. An 837 whose claims each bring a new member and
//! provider adds four such ids per claim, so the map's size per entry and its growth decide the
//! run's memory. [`KeyMap`] keeps entries at their own size (a [`Key`] is two `u64`s, not a
//! 16-byte-aligned `u128`), hashes nothing (a key already is a hash), and splits itself into
//! [`SHARDS`] tables: growing one moves a few hundred KiB, never the whole map, so there is no
//! moment with the old and the new table of a million-entry map both alive, and the freed
//! tables are small enough for the allocator to reuse.
//!
//! The shards are not equally likely. A hash table doubles when it is 7/8 full, so equal shards
//! would all double at the same moment, and right after it a map would take twice the memory
//! per key it took just before (an 837 of 1.89 million claims crossed that line: +210 MiB in
//! its last two seconds). Shard `i` takes a share of the keys proportional to `2^(i/256)`, so
//! their sizes span a factor of two and they double one after another: whatever the number of
//! keys, the shards' fill is spread evenly between 7/16 and 7/8 and a key costs about 40
//! bytes, never the 57 of a map just doubled.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

/// The key of an id: 128 bits of XXH3 (a collision needs about 2^64 ids), stored as two
/// `u64`s so that it needs 8-byte alignment only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Key {
    lo: u64,
    hi: u64,
}

impl Key {
    /// The key of `id`.
    pub(super) fn of(id: &str) -> Self {
        Self::from(twox_hash::XxHash3_128::oneshot(id.as_bytes()))
    }

    /// The key from its low and high halves.
    pub(super) fn from_halves(lo: u64, hi: u64) -> Self {
        Self { lo, hi }
    }

    /// The low and high halves.
    pub(super) fn halves(self) -> (u64, u64) {
        (self.lo, self.hi)
    }

    /// 32 bits of the key: enough to check that a row holds the id it is meant to (a wrong
    /// row passes once in 2^32), in a quarter of the memory.
    pub(super) fn fingerprint(self) -> u32 {
        self.lo as u32
    }

    /// The key as one number: the order of sorted runs.
    pub(super) fn ordinal(self) -> u128 {
        (u128::from(self.hi) << 64) | u128::from(self.lo)
    }

    fn shard(self) -> usize {
        usize::from(shard_of()[(self.hi >> 48) as usize])
    }
}

impl From<u128> for Key {
    fn from(v: u128) -> Self {
        Self {
            lo: v as u64,
            hi: (v >> 64) as u64,
        }
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already uniform: the table's hash is the low half (the shard comes from the high).
        state.write_u64(self.lo);
    }
}

/// A hasher that passes a [`Key`]'s low half through.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `Key` is hashed here, through `write_u64`; anything else is hashed for real.
        self.0 = twox_hash::XxHash3_64::oneshot(bytes);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// How many tables a [`KeyMap`] is split into.
const SHARDS: usize = 256;

/// The shard of each value of a key's top 16 bits: shard `i` gets a run of values whose
/// length is proportional to `2^(i/SHARDS)`.
fn shard_of() -> &'static [u8; 1 << 16] {
    static TABLE: std::sync::OnceLock<Box<[u8; 1 << 16]>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let weight = |i: usize| (i as f64 / SHARDS as f64).exp2();
        let total: f64 = (0..SHARDS).map(weight).sum();
        let mut table = Box::new([0u8; 1 << 16]);
        let mut upto = 0.0;
        let mut start = 0;
        for i in 0..SHARDS {
            upto += weight(i);
            let end = if i + 1 == SHARDS {
                table.len()
            } else {
                ((upto / total) * table.len() as f64).round() as usize
            };
            table[start..end].fill(i as u8);
            start = end;
        }
        table
    })
}

type Shard<V> = HashMap<Key, V, BuildHasherDefault<PassThrough>>;

/// A map from [`Key`]s, split into [`SHARDS`] tables by the key's top bits.
pub(super) struct KeyMap<V> {
    shards: Vec<Shard<V>>,
    len: usize,
}

impl<V> Default for KeyMap<V> {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            len: 0,
        }
    }
}

impl<V> KeyMap<V> {
    /// The value of `k`.
    pub(super) fn get(&self, k: &Key) -> Option<&V> {
        self.shards[k.shard()].get(k)
    }

    /// Whether `k` is in the map.
    pub(super) fn contains_key(&self, k: &Key) -> bool {
        self.shards[k.shard()].contains_key(k)
    }

    /// Set the value of `k`; returns the value it had.
    pub(super) fn insert(&mut self, k: Key, v: V) -> Option<V> {
        let old = self.shards[k.shard()].insert(k, v);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Take `k` out; returns its value.
    pub(super) fn remove(&mut self, k: &Key) -> Option<V> {
        let old = self.shards[k.shard()].remove(k);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// How many keys the map holds.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Whether the map holds no key.
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forget every key (the tables keep their room).
    pub(super) fn clear(&mut self) {
        for s in &mut self.shards {
            s.clear();
        }
        self.len = 0;
    }

    /// Every key and its value, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&Key, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_a_map_across_shards() {
        let mut m = KeyMap::default();
        let ids: Vec<String> = (0..5000).map(|i| format!("Patient/{i}")).collect();
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(m.insert(Key::of(id), i), None);
        }
        assert_eq!(m.len(), 5000);
        assert_eq!(m.insert(Key::of("Patient/7"), 70), Some(7));
        assert_eq!(m.len(), 5000);
        assert_eq!(m.get(&Key::of("Patient/7")), Some(&70));
        assert_eq!(m.get(&Key::of("Patient/4999")), Some(&4999));
        assert!(!m.contains_key(&Key::of("Patient/5000")));
        assert_eq!(m.remove(&Key::of("Patient/3")), Some(3));
        assert_eq!(m.remove(&Key::of("Patient/3")), None);
        assert_eq!(m.len(), 4999);
        assert_eq!(m.iter().count(), 4999);
        assert!(
            m.shards.iter().all(|s| !s.is_empty()),
            "every shard takes keys"
        );
        m.clear();
        assert!(m.is_empty() && m.iter().next().is_none());
    }

    #[test]
    fn shards_span_a_factor_of_two_so_they_grow_one_after_another() {
        let table = shard_of();
        let mut runs = [0usize; SHARDS];
        for &s in table.iter() {
            runs[usize::from(s)] += 1;
        }
        // Each shard's share of the top-16-bit values, smallest first, doubling across.
        assert!(
            runs.windows(2).all(|w| w[0] <= w[1] + 1),
            "shares grow with the shard"
        );
        let (first, last) = (runs[0] as f64, runs[SHARDS - 1] as f64);
        assert!((1.9..2.1).contains(&(last / first)), "{first} .. {last}");
        // Room per key as a million keys arrive. Equal shards reach 2.0 right after they
        // all double (at 256 * 3584 = 917,504 keys); these stay near the average, 1.44.
        let mut m = KeyMap::default();
        let mut worst = 0f64;
        for i in 1..=1_000_000u32 {
            m.insert(Key::of(&i.to_string()), ());
            if i % 25_000 == 0 {
                let room: usize = m.shards.iter().map(|s| s.capacity()).sum();
                worst = worst.max(room as f64 / f64::from(i));
            }
        }
        assert!(worst < 1.7, "room per key reached {worst:.2}");
    }
}
