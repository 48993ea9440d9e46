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

use std::{collections::BTreeMap, sync::Arc};

use crate::policy::{self, Device, Inventory, Policy, PolicyError};

use super::{
    records::{Enrollment, PolicyDocument, Stored, sha256_hex},
    watch::FleetView,
};

/// The inventory and its hash, kept while the view's enrollments are the
/// same map (views share it until an enrollment changes) and no
/// enrollment expires: a publish to a thousand agents recomputes nothing.
#[derive(Debug, Default)]
pub struct MembershipMemo {
    hosts: Option<Arc<BTreeMap<String, Stored<Enrollment>>>>,
    valid_until: Option<u64>,
    inventory: Arc<Inventory>,
    hash: String,
}

impl MembershipMemo {
    pub fn get(&mut self, view: &FleetView, now: u64) -> (Arc<Inventory>, String) {
        let same = self
            .hosts
            .as_ref()
            .is_some_and(|h| Arc::ptr_eq(h, &view.hosts));
        if !(same && self.valid_until.is_none_or(|u| now < u)) {
            let inv = inventory(view, now);
            self.hash = membership_hash(&inv);
            self.inventory = Arc::new(inv);
            self.hosts = Some(view.hosts.clone());
            self.valid_until = next_expiry(view, now);
        }
        (self.inventory.clone(), self.hash.clone())
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
        Arc::make_mut(&mut view.hosts)
            .insert("a".into(), host("a", "10.0.0.1", &["tag:web"], 1000, 5));
        Arc::make_mut(&mut view.hosts)
            .insert("b".into(), host("b", "10.0.0.2", &["tag:db"], 950, 6));
        let inv = inventory(&view, 1000);
        assert_eq!(inv.devices.len(), 2);
        let h = membership_hash(&inv);
        // A refresh (new revision, new refreshed_at) keeps the membership.
        Arc::make_mut(&mut view.hosts)
            .insert("a".into(), host("a", "10.0.0.1", &["tag:web"], 1010, 9));
        assert_eq!(membership_hash(&inventory(&view, 1010)), h);
        assert_eq!(next_expiry(&view, 1010), Some(1050));
        // b expires at 1050.
        let later = inventory(&view, 1050);
        assert_eq!(later.devices.len(), 1);
        assert_ne!(membership_hash(&later), h);
        // An address change changes it.
        Arc::make_mut(&mut view.hosts)
            .insert("a".into(), host("a", "10.0.0.9", &["tag:web"], 1010, 10));
        assert_ne!(membership_hash(&inventory(&view, 1010)), h);
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
