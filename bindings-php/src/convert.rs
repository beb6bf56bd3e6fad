//! Values between PHP and the engine: PHP arrays to JSON and back, headers, durations.
//!
//! A PHP list (keys 0..n-1 in order, including the empty array) becomes a JSON array and any
//! other array a JSON object, as `json_encode` does; JSON objects come back as associative
//! arrays and JSON arrays as lists, as `json_decode($body, true)` gives them.

use std::time::Duration;

use ext_php_rs::boxed::ZBox;
use ext_php_rs::ffi::{
    IS_ARRAY, IS_DOUBLE, IS_FALSE, IS_LONG, IS_NULL, IS_OBJECT, IS_STRING, IS_TRUE,
};
use ext_php_rs::types::{ZendHashTable, ZendObject, Zval};
use ext_php_rs::zend::ClassEntry;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{self, Serialize, SerializeMap, SerializeSeq, Serializer};

use polybus::Headers;

use crate::php_array::{self, Key};

/// Deepest nesting accepted, as `json_encode`'s default depth.
const MAX_DEPTH: usize = 512;

/// A PHP array, serialized straight to JSON (keys keep their order).
pub struct PhpJson<'a>(pub &'a ZendHashTable);

impl Serialize for PhpJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        array(self.0, 0, serializer)
    }
}

struct Nested<'a>(&'a Zval, usize);

impl Serialize for Nested<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        value(self.0, self.1, serializer)
    }
}

fn too_deep<E: ser::Error>() -> E {
    E::custom(format!(
        "the payload is nested deeper than {MAX_DEPTH} levels (or refers to itself)"
    ))
}

fn array<S: Serializer>(
    array: &ZendHashTable,
    depth: usize,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    if depth >= MAX_DEPTH {
        return Err(too_deep());
    }
    if php_array::is_list(array) {
        let mut seq = serializer.serialize_seq(Some(array.len()))?;
        for (index, item) in php_array::values(array).enumerate() {
            seq.serialize_element(&Nested(item, depth + 1))
                .map_err(|err| ser::Error::custom(at(&index.to_string(), &err)))?;
        }
        return seq.end();
    }
    let mut map = serializer.serialize_map(Some(array.len()))?;
    // Keys are read in place: a string key as it is, an integer key as its digits, which is how
    // `json_encode` writes both.
    for (key, item) in php_array::entries(array) {
        let entry = Nested(item, depth + 1);
        let written = match key {
            Key::Index(n) => map.serialize_entry(&n, &entry),
            Key::Name(name) => match name.as_str() {
                Ok(name) => map.serialize_entry(name, &entry),
                Err(_) => Err(ser::Error::custom(
                    "a key is not valid UTF-8, which JSON requires",
                )),
            },
        };
        written.map_err(|err| {
            let name = match key {
                Key::Index(n) => n.to_string(),
                Key::Name(name) => String::from_utf8_lossy(name.as_bytes()).into_owned(),
            };
            ser::Error::custom(at(&name, &err))
        })?;
    }
    map.end()
}

fn at(key: &str, err: &dyn std::fmt::Display) -> String {
    let err = err.to_string();
    match err.strip_prefix("at ") {
        Some(rest) => format!("at [{key:?}]{rest}"),
        None => format!("at [{key:?}]: {err}"),
    }
}

fn value<S: Serializer>(value: &Zval, depth: usize, serializer: S) -> Result<S::Ok, S::Error> {
    let value = value.dereference();
    match php_array::type_code(value) {
        IS_NULL => serializer.serialize_unit(),
        IS_FALSE => serializer.serialize_bool(false),
        IS_TRUE => serializer.serialize_bool(true),
        IS_LONG => serializer.serialize_i64(value.long().unwrap_or_default()),
        IS_DOUBLE => {
            let f = value.double().unwrap_or_default();
            if !f.is_finite() {
                return Err(ser::Error::custom(format!(
                    "{f} cannot be encoded as JSON (INF and NAN cannot)"
                )));
            }
            serializer.serialize_f64(f)
        }
        IS_STRING => match value.str() {
            Some(s) => serializer.serialize_str(s),
            None => Err(ser::Error::custom(
                "a string is not valid UTF-8, which JSON requires",
            )),
        },
        IS_ARRAY => match value.array() {
            Some(items) => array(items, depth, serializer),
            None => Err(ser::Error::custom("an array could not be read")),
        },
        IS_OBJECT => match value.object() {
            Some(object) => self::object(object, depth, serializer),
            None => Err(ser::Error::custom("an object could not be read")),
        },
        _ => Err(ser::Error::custom(format!(
            "a value of type {:?} cannot be encoded as JSON",
            value.get_type()
        ))),
    }
}

/// Objects as `json_encode` sees them: `JsonSerializable` says what it is, any other object
/// gives its public properties.
fn object<S: Serializer>(
    object: &ZendObject,
    depth: usize,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    if depth >= MAX_DEPTH {
        return Err(too_deep());
    }
    let class = object.get_class_name().unwrap_or_else(|_| "object".into());
    if let Some(serializable) = ClassEntry::try_find("JsonSerializable")
        && object.instance_of(serializable)
    {
        let serialized = object
            .try_call_method("jsonSerialize", vec![])
            .map_err(|err| ser::Error::custom(format!("{class}::jsonSerialize() failed: {err}")))?;
        return value(&serialized, depth + 1, serializer);
    }
    let properties = object.get_properties().map_err(|err| {
        ser::Error::custom(format!("the properties of a {class} cannot be read: {err}"))
    })?;
    let mut map = serializer.serialize_map(None)?;
    for (key, item) in properties.iter() {
        let name = key.to_string();
        // Private and protected properties have mangled names starting with a NUL byte.
        if name.starts_with('\0') {
            continue;
        }
        map.serialize_entry(&name, &Nested(item, depth + 1))
            .map_err(|err| ser::Error::custom(at(&name, &err)))?;
    }
    map.end()
}

/// A JSON body decoded as a PHP array (objects as associative arrays, in their order), or
/// `None` when it is not a JSON object or array.
pub fn json_to_array(body: &[u8]) -> Option<ZBox<ZendHashTable>> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let decoded = PhpValue.deserialize(&mut deserializer).ok()?;
    deserializer.end().ok()?;
    match decoded {
        Decoded::Array(array) => Some(array),
        Decoded::Scalar(_) => None,
    }
}

/// What a JSON value becomes in PHP.
enum Decoded {
    Array(ZBox<ZendHashTable>),
    Scalar(Zval),
}

impl Decoded {
    fn into_zval(self) -> Zval {
        match self {
            Decoded::Scalar(zval) => zval,
            Decoded::Array(array) => {
                let mut zval = Zval::new();
                zval.set_hashtable(array);
                zval
            }
        }
    }
}

/// Decodes one JSON value into PHP values as it reads it.
struct PhpValue;

impl<'de> DeserializeSeed<'de> for PhpValue {
    type Value = Decoded;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Decoded, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PhpValue {
    type Value = Decoded;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Decoded, E> {
        Ok(Decoded::Scalar(Zval::null()))
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Decoded, E> {
        let mut zval = Zval::new();
        zval.set_bool(b);
        Ok(Decoded::Scalar(zval))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Decoded, E> {
        let mut zval = Zval::new();
        zval.set_long(n);
        Ok(Decoded::Scalar(zval))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Decoded, E> {
        // Beyond PHP's int, as json_decode does: a float.
        match i64::try_from(n) {
            Ok(n) => self.visit_i64(n),
            Err(_) => self.visit_f64(n as f64),
        }
    }

    fn visit_f64<E: de::Error>(self, f: f64) -> Result<Decoded, E> {
        let mut zval = Zval::new();
        zval.set_double(f);
        Ok(Decoded::Scalar(zval))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Decoded, E> {
        let mut zval = Zval::new();
        zval.set_string(s, false).map_err(E::custom)?;
        Ok(Decoded::Scalar(zval))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Decoded, A::Error> {
        let mut array = ZendHashTable::new();
        while let Some(item) = seq.next_element_seed(PhpValue)? {
            array.push(item.into_zval()).map_err(de::Error::custom)?;
        }
        Ok(Decoded::Array(array))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Decoded, A::Error> {
        let mut array = ZendHashTable::new();
        while let Some(key) = map.next_key::<String>()? {
            let item = map.next_value_seed(PhpValue)?.into_zval();
            // PHP turns canonical integer strings into integer keys; do as it does.
            match canonical_index(&key) {
                Some(index) => array.insert_at_index(index, item),
                None => array.insert(key.as_str(), item),
            }
            .map_err(de::Error::custom)?;
        }
        Ok(Decoded::Array(array))
    }
}

fn canonical_index(key: &str) -> Option<i64> {
    let index: i64 = key.parse().ok()?;
    (index.to_string() == key).then_some(index)
}

/// Headers from a PHP array of name => scalar; values become strings.
pub fn headers_from(array: &ZendHashTable) -> Result<Headers, String> {
    let mut headers = Headers::new();
    for (key, value) in array.iter() {
        let name = key.to_string();
        let value = value.dereference();
        let text = if value.is_string() {
            value
                .str()
                .map(str::to_owned)
                .ok_or_else(|| format!("header {name:?} is not valid UTF-8"))?
        } else if let Some(b) = value.bool() {
            if b { "true" } else { "false" }.to_owned()
        } else if value.is_long() || value.is_double() {
            value.coerce_to_string().unwrap_or_default()
        } else {
            return Err(format!(
                "header {name:?} must be a string, int, float or bool, not {:?}",
                value.get_type()
            ));
        };
        headers.insert(name, text);
    }
    Ok(headers)
}

/// A PHP number of seconds as a duration; `what` names it in the error.
pub fn seconds(value: f64, what: &str) -> Result<Duration, String> {
    if !value.is_finite() || value < 0.0 {
        return Err(format!(
            "{what} must be a finite number of seconds, at least 0 (got {value})"
        ));
    }
    Duration::try_from_secs_f64(value).map_err(|_| format!("{what} is too large ({value} s)"))
}
