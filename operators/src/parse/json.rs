//! JSON objects, flattened to dotted field names (`Event.System.EventID`) while serde_json
//! parses them: no intermediate `serde_json::Value`, and strings without escapes are
//! referenced in the payload rather than copied. Arrays of scalars become repeated fields
//! (a multi-valued field); objects inside arrays are flattened under the array's name.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use ward_engine::batch::Value;

use super::writer::FieldWriter;

/// Longest dotted field name (`a.b.c`) a record may produce.
pub const MAX_FIELD_NAME_BYTES: usize = 4096;

/// Parses one JSON object into `w`. Errors carry serde_json's message (line and column).
pub fn parse_json(text: &str, w: &mut FieldWriter<'_>) -> Result<(), String> {
    let mut path = std::mem::take(&mut w.path);
    path.clear();
    let mut de = serde_json::Deserializer::from_str(text);
    let result = Root { w, path: &mut path }.deserialize(&mut de).map_err(|e| e.to_string());
    w.path = path;
    result?;
    de.end().map_err(|e| e.to_string())
}

struct Root<'p, 'w, 'a> {
    w: &'w mut FieldWriter<'a>,
    path: &'p mut String,
}

impl<'de> DeserializeSeed<'de> for Root<'_, '_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(ObjectVisitor { w: self.w, path: self.path })
    }
}

struct ObjectVisitor<'p, 'w, 'a> {
    w: &'w mut FieldWriter<'a>,
    path: &'p mut String,
}

impl<'de> Visitor<'de> for ObjectVisitor<'_, '_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let base = self.path.len();
        while let Some(key) = map.next_key::<KeyText<'de>>()? {
            if base > 0 {
                self.path.push('.');
            }
            let borrowed_top_level = base == 0 && matches!(key, KeyText::Borrowed(_));
            self.path.push_str(key.as_str());
            // Every leaf copies its dotted name: bounding the name keeps a record of long
            // nested keys with many leaves linear instead of quadratic.
            if self.path.len() > MAX_FIELD_NAME_BYTES {
                return Err(serde::de::Error::custom(format_args!(
                    "field name longer than {MAX_FIELD_NAME_BYTES} bytes"
                )));
            }
            map.next_value_seed(ValueSeed {
                w: self.w,
                path: self.path,
                key_in_payload: borrowed_top_level.then_some(key),
            })?;
            self.path.truncate(base);
        }
        Ok(())
    }
}

/// A key as serde_json gives it: borrowed from the payload when it has no escapes.
enum KeyText<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl KeyText<'_> {
    fn as_str(&self) -> &str {
        match self {
            KeyText::Borrowed(s) => s,
            KeyText::Owned(s) => s,
        }
    }
}

impl<'de> serde::Deserialize<'de> for KeyText<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyText<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(KeyText::Borrowed(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(KeyText::Owned(v.to_owned()))
            }
        }
        d.deserialize_str(V)
    }
}

struct ValueSeed<'p, 'w, 'a, 'de> {
    w: &'w mut FieldWriter<'a>,
    path: &'p mut String,
    /// For top-level keys without escapes: the key is referenced in the payload.
    key_in_payload: Option<KeyText<'de>>,
}

impl<'de> ValueSeed<'_, '_, '_, 'de> {
    fn put(self, v: Value) {
        match self.key_in_payload {
            Some(KeyText::Borrowed(k)) => {
                let key = self.w.key(k);
                self.w.put_keyed(key, v)
            }
            _ => self.w.put(self.path, v),
        }
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_, '_, '_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_, '_, '_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.put(Value::Bool(v));
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.put(Value::Int(v));
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        // Above i64::MAX: the exact digits as text, not a float that drops the last ones.
        let value = match i64::try_from(v) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::Str(self.w.heap_str(itoa::Buffer::new().format(v))),
        };
        self.put(value);
        Ok(())
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.put(Value::Float(v));
        Ok(())
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<(), E> {
        let r = self.w.text(v);
        self.put(Value::Str(r));
        Ok(())
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        let r = self.w.heap_str(v);
        self.put(Value::Str(r));
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.put(Value::Null);
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        self.put(Value::Null);
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        ObjectVisitor { w: self.w, path: self.path }.visit_map(map)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        // Each element is written under the array's own name.
        while seq.next_element_seed(ValueSeed { w: self.w, path: self.path, key_in_payload: None })?.is_some() {}
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::writer::FieldWriter;
    use super::*;
    use ward_engine::batch::{EventBatch, Key};

    fn parse(text: &str) -> Result<serde_json::Value, String> {
        super::super::tests::parse_with(text, parse_json)
    }

    #[test]
    fn flattens_nested_objects_and_arrays() {
        let j = parse(r#"{"Event":{"System":{"EventID":4625,"Computer":"dc1"},"EventData":{"TargetUserName":"bob"}},"tags":["a","b"],"n":null,"f":1.5,"ok":true}"#).unwrap();
        assert_eq!(j["Event.System.EventID"], 4625);
        assert_eq!(j["Event.System.Computer"], "dc1");
        assert_eq!(j["Event.EventData.TargetUserName"], "bob");
        assert_eq!(j["tags"], serde_json::json!(["a", "b"]));
        assert_eq!(j["n"], serde_json::Value::Null);
        assert_eq!(j["f"], 1.5);
        assert_eq!(j["ok"], true);
    }

    #[test]
    fn overlong_dotted_names_are_refused() {
        let key = "k".repeat(3000);
        let nested = format!(r#"{{"{key}":{{"{key}":1}}}}"#);
        assert!(parse(&nested).unwrap_err().contains("field name longer than 4096"));
        assert!(parse(&format!(r#"{{"{key}":{{"b":1}}}}"#)).is_ok());
    }

    #[test]
    fn integers_above_i64_stay_exact() {
        let j = parse(r#"{"big":12345678901234567891,"max":18446744073709551615,"neg":-9223372036854775808}"#).unwrap();
        assert_eq!(j["big"], "12345678901234567891");
        assert_eq!(j["max"], "18446744073709551615");
        assert_eq!(j["neg"], i64::MIN);
    }

    #[test]
    fn unescapes_strings_into_the_heap() {
        let j = parse(r#"{"cmd":"C:\\Windows\\cmd.exe /c \"x\"","k\u0041":"\u00e9"}"#).unwrap();
        assert_eq!(j["cmd"], "C:\\Windows\\cmd.exe /c \"x\"");
        assert_eq!(j["kA"], "é");
    }

    #[test]
    fn top_level_plain_keys_and_values_borrow_the_payload() {
        let mut b = EventBatch::new();
        let o = b.origin_index(&"s".into(), &"p".into());
        b.push_raw(o, 1, br#"{"user":"alice"}"#).expect("small test records fit");
        let heap_before = b.heap().mark();
        let parts = b.parts();
        let text = std::str::from_utf8(parts.raw.as_bytes()).unwrap();
        let mut w = FieldWriter::new(parts.raw, parts.heap, parts.slots);
        w.begin();
        parse_json(text, &mut w).unwrap();
        assert_eq!(format!("{:?}", w.heap.mark()), format!("{heap_before:?}"), "nothing copied to the heap");
        assert!(matches!(w.slots[0].key, Key::Ext(_)));
    }

    #[test]
    fn rejects_bad_json_and_non_objects() {
        assert!(parse(r#"{"a":"#).unwrap_err().contains("EOF"));
        assert!(parse(r#"[1,2]"#).is_err());
        assert!(parse(r#"{"a":1} trailing"#).is_err());
        assert!(parse("\"just a string\"").is_err());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = "{\"a\":".repeat(1000) + "1" + &"}".repeat(1000);
        assert!(parse(&deep).unwrap_err().contains("recursion"));
    }
}
