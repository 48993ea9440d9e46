//! From a view of the store to what an agent enforces.
//!
//! Every enrolled host whose enrollment has not expired becomes an
//! inventory [`Device`] (its claimed tags included); the policy's
//! `tagOwners` decides, inside [`policy::parse_with`], which claims are
//! granted. Each agent does this itself, so a host cannot join a tag by
//! claiming it, whatever it writes in its own record.
//!
//! What an agent must enforce is identified by [`Desired::input_hash`]: the
//! hash of the policy text and of the membership (names, addresses and
//! claimed tags of the unexpired hosts). A refresh of an enrollment, or a
//! view re-read after compaction, changes neither, and costs nothing.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use crate::policy::{self, Device, Inventory, Policy, PolicyError};

use super::{
    records::{PolicyDocument, Stored, sha256_hex},
    watch::{FleetView, Hosts},
};

/// The membership of one set of enrollments, as of a span of time in
/// which no enrollment of it expires.
#[derive(Debug)]
pub struct Membership {
    hosts_revision: i64,
    /// Unix seconds `[from, until)`: the expiry of every enrollment lies
    /// outside it, so the same hosts are unexpired throughout (a clock set
    /// back leaves it as surely as one moving on).
    from: u64,
    until: Option<u64>,
    inventory: Arc<Inventory>,
    hash: String,
}

impl Membership {
    fn of(view: &FleetView, now: u64) -> Self {
        let inventory = inventory(view, now);
        let hash = membership_hash(&inventory);
        let from = view
            .hosts
            .values()
            .map(|h| h.value.expires_at())
            .filter(|&t| t <= now)
            .max()
            .unwrap_or(0);
        Self {
            hosts_revision: view.hosts_revision,
            from,
            until: next_expiry(view, now),
            inventory: Arc::new(inventory),
            hash,
        }
    }

    fn current(&self, now: u64) -> bool {
        now >= self.from && self.until.is_none_or(|u| now < u)
    }
}

/// Memberships by `hosts_revision`, shared by agents of one process that
/// follow the same store (the convergence benchmark's simulated agents:
/// each would compute the same membership from the same enrollments).
/// Keyed by revision because their views are distinct copies; views of
/// one store with the same `hosts_revision` hold the same enrollments.
/// Holds the newest [`MEMBERSHIP_CACHE_ENTRIES`].
pub type MembershipCache = Arc<Mutex<BTreeMap<i64, Arc<Membership>>>>;

pub const MEMBERSHIP_CACHE_ENTRIES: usize = 16;

/// The inventory and its hash, kept while the view's enrollments are the
/// same map (views share it until an enrollment changes) and no
/// enrollment expires: a publish to a thousand agents recomputes nothing.
#[derive(Debug, Default)]
pub struct MembershipMemo {
    last: Option<(Arc<Hosts>, Arc<Membership>)>,
    shared: Option<MembershipCache>,
}

impl MembershipMemo {
    /// A memo that also looks in, and adds to, `cache`.
    pub fn shared(cache: MembershipCache) -> Self {
        Self {
            last: None,
            shared: Some(cache),
        }
    }

    pub fn get(&mut self, view: &FleetView, now: u64) -> (Arc<Inventory>, String) {
        let kept = self
            .last
            .as_ref()
            .filter(|(hosts, m)| Arc::ptr_eq(hosts, &view.hosts) && m.current(now))
            .map(|(_, m)| m.clone());
        let m = match kept {
            Some(m) => m,
            None => {
                let m = self.lookup(view, now).unwrap_or_else(|| {
                    let m = Arc::new(Membership::of(view, now));
                    self.remember(&m);
                    m
                });
                self.last = Some((view.hosts.clone(), m.clone()));
                m
            }
        };
        (m.inventory.clone(), m.hash.clone())
    }

    fn lookup(&self, view: &FleetView, now: u64) -> Option<Arc<Membership>> {
        let cache = self.shared.as_ref()?.lock().ok()?;
        cache
            .get(&view.hosts_revision)
            .filter(|m| m.current(now))
            .cloned()
    }

    fn remember(&self, m: &Arc<Membership>) {
        let Some(mut cache) = self.shared.as_ref().and_then(|c| c.lock().ok()) else {
            return;
        };
        cache.insert(m.hosts_revision, m.clone());
        while cache.len() > MEMBERSHIP_CACHE_ENTRIES {
            cache.pop_first();
        }
    }
}

/// The unexpired enrollments as an inventory, sorted by name.
pub fn inventory(view: &FleetView, now: u64) -> Inventory {
    let devices = view
        .hosts
        .values()
        .filter(|h| !h.value.expired(now))
        .map(|h| {
            let mut addresses = h.value.addresses.clone();
            addresses.sort();
            addresses.dedup();
            let mut tags = h.value.tags.clone();
            tags.sort();
            tags.dedup();
            Device {
                name: h.value.name.clone(),
                addresses,
                owner: None,
                tags,
                origin: format!("enrolled (store revision {})", h.mod_revision),
            }
        })
        .collect();
    Inventory {
        devices,
        users: Vec::new(),
    }
}

/// Hash of what in an inventory decides membership (not `origin`).
pub fn membership_hash(inv: &Inventory) -> String {
    let canon: Vec<_> = inv
        .devices
        .iter()
        .map(|d| (&d.name, &d.addresses, &d.owner, &d.tags))
        .collect();
    sha256_hex(&serde_json::to_vec(&canon).unwrap_or_default())
}

/// The earliest time (unix seconds) after `now` at which an enrollment of
/// the view expires: membership changes then without any store event.
pub fn next_expiry(view: &FleetView, now: u64) -> Option<u64> {
    view.hosts
        .values()
        .map(|h| h.value.expires_at())
        .filter(|&t| t > now)
        .min()
}

/// What the view asks an agent to enforce.
#[derive(Debug, Clone)]
pub struct Desired {
    pub document: Stored<PolicyDocument>,
    pub inventory: Arc<Inventory>,
    pub membership_sha256: String,
    /// Hash of (policy text, membership): equal hashes, equal tables.
    pub input_hash: String,
    pub view_revision: i64,
}

impl Desired {
    /// None when nothing was published yet; Err when the stored document
    /// cannot be used (wrong format, altered text, not a document).
    pub fn from_view(view: &FleetView, now: u64) -> Option<Result<Self, String>> {
        Self::from_view_memo(view, now, &mut MembershipMemo::default())
    }

    /// Like [`Desired::from_view`], reusing `memo`'s membership when the
    /// enrollments did not change.
    pub fn from_view_memo(
        view: &FleetView,
        now: u64,
        memo: &mut MembershipMemo,
    ) -> Option<Result<Self, String>> {
        if let Some(e) = &view.policy_error {
            return Some(Err(format!(
                "the policy document in the store is not valid: {e}"
            )));
        }
        let doc = view.policy.clone()?;
        if let Err(e) = doc.value.check() {
            return Some(Err(e));
        }
        let (inventory, membership_sha256) = memo.get(view, now);
        let input_hash =
            sha256_hex(format!("{}\n{membership_sha256}", doc.value.sha256).as_bytes());
        Some(Ok(Self {
            document: doc,
            inventory,
            membership_sha256,
            input_hash,
            view_revision: view.revision,
        }))
    }

    /// Validates the document with this membership.
    pub fn evaluate(&self) -> Result<Policy, PolicyError> {
        evaluate(&self.document, &self.inventory)
    }
}

/// Validates a stored document with an inventory; messages name the
/// document and its revision (`store@REV:NAME`).
pub fn evaluate(doc: &Stored<PolicyDocument>, inv: &Inventory) -> Result<Policy, PolicyError> {
    // Ends with the published file's name: its extension picks the format.
    let name = format!("store@{}:{}", doc.mod_revision, doc.value.name);
    policy::parse_with(&name, &doc.value.text, inv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::records::Enrollment;

    fn put(view: &mut FleetView, h: Stored<Enrollment>) {
        view.hosts_revision = view.hosts_revision.max(h.mod_revision);
        Arc::make_mut(&mut view.hosts).insert(h.value.name.as_str().into(), Arc::new(h));
    }

    fn host(name: &str, addr: &str, tags: &[&str], refreshed: u64, rev: i64) -> Stored<Enrollment> {
        Stored {
            value: Enrollment {
                name: name.into(),
                addresses: vec![addr.parse().unwrap()],
                tags: tags.iter().map(|t| t.to_string()).collect(),
                enrolled_at: 1,
                refreshed_at: refreshed,
                expires_after_secs: 100,
            },
            mod_revision: rev,
        }
    }

    #[test]
    fn expired_hosts_leave_and_refreshes_do_not_change_the_hash() {
        let mut view = FleetView::default();
        put(&mut view, host("a", "10.0.0.1", &["tag:web"], 1000, 5));
        put(&mut view, host("b", "10.0.0.2", &["tag:db"], 950, 6));
        let inv = inventory(&view, 1000);
        assert_eq!(inv.devices.len(), 2);
        let h = membership_hash(&inv);
        // A refresh (new revision, new refreshed_at) keeps the membership.
        put(&mut view, host("a", "10.0.0.1", &["tag:web"], 1010, 9));
        assert_eq!(membership_hash(&inventory(&view, 1010)), h);
        assert_eq!(next_expiry(&view, 1010), Some(1050));
        // b expires at 1050.
        let later = inventory(&view, 1050);
        assert_eq!(later.devices.len(), 1);
        assert_ne!(membership_hash(&later), h);
        // An address change changes it.
        put(&mut view, host("a", "10.0.0.9", &["tag:web"], 1010, 10));
        assert_ne!(membership_hash(&inventory(&view, 1010)), h);
    }

    #[test]
    fn the_memo_follows_expiry_both_ways_and_the_shared_cache_serves_copies() {
        let mut view = FleetView::default();
        put(&mut view, host("a", "10.0.0.1", &[], 1000, 5));
        put(&mut view, host("b", "10.0.0.2", &[], 950, 6)); // expires at 1050
        let mut memo = MembershipMemo::default();
        assert_eq!(memo.get(&view, 1000).0.devices.len(), 2);
        assert_eq!(memo.get(&view, 1050).0.devices.len(), 1, "b expired");
        // A clock set back: b is unexpired again, and the memo sees it.
        assert_eq!(memo.get(&view, 1049).0.devices.len(), 2);

        // Another agent's copy of the same enrollments (same revision, not
        // the same map) is served from the shared cache.
        let cache = MembershipCache::default();
        let mut first = MembershipMemo::shared(cache.clone());
        let (inv, hash) = first.get(&view, 1000);
        let copy = FleetView {
            hosts: Arc::new((*view.hosts).clone()),
            ..view.clone()
        };
        let mut second = MembershipMemo::shared(cache.clone());
        let (inv2, hash2) = second.get(&copy, 1000);
        assert!(Arc::ptr_eq(&inv, &inv2), "computed once");
        assert_eq!(hash, hash2);
        // Not across an expiry, nor for other enrollments.
        assert_eq!(second.get(&copy, 1050).0.devices.len(), 1);
        let mut other = copy.clone();
        put(&mut other, host("c", "10.0.0.3", &[], 1000, 7));
        assert_eq!(second.get(&other, 1000).0.devices.len(), 3);

        // Bounded: the newest revisions stay.
        for rev in 8..40 {
            put(&mut other, host("c", "10.0.0.3", &[], 1000, rev));
            second.get(&other, 1000);
        }
        let c = cache.lock().unwrap();
        assert_eq!(c.len(), MEMBERSHIP_CACHE_ENTRIES);
        assert_eq!(c.keys().next_back(), Some(&39));
    }

    #[test]
    fn an_altered_document_is_refused() {
        let mut doc = crate::store::records::PolicyDocument::new("p.yaml", "acls: []\n");
        doc.text = "acls: [x]\n".into();
        let view = FleetView {
            policy: Some(Stored {
                value: doc,
                mod_revision: 3,
            }),
            ..FleetView::default()
        };
        assert!(Desired::from_view(&view, 0).unwrap().is_err());
        assert!(Desired::from_view(&FleetView::default(), 0).is_none());
    }
}
