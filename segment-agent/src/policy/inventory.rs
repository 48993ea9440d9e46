//! What the agent knows about the devices of a tailnet: their addresses, who
//! owns them and which tags they claim. A policy is compiled *with* an
//! inventory (see [`super::parse_with`]): tags claimed by devices are granted
//! as `tagOwners` allows, and a device's addresses join its owner's user.

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Inventory {
    #[serde(default)]
    pub devices: Vec<Device>,
    #[serde(default)]
    pub users: Vec<InventoryUser>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Device {
    pub name: String,
    pub addresses: Vec<std::net::IpAddr>,
    /// Login of the user who owns the device (None for tagged servers and enrolled hosts).
    #[serde(default)]
    pub owner: Option<String>,
    /// Tags the device claims, written `tag:NAME`; granted only as `tagOwners` allows.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Where the record came from, for `explain` and `fleet status` (e.g. `inv.yaml:12:5`, `enrolled (store revision 42)`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub origin: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InventoryUser {
    pub login: String,
    #[serde(default)]
    pub roles: Vec<String>,
}

impl Inventory {
    /// Reads an inventory file: YAML, or JSON/HuJSON (by extension or by a
    /// leading `{`). Each device's `origin` is set to `FILE:LINE:COLUMN` of
    /// its record unless the file gives one.
    pub fn load(path: &std::path::Path) -> Result<Self, super::PolicyError> {
        let text = super::read_text(path)?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// Parses inventory text; `name` is used in messages and origins.
    pub fn parse(name: &str, text: &str) -> Result<Self, super::PolicyError> {
        use super::{Diagnostic, PolicyError, Pos, Source, hujson, tailscale};
        let source = Source::new(name, text);
        let fail = |d: Diagnostic| PolicyError::new(source.clone(), vec![d]);
        let mut inv: Inventory;
        let mut places: Vec<Option<Pos>> = Vec::new();
        match tailscale::detect(name, text) {
            tailscale::Format::Tailscale => {
                let root = hujson::parse(text).map_err(fail)?;
                inv = serde_json::from_value(hujson::to_json(&root)).map_err(|e| {
                    fail(
                        Diagnostic::error(Some(root.pos), format!("not an inventory: {e}")).help(
                            "an inventory is {\"devices\": [{\"name\": ..., \"addresses\": [...], \"owner\": ..., \"tags\": [...]}], \"users\": [{\"login\": ..., \"roles\": [...]}]}",
                        ),
                    )
                })?;
                if let Some(hujson::Value::Array(devs)) = root.get("devices").map(|d| &d.value) {
                    places = devs.iter().map(|d| Some(d.pos)).collect();
                }
            }
            tailscale::Format::Yaml => {
                #[derive(serde::Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Raw {
                    #[serde(default)]
                    devices: Vec<serde_saphyr::Spanned<Device>>,
                    #[serde(default)]
                    users: Vec<InventoryUser>,
                }
                let raw: Raw = if text.trim().is_empty() {
                    Raw {
                        devices: Vec::new(),
                        users: Vec::new(),
                    }
                } else {
                    serde_saphyr::from_str(text).map_err(|e| {
                        let pos = e.location().and_then(|l| Pos::from_location(&l));
                        fail(
                            Diagnostic::error(pos, e.without_snippet().to_string()).help(
                                "an inventory has `devices:` (name, addresses, owner, tags) and `users:` (login, roles)",
                            ),
                        )
                    })?
                };
                places = raw
                    .devices
                    .iter()
                    .map(|d| Pos::from_location(&d.referenced))
                    .collect();
                inv = Inventory {
                    devices: raw.devices.into_iter().map(|d| d.value).collect(),
                    users: raw.users,
                };
            }
        }
        for (d, pos) in inv.devices.iter_mut().zip(places) {
            if d.origin.is_empty()
                && let Some(p) = pos
            {
                d.origin = format!("{name}:{}:{}", p.line, p.column);
            }
        }
        Ok(inv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_and_json_inventories_with_origins() {
        let y = Inventory::parse(
            "inv.yaml",
            "devices:\n  - name: a\n    addresses: [10.0.0.1]\n    owner: alice\n    tags: [tag:web]\nusers:\n  - {login: alice, roles: [admin]}\n",
        )
        .unwrap();
        assert_eq!(y.devices[0].origin, "inv.yaml:2:5");
        assert_eq!(y.devices[0].tags, ["tag:web"]);
        assert_eq!(y.users[0].roles, ["admin"]);
        let j = Inventory::parse(
            "inv.json",
            "{\"devices\": [\n {\"name\": \"a\", \"addresses\": [\"10.0.0.1\"], \"origin\": \"store\"},\n {\"name\": \"b\", \"addresses\": [\"::1\"]},\n]}",
        )
        .unwrap();
        assert_eq!(j.devices[0].origin, "store");
        assert_eq!(j.devices[1].origin, "inv.json:3:2");
        let e =
            Inventory::parse("inv.yaml", "devices:\n  - name: a\n    adresses: []\n").unwrap_err();
        assert!(e.to_string().contains("inv.yaml:3"), "{e}");
        let e = Inventory::parse("inv.json", "{\"devices\": [{\"name\": 1}]}").unwrap_err();
        assert!(e.to_string().contains("not an inventory"), "{e}");
    }
}
