//! JSON to postcard and back, through a service's schema: what lets a person type a call's
//! arguments and read its result.
//!
//! The JSON for a type is what `serde_json` writes for it: numbers, strings (a `char` is a
//! one-character string), `null` for `()` and `None`, arrays for sequences, tuples and tuple
//! structs, objects for structs (by field name) and for maps with string keys, and enums
//! externally tagged (`"Unit"`, `{"Newtype": 1}`, `{"Tuple": [1, 2]}`, `{"Struct": {"a": 1}}`).
//! Byte strings are arrays of numbers (or, as input, a string taken as its UTF-8 bytes). A map
//! is an object when its keys are strings, no two alike, and otherwise an array of `[key,
//! value]` pairs; as input it may be either, an object's keys read as JSON (`"true"`, `"1.5"`)
//! where the key's type takes no string. Integers past 64 bits are strings, and any integer
//! may be typed as one. Where serde_json would lose a value, writing `Some(None)` of an
//! `Option<Option<T>>` as `null`, its `None`, a `Some` whose value is written `null` (or
//! `{"Some": ...}`) is `{"Some": value}`; as input, `{"Some": value}` is read so for any option
//! of a type that writes `null`. Objects keep their order: a struct's fields print as it
//! declares them, a map's entries as they came.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::fmt;

use rpc_core::schema::{Field, MethodSchema, Schema, TypeDef, Variant};
use serde::de::{self, DeserializeSeed, Visitor};
use serde::ser::{self, Serialize, SerializeMap, SerializeSeq, SerializeTuple};
use serde_json::{Map, Value};

/// How deep values may nest: a schema that refers to itself without end, or a hostile
/// server's deeply nested answer, stops here instead of exhausting the stack.
const MAX_DEPTH: usize = 128;

/// How many items an answer's sequences and maps may hold, all told, beyond one for each of
/// its bytes: items of no bytes (`()`) cost a hostile server nothing to claim, and each takes
/// a step to read (rpc-core bounds what it decodes alike).
const ZERO_SIZED_ITEMS: usize = 4096;

/// The named types of a service.
pub type Types = BTreeMap<String, TypeDef>;

/// Encodes a call's arguments: a JSON object keyed by the arguments' names, or an array of them
/// in order. A method without arguments takes `{}`, `[]` or `null`; a method of one argument
/// also takes that argument's value alone, unless it is an object or an array (read as above:
/// `{"order": {...}}` or `[{...}]` for an argument that is a struct).
pub fn encode_args(method: &MethodSchema, types: &Types, json: &Value) -> Result<Vec<u8>, String> {
    let args = &method.args;
    let miscounted = |given: usize| {
        let takes = match args.len() {
            0 => "no arguments".to_owned(),
            1 => format!("1 argument ({})", signature(args)),
            n => format!("{n} arguments ({})", signature(args)),
        };
        let given = match given {
            0 => "none were given".to_owned(),
            1 => "1 was given".to_owned(),
            n => format!("{n} were given"),
        };
        format!("`{}` takes {takes}, and {given}", method.name)
    };
    let values: Vec<&Value> = match json {
        Value::Null if args.is_empty() => Vec::new(),
        // Nothing given (or `null`), where the one argument is no option that `null` could be.
        Value::Null if !matches!(args.as_slice(), [only] if takes_null(&only.schema)) => {
            return Err(miscounted(0));
        }
        Value::Array(items) => {
            if items.len() != args.len() {
                return Err(miscounted(items.len()));
            }
            items.iter().collect()
        }
        Value::Object(named) => {
            if let Some(unknown) = named
                .keys()
                .find(|key| !args.iter().any(|arg| &arg.name == *key))
            {
                // An object meant as the value of a method's one argument (a struct) is all
                // the arguments by name: say how to pass it.
                let hint = match args.as_slice() {
                    [only] => format!(
                        " (an object for `{0}` itself goes by its name: {{\"{0}\": {{...}}}})",
                        only.name
                    ),
                    _ => String::new(),
                };
                return Err(format!(
                    "`{}` has no argument `{unknown}`; its arguments are ({}){hint}",
                    method.name,
                    signature(args)
                ));
            }
            let mut values = Vec::with_capacity(args.len());
            for arg in args {
                let value = named.get(&arg.name).ok_or_else(|| {
                    format!("the argument `{}` ({}) is missing", arg.name, arg.schema)
                })?;
                values.push(value);
            }
            values
        }
        alone if args.len() == 1 => vec![alone],
        // One value where the method takes none or several: as `rpc call ADDR add 2` gives it.
        other => return Err(format!("{} ({})", miscounted(1), kind(other))),
    };
    let mut out = Vec::new();
    for (arg, value) in args.iter().zip(values) {
        out.extend(encode(&arg.schema, types, value, &arg.name)?);
    }
    Ok(out)
}

/// Whether `null` is a value of `schema`: an option's `None`, or the unit.
fn takes_null(schema: &Schema) -> bool {
    matches!(schema, Schema::Option(_) | Schema::Unit)
}

/// Whether JSON writes some value of `schema` as `null`: an option's `None`, the unit, a unit
/// struct, or a newtype of one of them. An option of such a type writes its `Some` as
/// `{"Some": value}` where the value is `null` or itself of that form, so that `Some(None)` is
/// not read as `None`; it reads either form.
fn writes_null(schema: &Schema, types: &Types, depth: usize) -> bool {
    match schema {
        Schema::Option(_) | Schema::Unit => true,
        _ if depth > MAX_DEPTH => false,
        Schema::Named(name) => match types.get(name) {
            Some(TypeDef::UnitStruct) => true,
            Some(TypeDef::NewtypeStruct(inner)) => writes_null(inner, types, depth + 1),
            _ => false,
        },
        _ => false,
    }
}

/// The value inside `{"Some": value}`, the form an option of a type that writes `null` takes
/// for its `Some`.
fn explicit_some(json: &Value) -> Option<&Value> {
    match json {
        Value::Object(object) if object.len() == 1 => object.get("Some"),
        _ => None,
    }
}

/// Encodes one value of type `schema` from `json`; `path` names it in errors.
pub fn encode(schema: &Schema, types: &Types, json: &Value, path: &str) -> Result<Vec<u8>, String> {
    let error = RefCell::new(None);
    let typed = Typed {
        schema,
        types,
        json,
        path: path.to_owned(),
        depth: 0,
        error: &error,
    };
    postcard::to_allocvec(&typed).map_err(|failure| {
        error
            .into_inner()
            .unwrap_or_else(|| format!("`{path}` could not be encoded: {failure}"))
    })
}

/// Decodes one value of type `schema` from `bytes`, which it must fill exactly.
pub fn decode(schema: &Schema, types: &Types, bytes: &[u8]) -> Result<Value, String> {
    let mut deserializer = postcard::Deserializer::from_bytes(bytes);
    let error = RefCell::new(None);
    let failed = |failure: postcard::Error| {
        let why = error
            .borrow_mut()
            .take()
            .unwrap_or_else(|| rpc_core::CodecError::from(failure).to_string());
        format!("the answer does not decode as {schema}: {why}")
    };
    let items_left = Cell::new(bytes.len().saturating_add(ZERO_SIZED_ITEMS));
    let value = Shape {
        schema,
        types,
        depth: 0,
        items_left: &items_left,
        error: &error,
    }
    .deserialize(&mut deserializer)
    .map_err(failed)?;
    let rest = deserializer.finalize().map_err(failed)?;
    if !rest.is_empty() {
        return Err(format!(
            "the answer has {} bytes more than a {schema}",
            rest.len()
        ));
    }
    Ok(value)
}

fn signature(args: &[Field]) -> String {
    let args: Vec<String> = args
        .iter()
        .map(|arg| format!("{}: {}", arg.name, arg.schema))
        .collect();
    args.join(", ")
}

fn kind(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("`{b}`"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(items) => format!("an array of {}", items.len()),
        Value::Object(_) => "an object".to_owned(),
    }
}

/// A JSON value to serialize as the type `schema`.
struct Typed<'a> {
    schema: &'a Schema,
    types: &'a Types,
    json: &'a Value,
    path: String,
    depth: usize,
    /// Where the first error's sentence goes: postcard keeps no message of its own.
    error: &'a RefCell<Option<String>>,
}

impl Typed<'_> {
    fn fail<E: ser::Error>(&self, expected: impl fmt::Display) -> E {
        self.fail_with(format!(
            "`{}`: expected {expected}, found {}",
            self.path,
            kind(self.json)
        ))
    }

    fn fail_with<E: ser::Error>(&self, message: String) -> E {
        let mut error = self.error.borrow_mut();
        if error.is_none() {
            *error = Some(message);
        }
        E::custom("see the recorded message")
    }

    fn child<'b>(&'b self, schema: &'b Schema, json: &'b Value, path: String) -> Typed<'b> {
        Typed {
            schema,
            types: self.types,
            json,
            path,
            depth: self.depth + 1,
            error: self.error,
        }
    }

    fn integer<S: ser::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let expected = format!("an integer ({})", self.schema);
        // An `i128` holds every integer but a `u128` past its most, which comes as a string.
        let number = match self.json {
            Value::Number(n) => n.as_i128().map(Ok),
            Value::String(s) => match s.parse::<i128>() {
                Ok(n) => Some(Ok(n)),
                Err(_) => s.parse::<u128>().ok().map(Err),
            },
            _ => None,
        };
        let does_not_fit = |n: &dyn fmt::Display| {
            self.fail_with(format!(
                "`{}`: {n} does not fit in {}",
                self.path, self.schema
            ))
        };
        let n = match number {
            Some(Ok(n)) => n,
            Some(Err(big)) if *self.schema == Schema::U128 => {
                return serializer.serialize_u128(big);
            }
            Some(Err(big)) => return Err(does_not_fit(&big)),
            // serde_json reads an integer past 64 bits as a float, which keeps ~16 digits.
            None if is_past_64_bits(self.json) => {
                return Err(match self.schema {
                    Schema::I128 | Schema::U128 => self.fail_with(format!(
                        "`{}`: {} has more digits than a JSON number keeps; write an integer \
                         past 64 bits as a string of its digits (\"{}\")",
                        self.path,
                        self.json,
                        u128::MAX
                    )),
                    _ => does_not_fit(self.json),
                });
            }
            None => return Err(self.fail(expected)),
        };
        let out_of_range = || does_not_fit(&n);
        match self.schema {
            Schema::I8 => serializer.serialize_i8(i8::try_from(n).map_err(|_| out_of_range())?),
            Schema::I16 => serializer.serialize_i16(i16::try_from(n).map_err(|_| out_of_range())?),
            Schema::I32 => serializer.serialize_i32(i32::try_from(n).map_err(|_| out_of_range())?),
            Schema::I64 => serializer.serialize_i64(i64::try_from(n).map_err(|_| out_of_range())?),
            Schema::I128 => serializer.serialize_i128(n),
            Schema::U8 => serializer.serialize_u8(u8::try_from(n).map_err(|_| out_of_range())?),
            Schema::U16 => serializer.serialize_u16(u16::try_from(n).map_err(|_| out_of_range())?),
            Schema::U32 => serializer.serialize_u32(u32::try_from(n).map_err(|_| out_of_range())?),
            Schema::U64 => serializer.serialize_u64(u64::try_from(n).map_err(|_| out_of_range())?),
            _ => serializer.serialize_u128(u128::try_from(n).map_err(|_| out_of_range())?),
        }
    }

    fn items<S: ser::Serializer>(
        &self,
        serializer: S,
        schemas: &[&Schema],
        names: Option<&[Field]>,
    ) -> Result<S::Ok, S::Error> {
        let values: Vec<(&Value, String)> = match (self.json, names) {
            (Value::Object(object), Some(fields)) => {
                if let Some(unknown) = object
                    .keys()
                    .find(|key| !fields.iter().any(|field| &field.name == *key))
                {
                    return Err(self.fail_with(format!(
                        "`{}` has no field `{unknown}`; its fields are ({})",
                        self.path,
                        signature(fields)
                    )));
                }
                let mut values = Vec::with_capacity(fields.len());
                for field in fields {
                    let path = format!("{}.{}", self.path, field.name);
                    match object.get(&field.name) {
                        Some(value) => values.push((value, path)),
                        None => {
                            return Err(
                                self.fail_with(format!("`{path}` ({}) is missing", field.schema))
                            );
                        }
                    }
                }
                values
            }
            (Value::Array(items), _) if items.len() == schemas.len() => items
                .iter()
                .enumerate()
                .map(|(index, item)| (item, format!("{}[{index}]", self.path)))
                .collect(),
            _ => {
                let expected = match names {
                    Some(fields) => format!("an object with the fields ({})", signature(fields)),
                    None => format!("an array of {} items", schemas.len()),
                };
                return Err(self.fail(expected));
            }
        };
        let mut tuple = serializer.serialize_tuple(schemas.len())?;
        for (schema, (value, path)) in schemas.iter().zip(&values) {
            tuple.serialize_element(&self.child(schema, value, path.clone()))?;
        }
        tuple.end()
    }

    fn named<S: ser::Serializer>(&self, serializer: S, name: &str) -> Result<S::Ok, S::Error> {
        let Some(def) = self.types.get(name) else {
            return Err(self.fail_with(format!(
                "`{}`: the type `{name}` is not described, so it cannot be written",
                self.path
            )));
        };
        match def {
            TypeDef::UnitStruct => match self.json {
                Value::Null => serializer.serialize_unit(),
                _ => Err(self.fail("null")),
            },
            TypeDef::NewtypeStruct(inner) => self
                .child(inner, self.json, self.path.clone())
                .serialize(serializer),
            TypeDef::TupleStruct(items) => {
                self.items(serializer, &items.iter().collect::<Vec<_>>(), None)
            }
            TypeDef::Struct(fields) => {
                let schemas: Vec<&Schema> = fields.iter().map(|field| &field.schema).collect();
                self.items(serializer, &schemas, Some(fields))
            }
            TypeDef::Enum(variants) => self.variant(serializer, name, variants),
            _ => Err(self.fail_with(format!(
                "`{}`: `{name}` is a kind of type this tool does not know",
                self.path
            ))),
        }
    }

    fn variant<S: ser::Serializer>(
        &self,
        serializer: S,
        name: &str,
        variants: &[(String, Variant)],
    ) -> Result<S::Ok, S::Error> {
        let names = || {
            variants
                .iter()
                .map(|(variant, _)| variant.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (tag, content) = match self.json {
            Value::String(tag) => (tag.as_str(), None),
            Value::Object(object) if object.len() == 1 => {
                let (tag, content) = object.iter().next().expect("one entry");
                (tag.as_str(), Some(content))
            }
            _ => {
                return Err(self.fail(format!(
                    "a variant of `{name}`: \"Variant\" or {{\"Variant\": ...}}, one of {}",
                    names()
                )));
            }
        };
        let Some(index) = variants.iter().position(|(variant, _)| variant == tag) else {
            return Err(self.fail_with(format!(
                "`{}`: `{name}` has no variant `{tag}`; its variants are {}",
                self.path,
                names()
            )));
        };
        let index = u32::try_from(index).map_err(|_| self.fail_with("too many variants".into()))?;
        let path = format!("{}.{tag}", self.path);
        let null = Value::Null;
        match (&variants[index as usize].1, content) {
            (Variant::Unit, None | Some(Value::Null)) => {
                serializer.serialize_unit_variant("", index, "")
            }
            (Variant::Unit, Some(_)) => Err(self.fail_with(format!("`{path}` takes no value"))),
            (Variant::Newtype(inner), content) => {
                let value = self.child(inner, content.unwrap_or(&null), path);
                serializer.serialize_newtype_variant("", index, "", &value)
            }
            (Variant::Tuple(items), content) => {
                let schemas: Vec<&Schema> = items.iter().collect();
                let content = self.child(&Schema::Unit, content.unwrap_or(&null), path);
                let items = VariantItems {
                    typed: &content,
                    schemas: &schemas,
                    fields: None,
                };
                serializer.serialize_newtype_variant("", index, "", &items)
            }
            (Variant::Struct(fields), content) => {
                let schemas: Vec<&Schema> = fields.iter().map(|field| &field.schema).collect();
                let content = self.child(&Schema::Unit, content.unwrap_or(&null), path);
                let items = VariantItems {
                    typed: &content,
                    schemas: &schemas,
                    fields: Some(fields),
                };
                serializer.serialize_newtype_variant("", index, "", &items)
            }
            _ => Err(self.fail_with(format!(
                "`{path}`: a kind of variant this tool does not know"
            ))),
        }
    }
}

/// A tuple or struct variant's items: postcard writes them after the index as a tuple's.
struct VariantItems<'a> {
    typed: &'a Typed<'a>,
    schemas: &'a [&'a Schema],
    fields: Option<&'a [Field]>,
}

impl Serialize for VariantItems<'_> {
    fn serialize<S: ser::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.typed.items(serializer, self.schemas, self.fields)
    }
}

impl Serialize for Typed<'_> {
    fn serialize<S: ser::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.depth > MAX_DEPTH {
            return Err(self.fail_with(format!("`{}` nests more than {MAX_DEPTH} deep", self.path)));
        }
        match self.schema {
            Schema::Unit => match self.json {
                Value::Null => serializer.serialize_unit(),
                _ => Err(self.fail("null")),
            },
            Schema::Bool => match self.json {
                Value::Bool(b) => serializer.serialize_bool(*b),
                _ => Err(self.fail("`true` or `false`")),
            },
            integer if is_integer(integer) => self.integer(serializer),
            Schema::F32 => match self.json.as_f64() {
                Some(x) => serializer.serialize_f32(x as f32),
                None => Err(self.fail("a number (f32)")),
            },
            Schema::F64 => match self.json.as_f64() {
                Some(x) => serializer.serialize_f64(x),
                None => Err(self.fail("a number (f64)")),
            },
            Schema::Char => {
                let mut chars = self.json.as_str().unwrap_or_default().chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) => serializer.serialize_char(c),
                    _ => Err(self.fail("a string of one character (char)")),
                }
            }
            Schema::Str => match self.json {
                Value::String(s) => serializer.serialize_str(s),
                _ => Err(self.fail("a string")),
            },
            Schema::Bytes => match self.json {
                Value::String(s) => serializer.serialize_bytes(s.as_bytes()),
                Value::Array(items) => {
                    let bytes: Option<Vec<u8>> = items
                        .iter()
                        .map(|item| item.as_u64().and_then(|n| u8::try_from(n).ok()))
                        .collect();
                    match bytes {
                        Some(bytes) => serializer.serialize_bytes(&bytes),
                        None => Err(self.fail("an array of bytes (0 to 255)")),
                    }
                }
                _ => Err(self.fail("bytes: an array of numbers from 0 to 255, or a string")),
            },
            Schema::Option(inner) => match self.json {
                Value::Null => serializer.serialize_none(),
                json => {
                    // `{"Some": null}` is `Some(None)` of an `Option<Option<T>>`; a plain value
                    // is `Some` of it, where it cannot be mistaken for `None`.
                    let json = explicit_some(json)
                        .filter(|_| writes_null(inner, self.types, self.depth))
                        .unwrap_or(json);
                    serializer.serialize_some(&self.child(inner, json, self.path.clone()))
                }
            },
            Schema::Seq(item) => match self.json {
                Value::Array(items) => {
                    let mut seq = serializer.serialize_seq(Some(items.len()))?;
                    for (index, value) in items.iter().enumerate() {
                        seq.serialize_element(&self.child(
                            item,
                            value,
                            format!("{}[{index}]", self.path),
                        ))?;
                    }
                    seq.end()
                }
                _ => Err(self.fail(format!("an array ({})", self.schema))),
            },
            Schema::Map(key, value) => self.map(serializer, key, value),
            Schema::Tuple(items) => self.items(serializer, &items.iter().collect::<Vec<_>>(), None),
            Schema::Named(name) => self.named(serializer, name),
            other => Err(self.fail_with(format!(
                "`{}`: the type {other} is not known to this tool",
                self.path
            ))),
        }
    }
}

impl Typed<'_> {
    fn map<S: ser::Serializer>(
        &self,
        serializer: S,
        key: &Schema,
        value: &Schema,
    ) -> Result<S::Ok, S::Error> {
        let entries: Vec<(Value, &Value)> = match self.json {
            Value::Object(object) => {
                let as_string = takes_strings(key, self.types, 0);
                object
                    .iter()
                    .map(|(k, v)| {
                        let parsed = if as_string {
                            None
                        } else {
                            serde_json::from_str(k).ok()
                        };
                        (parsed.unwrap_or_else(|| Value::String(k.clone())), v)
                    })
                    .collect()
            }
            Value::Array(pairs) => {
                let mut entries = Vec::with_capacity(pairs.len());
                for pair in pairs {
                    match pair.as_array().map(Vec::as_slice) {
                        Some([k, v]) => entries.push((k.clone(), v)),
                        _ => return Err(self.fail("an object, or an array of [key, value] pairs")),
                    }
                }
                entries
            }
            _ => return Err(self.fail(format!("an object ({})", self.schema))),
        };
        let mut map = serializer.serialize_map(Some(entries.len()))?;
        for (k, v) in &entries {
            let path = format!("{}[{k}]", self.path);
            map.serialize_entry(
                &self.child(key, k, path.clone()),
                &self.child(value, v, path),
            )?;
        }
        map.end()
    }
}

/// Whether `schema` is an integer's, of any width.
fn is_integer(schema: &Schema) -> bool {
    matches!(
        schema,
        Schema::I8
            | Schema::I16
            | Schema::I32
            | Schema::I64
            | Schema::I128
            | Schema::U8
            | Schema::U16
            | Schema::U32
            | Schema::U64
            | Schema::U128
    )
}

/// Whether JSON of type `schema` may be a string: then an object's key is given to it as the
/// string it is, and otherwise read as JSON (`"true"`, `"[1, 2]"`). A map's keys are written as
/// an object exactly when they are all strings, which only such types decode to.
fn takes_strings(schema: &Schema, types: &Types, depth: usize) -> bool {
    match schema {
        Schema::Char | Schema::Str | Schema::Bytes => true,
        integer if is_integer(integer) => true,
        _ if depth > MAX_DEPTH => false,
        Schema::Option(inner) => takes_strings(inner, types, depth + 1),
        Schema::Named(name) => match types.get(name) {
            Some(TypeDef::NewtypeStruct(inner)) => takes_strings(inner, types, depth + 1),
            Some(TypeDef::Enum(_)) => true,
            _ => false,
        },
        _ => false,
    }
}

/// A type to read a JSON value of from postcard.
#[derive(Clone, Copy)]
struct Shape<'a> {
    schema: &'a Schema,
    types: &'a Types,
    depth: usize,
    /// How many more items the answer's sequences and maps may hold ([`ZERO_SIZED_ITEMS`]).
    items_left: &'a Cell<usize>,
    /// Why the value did not decode, as first said: postcard keeps no custom message.
    error: &'a RefCell<Option<String>>,
}

impl<'a> Shape<'a> {
    fn of(&self, schema: &'a Schema) -> Shape<'a> {
        Shape {
            schema,
            depth: self.depth + 1,
            ..*self
        }
    }

    /// One more item of a sequence or map, or the error that the answer holds too many.
    fn item<E: de::Error>(&self) -> Result<(), E> {
        match self.items_left.get().checked_sub(1) {
            Some(left) => {
                self.items_left.set(left);
                Ok(())
            }
            None => Err(self.fail(format!(
                "its sequences and maps hold more items than one a byte and {ZERO_SIZED_ITEMS} \
                 more"
            ))),
        }
    }

    /// Fails the decoding with `message`, which [`decode`] reports.
    fn fail<E: de::Error>(&self, message: impl fmt::Display) -> E {
        let mut error = self.error.borrow_mut();
        if error.is_none() {
            *error = Some(message.to_string());
        }
        E::custom("see the recorded message")
    }
}

impl<'de> DeserializeSeed<'de> for Shape<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        if self.depth > MAX_DEPTH {
            return Err(self.fail(format!("values nest more than {MAX_DEPTH} deep")));
        }
        let visitor = ToJson(self);
        match self.schema {
            Schema::Unit => deserializer.deserialize_unit(visitor),
            Schema::Bool => deserializer.deserialize_bool(visitor),
            Schema::I8 => deserializer.deserialize_i8(visitor),
            Schema::I16 => deserializer.deserialize_i16(visitor),
            Schema::I32 => deserializer.deserialize_i32(visitor),
            Schema::I64 => deserializer.deserialize_i64(visitor),
            Schema::I128 => deserializer.deserialize_i128(visitor),
            Schema::U8 => deserializer.deserialize_u8(visitor),
            Schema::U16 => deserializer.deserialize_u16(visitor),
            Schema::U32 => deserializer.deserialize_u32(visitor),
            Schema::U64 => deserializer.deserialize_u64(visitor),
            Schema::U128 => deserializer.deserialize_u128(visitor),
            Schema::F32 => deserializer.deserialize_f32(visitor),
            Schema::F64 => deserializer.deserialize_f64(visitor),
            Schema::Char => deserializer.deserialize_char(visitor),
            Schema::Str => deserializer.deserialize_str(visitor),
            Schema::Bytes => deserializer.deserialize_bytes(visitor),
            Schema::Option(_) => deserializer.deserialize_option(visitor),
            Schema::Seq(_) => deserializer.deserialize_seq(visitor),
            Schema::Map(..) => deserializer.deserialize_map(visitor),
            Schema::Tuple(items) => deserializer.deserialize_tuple(items.len(), visitor),
            Schema::Named(name) => match self.types.get(name) {
                None => Err(self.fail(format!("the type `{name}` is not described"))),
                Some(TypeDef::UnitStruct) => deserializer.deserialize_unit(visitor),
                Some(TypeDef::NewtypeStruct(inner)) => self.of(inner).deserialize(deserializer),
                Some(TypeDef::TupleStruct(items)) => {
                    deserializer.deserialize_tuple(items.len(), visitor)
                }
                Some(TypeDef::Struct(fields)) => {
                    deserializer.deserialize_tuple(fields.len(), visitor)
                }
                Some(TypeDef::Enum(_)) => deserializer.deserialize_enum("", &[], visitor),
                Some(_) => Err(self.fail(format!(
                    "`{name}` is a kind of type this tool does not know"
                ))),
            },
            other => Err(self.fail(format!("the type {other} is not known to this tool"))),
        }
    }
}

/// Builds the JSON value of one postcard value, as its [`Shape`] says.
struct ToJson<'a>(Shape<'a>);

impl ToJson<'_> {
    /// The items of a tuple, struct or variant: an object for named fields, else an array.
    fn items<'de, A: de::SeqAccess<'de>>(
        &self,
        mut seq: A,
        schemas: &[&Schema],
        names: Option<&[Field]>,
    ) -> Result<Value, A::Error> {
        let mut values = Vec::new();
        for schema in schemas {
            let value = seq
                .next_element_seed(self.0.of(schema))?
                .ok_or_else(|| self.0.fail("the value ended early"))?;
            values.push(value);
        }
        Ok(match names {
            Some(fields) => Value::Object(
                fields
                    .iter()
                    .map(|field| field.name.clone())
                    .zip(values)
                    .collect(),
            ),
            None => Value::Array(values),
        })
    }
}

impl<'de> Visitor<'de> for ToJson<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a value of {}", self.0.schema)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Value, E> {
        Ok(Value::from(n))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Value, E> {
        Ok(Value::from(n))
    }

    fn visit_i128<E: de::Error>(self, n: i128) -> Result<Value, E> {
        Ok(i64::try_from(n).map_or_else(|_| Value::String(n.to_string()), Value::from))
    }

    fn visit_u128<E: de::Error>(self, n: u128) -> Result<Value, E> {
        Ok(u64::try_from(n).map_or_else(|_| Value::String(n.to_string()), Value::from))
    }

    fn visit_f64<E: de::Error>(self, x: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number))
    }

    fn visit_char<E: de::Error>(self, c: char) -> Result<Value, E> {
        Ok(Value::String(c.to_string()))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }

    fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Value, E> {
        Ok(Value::Array(
            bytes.iter().map(|&b| Value::from(b)).collect(),
        ))
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        let Schema::Option(inner) = self.0.schema else {
            return Err(self.0.fail("an option where none was described"));
        };
        let value = self.0.of(inner).deserialize(deserializer)?;
        // Written plainly, a `Some` whose value is `null` would read back as `None`, and one
        // whose value is `{"Some": ...}` as the `Some` of what is inside.
        let ambiguous = value.is_null() || explicit_some(&value).is_some();
        if ambiguous && writes_null(inner, self.0.types, self.0.depth) {
            return Ok(Value::Object(
                [("Some".to_owned(), value)].into_iter().collect(),
            ));
        }
        Ok(value)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        match self.0.schema {
            Schema::Seq(item) => {
                // The length the peer claims sizes nothing: items are added as they decode.
                let mut items = Vec::new();
                while let Some(value) = seq.next_element_seed(self.0.of(item))? {
                    self.0.item()?;
                    items.push(value);
                }
                Ok(Value::Array(items))
            }
            Schema::Tuple(items) => self.items(seq, &items.iter().collect::<Vec<_>>(), None),
            Schema::Named(name) => match self.0.types.get(name) {
                Some(TypeDef::TupleStruct(items)) => {
                    self.items(seq, &items.iter().collect::<Vec<_>>(), None)
                }
                Some(TypeDef::Struct(fields)) => {
                    let schemas: Vec<&Schema> = fields.iter().map(|field| &field.schema).collect();
                    self.items(seq, &schemas, Some(fields))
                }
                _ => Err(self.0.fail(format!("`{name}` is not a tuple or a struct"))),
            },
            other => Err(self
                .0
                .fail(format!("a sequence where {other} was described"))),
        }
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let Schema::Map(key, value) = self.0.schema else {
            return Err(self.0.fail("a map where none was described"));
        };
        let mut entries = Vec::new();
        while let Some(k) = map.next_key_seed(self.0.of(key))? {
            self.0.item()?;
            entries.push((k, map.next_value_seed(self.0.of(value))?));
        }
        // An object when every key is a string, and no two alike; else `[key, value]` pairs.
        let mut names = HashSet::new();
        let named_once = entries
            .iter()
            .all(|(k, _)| k.as_str().is_some_and(|name| names.insert(name)));
        Ok(if named_once {
            let named = entries.into_iter().filter_map(|(k, v)| match k {
                Value::String(name) => Some((name, v)),
                _ => None,
            });
            Value::Object(named.collect())
        } else {
            let pairs = entries.into_iter().map(|(k, v)| Value::Array(vec![k, v]));
            Value::Array(pairs.collect())
        })
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        use de::VariantAccess;
        let Schema::Named(name) = self.0.schema else {
            return Err(self.0.fail("an enum where none was described"));
        };
        let Some(TypeDef::Enum(variants)) = self.0.types.get(name) else {
            return Err(self.0.fail(format!("`{name}` is not an enum")));
        };
        let (index, access) = data.variant_seed(VariantIndex)?;
        let Some((tag, variant)) = usize::try_from(index).ok().and_then(|i| variants.get(i)) else {
            return Err(self.0.fail(format!("`{name}` has no variant {index}")));
        };
        let content = match variant {
            Variant::Unit => {
                access.unit_variant()?;
                return Ok(Value::String(tag.clone()));
            }
            Variant::Newtype(inner) => access.newtype_variant_seed(self.0.of(inner))?,
            Variant::Tuple(items) => access.tuple_variant(
                items.len(),
                VariantToJson {
                    shape: self.0,
                    schemas: items.iter().collect(),
                    fields: None,
                },
            )?,
            Variant::Struct(fields) => {
                let schemas = fields.iter().map(|field| &field.schema).collect();
                access.tuple_variant(
                    fields.len(),
                    VariantToJson {
                        shape: self.0,
                        schemas,
                        fields: Some(fields),
                    },
                )?
            }
            _ => {
                return Err(self.0.fail(format!(
                    "`{tag}` is a kind of variant this tool does not know"
                )));
            }
        };
        let mut object = Map::new();
        object.insert(tag.clone(), content);
        Ok(Value::Object(object))
    }
}

/// A variant's index, as postcard hands it over.
struct VariantIndex;

impl<'de> DeserializeSeed<'de> for VariantIndex {
    type Value = u32;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<u32, D::Error> {
        struct Index;
        impl Visitor<'_> for Index {
            type Value = u32;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a variant index")
            }

            fn visit_u32<E: de::Error>(self, index: u32) -> Result<u32, E> {
                Ok(index)
            }
        }
        deserializer.deserialize_u32(Index)
    }
}

/// The items of a tuple or struct variant.
struct VariantToJson<'a> {
    shape: Shape<'a>,
    schemas: Vec<&'a Schema>,
    fields: Option<&'a [Field]>,
}

impl<'de> Visitor<'de> for VariantToJson<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a variant's items")
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Value, A::Error> {
        ToJson(self.shape).items(seq, &self.schemas, self.fields)
    }
}

/// Whether `json` is a whole number past what 64 bits hold, which serde_json reads as a float.
fn is_past_64_bits(json: &Value) -> bool {
    json.as_f64()
        .is_some_and(|f| f.fract() == 0.0 && !(-(2f64.powi(63))..2f64.powi(64)).contains(&f))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rpc_core::schema::ServiceTracer;
    use serde::de::DeserializeOwned;
    use serde_bytes::ByteBuf;
    use serde_json::json;

    use super::*;

    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct Marker;

    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct Meters(u32);

    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct Point(i16, i16);

    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    enum Figure {
        Empty,
        Circle(f64),
        Line(Point, Point),
        Box { corner: Point, side: Meters },
    }

    /// Every kind of type the tool writes and reads.
    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct Everything {
        unit: (),
        flag: bool,
        small: (i8, i16, i32, i64, i128),
        unsigned: (u8, u16, u32, u64, u128),
        floats: (f32, f64),
        letter: char,
        name: String,
        bytes: ByteBuf,
        maybe: Option<u8>,
        nothing: Option<u8>,
        list: Vec<u16>,
        by_name: BTreeMap<String, i8>,
        array: [u8; 3],
        marker: Marker,
        meters: Meters,
        shapes: Vec<Figure>,
    }

    /// The schema of `T` and the named types it uses, as a service describes them.
    fn traced<T: Serialize + DeserializeOwned>() -> (Schema, Types) {
        let mut tracer = ServiceTracer::new("Test");
        tracer.method("get", false).returns::<T>();
        let service = tracer.finish().expect("a schema");
        (service.methods[0].result.clone(), service.types)
    }

    /// `value`'s JSON, as serde_json writes it, encodes to postcard's own bytes for `value`,
    /// and those bytes decode to that JSON.
    fn round_trip<T: Serialize + DeserializeOwned>(value: &T) {
        let (schema, types) = traced::<T>();
        let bytes = postcard::to_allocvec(value).expect("postcard encodes");
        let json = serde_json::to_value(value).expect("serde_json encodes");
        assert_eq!(
            encode(&schema, &types, &json, "value"),
            Ok(bytes.clone()),
            "{json}"
        );
        assert_eq!(decode(&schema, &types, &bytes), Ok(json));
    }

    #[test]
    fn every_kind_of_value_goes_both_ways_as_serde_writes_it() {
        round_trip(&Everything {
            unit: (),
            flag: true,
            small: (-8, 300, -70_000, 5_000_000_000, 7),
            unsigned: (200, 60_000, 4_000_000_000, 1 << 40, 9),
            floats: (1.5, -0.25),
            letter: 'é',
            name: "Ada".to_owned(),
            bytes: ByteBuf::from(vec![0, 1, 255]),
            maybe: Some(4),
            nothing: None,
            list: vec![1, 600],
            // A key that reads as a number stays a string for a map keyed by strings.
            by_name: [("1".to_owned(), -1), ("two".to_owned(), 2)].into(),
            array: [1, 2, 3],
            marker: Marker,
            meters: Meters(12),
            shapes: vec![
                Figure::Empty,
                Figure::Circle(2.5),
                Figure::Line(Point(1, -1), Point(2, -2)),
                Figure::Box {
                    corner: Point(0, 5),
                    side: Meters(3),
                },
            ],
        });
        round_trip(&false);
        round_trip(&Marker);
        round_trip(&Point(-3, 4));
        round_trip(&(i128::from(i64::MIN), u128::from(u64::MAX)));
        // Bytes may be typed as a string, taken as its UTF-8 bytes.
        let hi = encode(&Schema::Bytes, &Types::new(), &json!("hé"), "v");
        assert_eq!(hi, Ok(vec![3, b'h', 0xc3, 0xa9]));
    }

    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct Listed {
        zebra: u8,
        apple: u8,
    }

    /// Fields print in the order the type declares them, and a map's entries in the order they
    /// came, as the server wrote them.
    #[test]
    fn fields_and_entries_keep_their_order() {
        let (schema, types) = traced::<(Listed, Vec<(String, u8)>)>();
        let value = (Listed { zebra: 1, apple: 2 }, vec![("b".to_owned(), 3u8)]);
        let bytes = postcard::to_allocvec(&value).expect("encodes");
        let json = decode(&schema, &types, &bytes).expect("decodes");
        assert_eq!(json.to_string(), r#"[{"zebra":1,"apple":2},[["b",3]]]"#);
        let (schema, types) = traced::<BTreeMap<String, u8>>();
        let json = json!({"b": 1, "a": 2});
        let bytes = encode(&schema, &types, &json, "m").expect("encodes");
        assert_eq!(bytes, [2, 1, b'b', 1, 1, b'a', 2]);
        let back = decode(&schema, &types, &bytes).expect("decodes");
        assert_eq!(back.to_string(), r#"{"b":1,"a":2}"#);
    }

    #[test]
    fn integers_past_64_bits_are_strings_both_ways() {
        let (schema, types) = traced::<(i128, u128)>();
        let value = (i128::MIN, u128::MAX);
        let bytes = postcard::to_allocvec(&value).expect("encodes");
        let json = json!([i128::MIN.to_string(), u128::MAX.to_string()]);
        assert_eq!(decode(&schema, &types, &bytes), Ok(json.clone()));
        assert_eq!(encode(&schema, &types, &json, "v"), Ok(bytes));
        // Any integer may come as a string.
        assert_eq!(
            encode(&Schema::U8, &types, &json!("200"), "v"),
            Ok(vec![200])
        );
        assert_eq!(
            encode(&Schema::I128, &types, &json!(u128::MAX.to_string()), "v"),
            Err(format!("`v`: {} does not fit in i128", u128::MAX))
        );
        // Written as a JSON number, it is read as a float: refused, saying how to write it.
        let as_number: Value = serde_json::from_str(&u128::MAX.to_string()).expect("parses");
        let refused = encode(&Schema::U128, &types, &as_number, "v").expect_err("lossy");
        assert!(
            refused.contains("write an integer past 64 bits as a string"),
            "{refused}"
        );
        assert_eq!(
            encode(&Schema::U64, &types, &as_number, "v"),
            Err("`v`: 3.402823669209385e+38 does not fit in u64".to_owned())
        );
    }

    #[test]
    fn maps_with_other_keys_are_pairs_out_and_either_in() {
        let (schema, types) = traced::<BTreeMap<u32, bool>>();
        let value: BTreeMap<u32, bool> = [(1, true), (300, false)].into();
        let bytes = postcard::to_allocvec(&value).expect("encodes");
        let pairs = json!([[1, true], [300, false]]);
        assert_eq!(decode(&schema, &types, &bytes), Ok(pairs.clone()));
        assert_eq!(encode(&schema, &types, &pairs, "m"), Ok(bytes.clone()));
        let object = json!({"1": true, "300": false});
        assert_eq!(encode(&schema, &types, &object, "m"), Ok(bytes));
        assert_eq!(
            encode(&schema, &types, &json!([[1, true, 2]]), "m"),
            Err(
                "`m`: expected an object, or an array of [key, value] pairs, found an array of 1"
                    .to_owned()
            )
        );
    }

    /// An object's keys are strings to a key type that takes strings, and JSON to any other.
    #[test]
    fn object_keys_are_read_as_their_type_takes_them() {
        let types: Types = [
            ("Name".to_owned(), TypeDef::NewtypeStruct(Schema::Str)),
            (
                "Code".to_owned(),
                TypeDef::Enum(vec![("1".to_owned(), Variant::Unit)]),
            ),
            (
                "Loop".to_owned(),
                TypeDef::NewtypeStruct(Schema::Named("Loop".to_owned())),
            ),
        ]
        .into();
        let map = |key: Schema| Schema::Map(Box::new(key), Box::new(Schema::U8));
        let named = |name: &str| Schema::Named(name.to_owned());
        let pair = |key: Schema| Schema::Tuple(vec![key.clone(), key]);
        let read = [
            (map(Schema::Bool), json!({"true": 1}), vec![1, 1, 1]),
            (
                map(pair(Schema::U8)),
                json!({"[1, 2]": 3}),
                vec![1, 1, 2, 3],
            ),
            (map(named("Name")), json!({"1": 2}), vec![1, 1, b'1', 2]),
            (
                map(Schema::Option(Box::new(Schema::Str))),
                json!({"1": 2}),
                vec![1, 1, 1, b'1', 2],
            ),
            (map(named("Code")), json!({"1": 4}), vec![1, 0, 4]),
        ];
        for (schema, json, bytes) in read {
            assert_eq!(encode(&schema, &types, &json, "m"), Ok(bytes), "{schema}");
        }
        // A type that is its own newtype: refused, not followed for ever.
        let endless = encode(&map(named("Loop")), &types, &json!({"a": 1}), "m");
        assert!(endless.is_err_and(|why| why.contains("nests more than 128 deep")));
    }

    #[test]
    fn integers_that_do_not_fit_their_type_are_refused() {
        let types = Types::new();
        let refused = [
            (Schema::I8, json!(128), "128 does not fit in i8"),
            (Schema::I16, json!(40_000), "40000 does not fit in i16"),
            (
                Schema::I32,
                json!(3_000_000_000u64),
                "3000000000 does not fit in i32",
            ),
            (
                Schema::I64,
                json!(u64::MAX),
                "18446744073709551615 does not fit in i64",
            ),
            (Schema::U8, json!(256), "256 does not fit in u8"),
            (Schema::U16, json!(70_000), "70000 does not fit in u16"),
            (
                Schema::U32,
                json!(5_000_000_000u64),
                "5000000000 does not fit in u32",
            ),
            (Schema::U64, json!(-1), "-1 does not fit in u64"),
            (
                Schema::U64,
                json!("18446744073709551616"),
                "18446744073709551616 does not fit in u64",
            ),
            (Schema::U128, json!(-1), "-1 does not fit in u128"),
        ];
        for (schema, json, why) in refused {
            assert_eq!(
                encode(&schema, &types, &json, "n"),
                Err(format!("`n`: {why}")),
                "{schema}"
            );
        }
        assert_eq!(
            encode(&Schema::I8, &types, &json!("many"), "n"),
            Err("`n`: expected an integer (i8), found the string \"many\"".to_owned())
        );
    }

    #[test]
    fn json_of_the_wrong_shape_is_refused_with_what_was_expected() {
        let (schema, types) = traced::<Vec<Figure>>();
        let refused = [
            (
                json!(["Round"]),
                "`s[0]`: `Figure` has no variant `Round`; its variants are \
                Empty, Circle, Line, Box",
            ),
            (json!([{"Empty": 1}]), "`s[0].Empty` takes no value"),
            (
                json!([{"Circle": 1.0, "Empty": null}]),
                "`s[0]`: expected a variant of `Figure`: \
                \"Variant\" or {\"Variant\": ...}, one of Empty, Circle, Line, Box, found an object",
            ),
            (
                json!([{"Line": [[1, 2]]}]),
                "`s[0].Line`: expected an array of 2 items, found an \
                array of 1",
            ),
            (
                json!([{"Line": [[1, 2], [3, 4, 5]]}]),
                "`s[0].Line[1]`: expected an array of 2 \
                items, found an array of 3",
            ),
            (
                json!([{"Box": {"corner": [0, 0]}}]),
                "`s[0].Box.side` (Meters) is missing",
            ),
            (
                json!([{"Box": {"corner": [0, 0], "side": 1, "colour": 2}}]),
                "`s[0].Box` has no \
                field `colour`; its fields are (corner: Point, side: Meters)",
            ),
        ];
        for (json, why) in refused {
            assert_eq!(
                encode(&schema, &types, &json, "s"),
                Err(why.to_owned()),
                "{json}"
            );
        }
        let refused = [
            (
                Schema::Unit,
                json!(0),
                "`v`: expected null, found the number 0",
            ),
            (
                Schema::Bool,
                json!(1),
                "`v`: expected `true` or `false`, found the number 1",
            ),
            (
                Schema::Char,
                json!("ab"),
                "`v`: expected a string of one character (char), found \
                the string \"ab\"",
            ),
            (
                Schema::Str,
                json!(null),
                "`v`: expected a string, found null",
            ),
            (
                Schema::Bytes,
                json!([256]),
                "`v`: expected an array of bytes (0 to 255), found an \
                array of 1",
            ),
            (
                Schema::Named("Marker".to_owned()),
                json!(false),
                "`v`: expected null, found \
                `false`",
            ),
        ];
        let (_, types) = traced::<Everything>();
        for (schema, json, why) in refused {
            assert_eq!(
                encode(&schema, &types, &json, "v"),
                Err(why.to_owned()),
                "{schema}"
            );
        }
    }

    #[test]
    fn arguments_come_by_name_or_in_order_and_null_only_for_none() {
        let mut tracer = ServiceTracer::new("Calc");
        tracer
            .method("add", false)
            .arg::<i64>("a")
            .arg::<i64>("b")
            .returns::<i64>();
        tracer.method("now", false).returns::<u64>();
        tracer
            .method("name", false)
            .arg::<Option<String>>("of")
            .returns::<String>();
        let service = tracer.finish().expect("a schema");
        let (add, now, name) = (
            &service.methods[0],
            &service.methods[1],
            &service.methods[2],
        );
        let bytes = postcard::to_allocvec(&(2i64, -3i64)).expect("encodes");
        let types = &service.types;
        assert_eq!(encode_args(add, types, &json!([2, -3])), Ok(bytes.clone()));
        assert_eq!(
            encode_args(add, types, &json!({"b": -3, "a": 2})),
            Ok(bytes)
        );
        assert_eq!(encode_args(now, types, &json!(null)), Ok(Vec::new()));
        assert_eq!(encode_args(now, types, &json!([])), Ok(Vec::new()));
        // A method of one argument takes its value alone, `null` included, unless an object
        // or an array, which are all the arguments.
        let some = postcard::to_allocvec(&Some("ada")).expect("encodes");
        assert_eq!(encode_args(name, types, &json!("ada")), Ok(some.clone()));
        assert_eq!(encode_args(name, types, &json!(["ada"])), Ok(some.clone()));
        assert_eq!(encode_args(name, types, &json!({"of": "ada"})), Ok(some));
        let none = postcard::to_allocvec(&None::<String>).expect("encodes");
        assert_eq!(encode_args(name, types, &json!(null)), Ok(none));
        // Nothing given for a method that takes something.
        assert_eq!(
            encode_args(add, types, &json!(null)),
            Err("`add` takes 2 arguments (a: i64, b: i64), and none were given".to_owned())
        );
        assert_eq!(
            encode_args(add, types, &json!(true)),
            Err("`add` takes 2 arguments (a: i64, b: i64), and 1 was given (`true`)".to_owned())
        );
        assert_eq!(
            encode_args(now, types, &json!(5)),
            Err("`now` takes no arguments, and 1 was given (the number 5)".to_owned())
        );
        assert_eq!(
            encode_args(now, types, &json!([5])),
            Err("`now` takes no arguments, and 1 was given".to_owned())
        );
        assert_eq!(
            encode_args(add, types, &json!(2)),
            Err(
                "`add` takes 2 arguments (a: i64, b: i64), and 1 was given (the number 2)"
                    .to_owned()
            )
        );
    }

    /// An answer holds, all told, at most one item a byte and [`ZERO_SIZED_ITEMS`] more: a
    /// claim of 2^64 - 1 units, in ten bytes, is refused rather than counted.
    #[test]
    fn an_answer_holds_no_more_items_than_its_bytes_allow() {
        let types = Types::new();
        let units = Schema::Seq(Box::new(Schema::Unit));
        let most = 2 + ZERO_SIZED_ITEMS;
        let within = postcard::to_allocvec(&vec![(); most]).expect("encodes");
        assert_eq!(within.len(), 2);
        let decoded = decode(&units, &types, &within).map(|units| units.as_array().map(Vec::len));
        assert_eq!(decoded, Ok(Some(most)));
        let too_many = "the answer does not decode as Vec<()>: its sequences and maps hold more \
                        items than one a byte and 4096 more";
        let past = postcard::to_allocvec(&vec![(); most + 1]).expect("encodes");
        assert_eq!(decode(&units, &types, &past), Err(too_many.to_owned()));
        let lie = postcard::to_allocvec(&u64::MAX).expect("encodes");
        assert_eq!(decode(&units, &types, &lie), Err(too_many.to_owned()));
        let map = Schema::Map(Box::new(Schema::Unit), Box::new(Schema::Unit));
        let refused = decode(&map, &types, &lie);
        assert!(refused.is_err_and(|why| why.ends_with("one a byte and 4096 more")));
    }

    /// An option of an option (or of the unit) writes `Some(None)` as `{"Some": null}`, which
    /// `null`, its `None`, would lose; a `Some` that `null` cannot be mistaken for stays plain.
    #[test]
    fn some_of_a_value_written_null_is_written_apart_from_none() {
        let types = Types::new();
        let option = |inner| Schema::Option(Box::new(inner));
        let twice = option(option(Schema::U8));
        let cases = [
            (None, json!(null)),
            (Some(None), json!({"Some": null})),
            (Some(Some(5u8)), json!(5)),
        ];
        for (value, written) in cases {
            let bytes = postcard::to_allocvec(&value).expect("encodes");
            assert_eq!(
                decode(&twice, &types, &bytes),
                Ok(written.clone()),
                "{value:?}"
            );
            assert_eq!(
                encode(&twice, &types, &written, "v"),
                Ok(bytes),
                "{value:?}"
            );
        }
        let some_five = postcard::to_allocvec(&Some(Some(5u8))).expect("encodes");
        assert_eq!(
            encode(&twice, &types, &json!({"Some": 5}), "v"),
            Ok(some_five)
        );

        let thrice = option(twice);
        let value = Some(Some(None::<u8>));
        let bytes = postcard::to_allocvec(&value).expect("encodes");
        let written = json!({"Some": {"Some": null}});
        assert_eq!(decode(&thrice, &types, &bytes), Ok(written.clone()));
        assert_eq!(encode(&thrice, &types, &written, "v"), Ok(bytes));

        let unit = option(Schema::Unit);
        let bytes = postcard::to_allocvec(&Some(())).expect("encodes");
        assert_eq!(decode(&unit, &types, &bytes), Ok(json!({"Some": null})));
        assert_eq!(
            encode(&unit, &types, &json!({"Some": null}), "v"),
            Ok(bytes)
        );

        // An option of a type that writes no `null` keeps `{"Some": ...}` for the type itself.
        let mut types = Types::new();
        let variants = vec![("Some".to_owned(), Variant::Newtype(Schema::U8))];
        types.insert("Maybe".to_owned(), TypeDef::Enum(variants));
        let maybe = option(Schema::Named("Maybe".into()));
        let bytes = [1, 0, 7];
        assert_eq!(decode(&maybe, &types, &bytes), Ok(json!({"Some": 7})));
        assert_eq!(
            encode(&maybe, &types, &json!({"Some": 7}), "v"),
            Ok(bytes.to_vec())
        );
    }

    /// Values nest up to [`MAX_DEPTH`] below the top, in JSON and in postcard, and no deeper.
    #[test]
    fn values_nest_as_deep_as_the_limit_and_no_deeper() {
        let types = Types::new();
        let nested = |levels: usize| {
            (0..levels).fold(Schema::U8, |inner, _| Schema::Option(Box::new(inner)))
        };
        let mut bytes = vec![1; MAX_DEPTH];
        bytes.push(5);
        let deepest = nested(MAX_DEPTH);
        assert_eq!(encode(&deepest, &types, &json!(5), "v"), Ok(bytes.clone()));
        assert_eq!(decode(&deepest, &types, &bytes), Ok(json!(5)));

        let deeper = nested(MAX_DEPTH + 1);
        assert_eq!(
            encode(&deeper, &types, &json!(5), "v"),
            Err(format!("`v` nests more than {MAX_DEPTH} deep"))
        );
        bytes.insert(0, 1);
        assert_eq!(
            decode(&deeper, &types, &bytes),
            Err(format!(
                "the answer does not decode as {deeper}: values nest more than {MAX_DEPTH} deep"
            ))
        );
    }

    /// An answer that does not decode says why in a sentence: this tool's own reason when it
    /// has one (postcard keeps none of it), and otherwise the rule the bytes broke.
    #[test]
    fn an_answer_that_does_not_decode_says_why() {
        let types: Types = [(
            "Size".to_owned(),
            TypeDef::Enum(vec![("Small".to_owned(), Variant::Unit)]),
        )]
        .into();
        let size = Schema::Named("Size".to_owned());
        assert_eq!(decode(&size, &types, &[0]), Ok(Value::from("Small")));
        assert_eq!(
            decode(&size, &types, &[5]),
            Err("the answer does not decode as Size: `Size` has no variant 5".to_owned())
        );
        assert_eq!(
            decode(&Schema::Tuple(vec![Schema::U8, Schema::U8]), &types, &[1]),
            Err(
                "the answer does not decode as (u8, u8): the bytes ended before the value did"
                    .to_owned()
            )
        );
    }
}
