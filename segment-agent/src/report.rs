//! Counters per segment, from counters per (source identity, destination
//! identity) pair. A packet counts once for every segment it touches, as
//! source or destination: a drop from `tag:web` to `tag:web` is one drop of
//! `tag:web`, not two. Pure code: no kernel access.

use std::collections::{BTreeMap, BTreeSet};

use segment_common::{IDENTITY_WORLD, PAIR_OVERFLOW, PairCounters, PairKey, TrafficCounters};
use serde::Serialize;

/// Name used for addresses that belong to no segment.
pub const WORLD: &str = "world";
/// Name used for traffic counted after the pair counter map filled up.
pub const OVERFLOW: &str = "(unattributed)";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub allowed_packets: u64,
    pub allowed_bytes: u64,
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
    pub would_drop_packets: u64,
    pub would_drop_bytes: u64,
}

impl Counters {
    fn add(&mut self, t: &TrafficCounters) {
        self.allowed_packets += t.allowed_packets;
        self.allowed_bytes += t.allowed_bytes;
        self.dropped_packets += t.dropped_packets;
        self.dropped_bytes += t.dropped_bytes;
        self.would_drop_packets += t.would_drop_packets;
        self.would_drop_bytes += t.would_drop_bytes;
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SegmentStats {
    pub name: String,
    pub kind: String,
    /// Every packet with this segment at either end, both hooks.
    #[serde(flatten)]
    pub total: Counters,
    /// Judged by the XDP program (incoming).
    pub ingress: Counters,
    /// Judged by the TC program (outgoing).
    pub egress: Counters,
    /// Packets sent from the segment.
    pub as_source: Counters,
    /// Packets sent to the segment.
    pub as_destination: Counters,
}

/// Sums pair counters per segment. `segments_of` names the segments of a
/// counter identity; `kind_of` says what a segment reference is.
pub fn per_segment(
    pairs: &[(PairKey, PairCounters)],
    segments_of: impl Fn(u32) -> Vec<String>,
    kind_of: impl Fn(&str) -> String,
) -> Vec<SegmentStats> {
    let names = |id: u32| -> Vec<String> {
        match id {
            IDENTITY_WORLD => vec![WORLD.to_owned()],
            PAIR_OVERFLOW => vec![OVERFLOW.to_owned()],
            id => {
                let s = segments_of(id);
                if s.is_empty() {
                    vec![format!("identity:{id}")]
                } else {
                    s
                }
            }
        }
    };
    let mut out: BTreeMap<String, SegmentStats> = BTreeMap::new();
    fn entry<'a>(
        out: &'a mut BTreeMap<String, SegmentStats>,
        kind_of: &impl Fn(&str) -> String,
        name: &str,
    ) -> &'a mut SegmentStats {
        out.entry(name.to_owned()).or_insert_with(|| SegmentStats {
            name: name.to_owned(),
            kind: match name {
                WORLD => "world".to_owned(),
                OVERFLOW => "overflow".to_owned(),
                n => kind_of(n),
            },
            ..SegmentStats::default()
        })
    }
    for (key, c) in pairs {
        let src = names(key.src_id);
        let dst = names(key.dst_id);
        let touched: BTreeSet<&String> = src.iter().chain(dst.iter()).collect();
        for name in touched {
            let s = entry(&mut out, &kind_of, name);
            for (h, t) in c.hooks.iter().enumerate() {
                s.total.add(t);
                if h == 0 {
                    s.ingress.add(t);
                } else {
                    s.egress.add(t);
                }
            }
        }
        for name in &src {
            let s = entry(&mut out, &kind_of, name);
            for t in &c.hooks {
                s.as_source.add(t);
            }
        }
        for name in &dst {
            let s = entry(&mut out, &kind_of, name);
            for t in &c.hooks {
                s.as_destination.add(t);
            }
        }
    }
    out.into_values().collect()
}

/// What kind of segment a reference names.
pub fn kind_of_reference(reference: &str, known: &[(String, String)]) -> String {
    if let Some((_, k)) = known.iter().find(|(r, _)| r == reference) {
        return k.clone();
    }
    if reference.starts_with("tag:") {
        "tag".to_owned()
    } else if reference.starts_with("group:") {
        "group".to_owned()
    } else {
        "segment".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drops(n: u64) -> PairCounters {
        let mut c = PairCounters::default();
        c.hooks[0].dropped_packets = n;
        c.hooks[0].dropped_bytes = n * 100;
        c
    }

    fn seg(id: u32) -> Vec<String> {
        match id {
            1 => vec!["tag:web".into()],
            2 => vec!["db".into(), "tag:db".into()],
            3 => vec!["tag:web".into(), "alice".into()],
            _ => vec![],
        }
    }

    #[test]
    fn a_packet_counts_once_per_segment() {
        let pairs = vec![
            (
                PairKey {
                    src_id: 1,
                    dst_id: 2,
                },
                drops(5),
            ),
            // Both ends in tag:web: still 7, not 14.
            (
                PairKey {
                    src_id: 3,
                    dst_id: 1,
                },
                drops(7),
            ),
            (
                PairKey {
                    src_id: 0,
                    dst_id: 2,
                },
                drops(2),
            ),
        ];
        let stats = per_segment(&pairs, seg, |r| kind_of_reference(r, &[]));
        let get = |n: &str| stats.iter().find(|s| s.name == n).unwrap();
        assert_eq!(get("tag:web").total.dropped_packets, 12);
        assert_eq!(get("tag:web").as_source.dropped_packets, 12);
        assert_eq!(get("tag:web").as_destination.dropped_packets, 7);
        assert_eq!(get("tag:db").total.dropped_packets, 7);
        assert_eq!(get("db").as_destination.dropped_packets, 7);
        assert_eq!(get("alice").total.dropped_packets, 7);
        assert_eq!(get(WORLD).total.dropped_packets, 2);
        assert_eq!(get(WORLD).kind, "world");
        assert_eq!(get("tag:web").ingress.dropped_bytes, 1200);
        assert_eq!(get("tag:web").egress.dropped_bytes, 0);
    }
}
