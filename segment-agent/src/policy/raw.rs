//! The policy file as written: YAML deserialized into plain structures that
//! keep every value's position. Nothing is interpreted here; `validate`
//! turns this into the checked model.
//!
//! serde-saphyr does the YAML: it reports syntax errors with line and column,
//! rejects duplicate keys, and its `Spanned<T>` carries each value's place.
//! [`Spanned`] here keeps only the part of that place the validator uses, so
//! that the fast reader ([`super::fast_yaml`]) can build the same values.

use std::{fmt, marker::PhantomData};

use serde::{
    Deserialize, Deserializer,
    de::{self, MapAccess, SeqAccess, Visitor},
};

/// Where a value was written: 1-based line and column (in characters), its
/// length in characters, and its byte offset. Line 0: unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub line: u32,
    pub column: u32,
    pub len: u32,
    pub byte: Option<u64>,
}

impl Place {
    fn of(loc: &serde_saphyr::Location) -> Self {
        Self {
            line: u32::try_from(loc.line()).unwrap_or(u32::MAX),
            column: u32::try_from(loc.column()).unwrap_or(u32::MAX),
            len: u32::try_from(loc.span().len()).unwrap_or(u32::MAX),
            byte: loc.span().byte_offset(),
        }
    }
}

/// A value and where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spanned<T> {
    pub value: T,
    pub at: Place,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = serde_saphyr::Spanned::<T>::deserialize(d)?;
        Ok(Self {
            value: s.value,
            at: Place::of(&s.referenced),
        })
    }
}

/// Top-level keys, for "did you mean".
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "hosts",
    "users",
    "groups",
    "tags",
    "tagOwners",
    "acls",
    "failsafe",
    "tests",
    "enforce",
    "mode",
    "modes",
];

#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    #[serde(default)]
    pub hosts: Entries<Spanned<Text>, Spanned<Text>>,
    #[serde(default)]
    pub users: Entries<Spanned<Text>, Spanned<OneOrMany>>,
    #[serde(default)]
    pub groups: Entries<Spanned<Text>, Spanned<OneOrMany>>,
    #[serde(default)]
    pub tags: Entries<Spanned<Text>, Spanned<OneOrMany>>,
    /// `tag:NAME` → who may apply the tag to an inventory device.
    #[serde(default, rename = "tagOwners")]
    pub tag_owners: Entries<Spanned<Text>, Spanned<OneOrMany>>,
    #[serde(default)]
    pub acls: Vec<Spanned<RawRule>>,
    #[serde(default)]
    pub failsafe: Vec<Spanned<RawRule>>,
    #[serde(default)]
    pub tests: Vec<Spanned<RawTest>>,
    #[serde(default)]
    pub enforce: Option<Spanned<RawEnforce>>,
    #[serde(default)]
    pub mode: Option<Spanned<Text>>,
    #[serde(default)]
    pub modes: Entries<Spanned<Text>, Spanned<Text>>,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    #[serde(default)]
    pub action: Option<Spanned<Text>>,
    pub src: Spanned<OneOrMany>,
    pub dst: Spanned<OneOrMany>,
    #[serde(default)]
    pub proto: Option<Spanned<OneOrMany>>,
    /// A label shown in `explain`, `stats` and logs.
    #[serde(default)]
    pub name: Option<Spanned<Text>>,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTest {
    pub src: Spanned<Text>,
    #[serde(default)]
    pub accept: Option<Spanned<OneOrMany>>,
    #[serde(default)]
    pub deny: Option<Spanned<OneOrMany>>,
    #[serde(default)]
    pub proto: Option<Spanned<Text>>,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnforce {
    #[serde(default)]
    pub ingress: Option<Spanned<bool>>,
    #[serde(default)]
    pub egress: Option<Spanned<bool>>,
}

/// A scalar read as text, whether YAML typed it as a string or a number
/// (`5432`, `139`), so that ports and names are handled in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text(pub String);

impl Text {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a single value (a name, address or number)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text, E> {
                Ok(Text(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// One scalar or a list of scalars: `src: alice` and `src: [alice, bob]`.
#[derive(Debug, PartialEq)]
pub enum OneOrMany {
    One(Text),
    Many(Vec<Spanned<Text>>),
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value or a list of values")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(Text(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(Text(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(Text(v.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(Text(v.to_string())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(Text(v.to_string())))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<Text>>()? {
                    items.push(item);
                }
                Ok(OneOrMany::Many(items))
            }
        }
        d.deserialize_any(V)
    }
}

/// A YAML mapping kept in file order, with each key's position. (Duplicate
/// keys are rejected by the YAML layer.)
#[derive(Debug, PartialEq)]
pub struct Entries<K, V>(pub Vec<(K, V)>);

impl<K, V> Default for Entries<K, V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for Entries<K, V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V2<K, V>(PhantomData<(K, V)>);
        impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Visitor<'de> for V2<K, V> {
            type Value = Entries<K, V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping of names to values")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Entries(Vec::new()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        d.deserialize_map(V2(PhantomData))
    }
}
