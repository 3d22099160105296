//! Every key of the configuration file, read from the config types themselves: a deserializer
//! that answers each `deserialize_struct` by recording the struct's field names (serde's derive
//! passes them) and descending into each field, so a field added to a config type shows up here
//! without anyone listing it.

use std::cell::RefCell;
use std::collections::BTreeSet;

use serde::de::value::Error;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// The dotted paths of every key `T` reads (`entra.tenants`, `listen.grpc_tls.cert_file`, …).
pub fn key_paths<'de, T: serde::Deserialize<'de>>() -> Result<BTreeSet<String>, Error> {
    let found = RefCell::new(BTreeSet::new());
    T::deserialize(Recorder {
        path: "",
        found: &found,
    })?;
    Ok(found.into_inner())
}

#[derive(Clone, Copy)]
struct Recorder<'a> {
    path: &'a str,
    found: &'a RefCell<BTreeSet<String>>,
}

/// A value that every string-like type of the config accepts (`SocketAddr` included).
const TEXT: &str = "127.0.0.1:1";

macro_rules! primitive {
    ($($method:ident => $visit:ident($value:expr)),* $(,)?) => {
        $(fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            v.$visit($value)
        })*
    };
}

impl<'de> Deserializer<'de> for Recorder<'_> {
    type Error = Error;

    primitive! {
        deserialize_any => visit_str(TEXT),
        deserialize_bool => visit_bool(false),
        deserialize_i8 => visit_i64(1),
        deserialize_i16 => visit_i64(1),
        deserialize_i32 => visit_i64(1),
        deserialize_i64 => visit_i64(1),
        deserialize_u8 => visit_u64(1),
        deserialize_u16 => visit_u64(1),
        deserialize_u32 => visit_u64(1),
        deserialize_u64 => visit_u64(1),
        deserialize_f32 => visit_f64(1.0),
        deserialize_f64 => visit_f64(1.0),
        deserialize_char => visit_char('x'),
        deserialize_str => visit_str(TEXT),
        deserialize_string => visit_str(TEXT),
        deserialize_identifier => visit_str(TEXT),
        deserialize_bytes => visit_bytes(b"x"),
        deserialize_byte_buf => visit_bytes(b"x"),
    }

    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_unit()
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_unit()
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_some(self)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_seq(One(Some(self)))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, v: V) -> Result<V::Value, Error> {
        self.deserialize_seq(v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        v: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(v)
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_map(Fields {
            fields: &[],
            at: self,
            next: 0,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_map(Fields {
            fields,
            at: self,
            next: 0,
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        let first = variants
            .first()
            .ok_or_else(|| de::Error::custom("an enum without variants"))?;
        v.visit_enum(de::value::StrDeserializer::<Error>::new(first))
    }
}

/// A sequence of one element, so that the element type is visited too.
struct One<'a>(Option<Recorder<'a>>);

impl<'de> SeqAccess<'de> for One<'_> {
    type Error = Error;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        self.0.take().map(|r| seed.deserialize(r)).transpose()
    }
}

/// A struct's fields, each recorded and then visited under its own path.
struct Fields<'a> {
    fields: &'static [&'static str],
    at: Recorder<'a>,
    next: usize,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some(name) = self.fields.get(self.next) else {
            return Ok(None);
        };
        seed.deserialize(de::value::StrDeserializer::<Error>::new(name))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let name = self.fields[self.next];
        self.next += 1;
        let path = if self.at.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.at.path)
        };
        self.at.found.borrow_mut().insert(path.clone());
        seed.deserialize(Recorder {
            path: &path,
            found: self.at.found,
        })
    }
}

/// The dotted paths of the keys a YAML file names, live or commented out: `key:` at its
/// indentation, or `# key:` where the `#` stands at the indentation of its siblings and the
/// spaces after `# ` indent it further (`#   cert_file:` under `# grpc_tls:`). Prose comments
/// (capitalised, or without a `key:` at their start) name nothing.
pub fn documented_paths(yaml: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    for line in yaml.lines() {
        let lead = line.len() - line.trim_start().len();
        let rest = line.trim_start();
        let (indent, text) = match rest.strip_prefix('#') {
            Some(after) => {
                let Some(after) = after.strip_prefix(' ') else {
                    continue;
                };
                let extra = after.len() - after.trim_start().len();
                (lead + extra, after.trim_start())
            }
            None => (lead, rest),
        };
        // A list item's keys stand where its first one does, after the "- ".
        let (indent, text) = match text.strip_prefix("- ") {
            Some(item) => (indent + 2, item),
            None => (indent, text),
        };
        let Some((key, _)) = text.split_once(':') else {
            continue;
        };
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            continue;
        }
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        let path = match stack.last() {
            Some((_, parent)) => format!("{parent}.{key}"),
            None => key.to_owned(),
        };
        found.insert(path.clone());
        stack.push((indent, path));
    }
    found
}
