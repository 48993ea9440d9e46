//! Addresses as integers, and the set of identity prefixes with the queries
//! the compiler, evaluators and test runner need: longest-prefix match, and
//! the distinct regions (with a sample address each) inside a prefix.
//!
//! An LPM trie returns only the longest matching prefix. The compiler
//! therefore gives every prefix the union of the atoms of itself and all
//! prefixes containing it; each prefix then stands for the region of its
//! addresses not covered by a longer prefix. Those regions partition the
//! address space, and within one region every address belongs to exactly the
//! same segments.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use foldhash::HashMap;
use ipnet::IpNet;

/// A prefix as (family bits, network as u128, length). IPv4 uses the low 32
/// bits, so the ordering sorts networks numerically within a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    /// 32 or 128.
    pub bits: u8,
    pub network: u128,
    pub len: u8,
}

impl Prefix {
    pub fn from_net(n: &IpNet) -> Self {
        match n {
            IpNet::V4(v4) => Self {
                bits: 32,
                network: u32::from(v4.network()) as u128,
                len: v4.prefix_len(),
            },
            IpNet::V6(v6) => Self {
                bits: 128,
                network: u128::from(v6.network()),
                len: v6.prefix_len(),
            },
        }
    }

    pub fn to_net(self) -> IpNet {
        IpNet::new(addr_from(self.bits, self.network), self.len).expect("valid prefix length")
    }

    /// Last address of the prefix.
    pub fn last(&self) -> u128 {
        let host_bits = u32::from(self.bits - self.len);
        if host_bits == 128 {
            u128::MAX
        } else {
            self.network | ((1u128 << host_bits) - 1)
        }
    }

    pub fn contains(&self, other: &Prefix) -> bool {
        self.bits == other.bits
            && self.len <= other.len
            && other.network >= self.network
            && other.network <= self.last()
    }

    pub fn contains_addr(&self, bits: u8, addr: u128) -> bool {
        self.bits == bits && addr >= self.network && addr <= self.last()
    }
}

pub fn addr_bits(a: IpAddr) -> (u8, u128) {
    match a {
        IpAddr::V4(v4) => (32, u32::from(v4) as u128),
        IpAddr::V6(v6) => (128, u128::from(v6)),
    }
}

pub fn addr_from(bits: u8, value: u128) -> IpAddr {
    if bits == 32 {
        IpAddr::V4(Ipv4Addr::from(value as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(value))
    }
}

fn mask(bits: u8, addr: u128, len: u8) -> u128 {
    let host_bits = u32::from(bits - len);
    if host_bits >= 128 {
        0
    } else {
        addr & !((1u128 << host_bits) - 1)
    }
}

/// Prefixes sorted by (family, network, length), each with a value, and an
/// exact-match index for longest-prefix lookups.
#[derive(Debug, Clone)]
pub struct PrefixTable<V> {
    entries: Vec<(Prefix, V)>,
    /// foldhash, not SipHash: the keys are the policy's own, and hashing
    /// them was an eighth of a 10,000-rule compile.
    index: HashMap<Prefix, usize>,
    /// Prefix lengths present, longest first, per family.
    lens_v4: Vec<u8>,
    lens_v6: Vec<u8>,
}

/// A region of the address space with the same value, and one address in it.
#[derive(Debug, Clone, Copy)]
pub struct Region<'a, V> {
    pub value: Option<&'a V>,
    pub sample: IpAddr,
}

impl<V> PrefixTable<V> {
    /// `entries` need not be sorted; duplicates keep the last value.
    pub fn new(mut entries: Vec<(Prefix, V)>) -> Self {
        entries.sort_by_key(|e| e.0);
        entries.dedup_by(|later, earlier| {
            if later.0 == earlier.0 {
                std::mem::swap(later, earlier);
                true
            } else {
                false
            }
        });
        let index = entries
            .iter()
            .enumerate()
            .map(|(i, (p, _))| (*p, i))
            .collect();
        let mut lens_v4: Vec<u8> = entries
            .iter()
            .filter(|(p, _)| p.bits == 32)
            .map(|(p, _)| p.len)
            .collect();
        let mut lens_v6: Vec<u8> = entries
            .iter()
            .filter(|(p, _)| p.bits == 128)
            .map(|(p, _)| p.len)
            .collect();
        for l in [&mut lens_v4, &mut lens_v6] {
            l.sort_unstable_by(|a, b| b.cmp(a));
            l.dedup();
        }
        Self {
            entries,
            index,
            lens_v4,
            lens_v6,
        }
    }

    pub fn entries(&self) -> &[(Prefix, V)] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value of the longest prefix containing the address.
    pub fn lookup(&self, addr: IpAddr) -> Option<&V> {
        let (bits, value) = addr_bits(addr);
        self.lookup_bits(bits, value, bits)
    }

    /// The longest prefix of length at most `max_len` containing the address.
    fn lookup_bits(&self, bits: u8, addr: u128, max_len: u8) -> Option<&V> {
        let lens = if bits == 32 {
            &self.lens_v4
        } else {
            &self.lens_v6
        };
        for &len in lens.iter().filter(|l| **l <= max_len) {
            let p = Prefix {
                bits,
                network: mask(bits, addr, len),
                len,
            };
            if let Some(i) = self.index.get(&p) {
                return Some(&self.entries[*i].1);
            }
        }
        None
    }

    /// Every region of distinct lookup result that intersects `p`, with a
    /// sample address in each. `None` values are addresses no prefix covers.
    pub fn regions_within(&self, p: &Prefix) -> Vec<Region<'_, V>> {
        let mut out = Vec::new();
        let owner = self.lookup_bits(p.bits, p.network, p.len);
        self.regions_rec(p, owner, &mut out);
        out
    }

    fn regions_rec<'a>(&'a self, p: &Prefix, owner: Option<&'a V>, out: &mut Vec<Region<'a, V>>) {
        // Maximal prefixes strictly inside `p`, in address order.
        let start = self.entries.partition_point(|(e, _)| *e <= *p);
        let mut children = Vec::new();
        let mut i = start;
        while i < self.entries.len() {
            let (c, _) = &self.entries[i];
            if c.bits != p.bits || c.network > p.last() {
                break;
            }
            children.push(i);
            let end = c.last();
            i += 1;
            while i < self.entries.len()
                && self.entries[i].0.bits == c.bits
                && self.entries[i].0.network <= end
            {
                i += 1;
            }
        }
        // The first address of `p` no child covers, if any.
        let mut cursor = Some(p.network);
        for &ci in &children {
            let c = &self.entries[ci].0;
            match cursor {
                Some(at) if c.network > at => break,
                Some(_) => cursor = c.last().checked_add(1).filter(|n| *n <= p.last()),
                None => break,
            }
        }
        if let Some(at) = cursor
            && at <= p.last()
        {
            out.push(Region {
                value: owner,
                sample: addr_from(p.bits, at),
            });
        }
        for ci in children {
            let (c, v) = &self.entries[ci];
            self.regions_rec(c, Some(v), out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        Prefix::from_net(&s.parse().unwrap())
    }

    fn table(entries: &[(&str, u32)]) -> PrefixTable<u32> {
        PrefixTable::new(entries.iter().map(|(s, v)| (p(s), *v)).collect())
    }

    #[test]
    fn longest_match_wins() {
        let t = table(&[
            ("10.0.0.0/8", 1),
            ("10.1.0.0/16", 2),
            ("10.1.2.3/32", 3),
            ("fd00::/8", 4),
        ]);
        let l = |s: &str| t.lookup(s.parse().unwrap()).copied();
        assert_eq!(l("10.2.0.1"), Some(1));
        assert_eq!(l("10.1.9.9"), Some(2));
        assert_eq!(l("10.1.2.3"), Some(3));
        assert_eq!(l("11.0.0.1"), None);
        assert_eq!(l("fd12::1"), Some(4));
        assert_eq!(l("fe80::1"), None);
    }

    #[test]
    fn regions_cover_gaps_exactly() {
        let t = table(&[("10.0.0.0/31", 7), ("10.0.0.0/32", 1), ("10.0.0.1/32", 2)]);
        // 10.0.0.0/31 is fully covered by its two children: 7 never shows.
        let vals: Vec<_> = t
            .regions_within(&p("10.0.0.0/31"))
            .iter()
            .map(|r| r.value.copied())
            .collect();
        assert_eq!(vals, [Some(1), Some(2)]);
        // A /30 adds the uncovered .2-.3, which no prefix owns.
        let r = t.regions_within(&p("10.0.0.0/30"));
        let vals: Vec<_> = r
            .iter()
            .map(|r| (r.value.copied(), r.sample.to_string()))
            .collect();
        assert_eq!(
            vals,
            [
                (None, "10.0.0.2".to_owned()),
                (Some(1), "10.0.0.0".to_owned()),
                (Some(2), "10.0.0.1".to_owned())
            ]
        );
    }

    #[test]
    fn regions_inside_a_single_address() {
        let t = table(&[("10.0.0.0/8", 1)]);
        let r = t.regions_within(&p("10.9.9.9/32"));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].value, Some(&1));
        assert_eq!(r[0].sample.to_string(), "10.9.9.9");
    }

    #[test]
    fn regions_of_everything_v6() {
        let t = table(&[("::/0", 9), ("fd00::/8", 1)]);
        let vals: Vec<_> = t
            .regions_within(&p("::/0"))
            .iter()
            .map(|r| r.value.copied())
            .collect();
        assert_eq!(vals, [Some(9), Some(1)]);
    }
}
