//! Schemas: what a service's methods take and return, as the types' structure, read from
//! their serde implementations with no derive of their own.
//!
//! A method's [fingerprint](MethodSchema::fingerprint) is a hash of its schema's canonical form
//! (docs/wire.md, "Fingerprints"): it changes with every change to the bytes on the wire, and
//! with nothing else. A server sends its [`ServiceSchema`] to whoever asks, unless
//! [switched off](crate::ServerBuilder::reflection).
//!
//! ```
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! pub struct Point { x: i32, y: i32 }
//!
//! #[rpc_core::service]
//! pub trait Plot {
//!     async fn draw(&self, at: Point, label: Option<String>) -> bool;
//! }
//!
//! use rpc_core::ServiceClient;
//!
//! let schema = PlotClient::INFO.describe().expect("every type can be described");
//! let draw = &schema.methods[0];
//! assert_eq!(draw.args[0].name, "at");
//! assert_eq!(draw.args[0].schema, rpc_core::schema::Schema::Named("Point".into()));
//! print!("{}", schema.to_rust());
//! ```

mod canonical;
mod compare;
mod read_back;
mod render;
mod trace;

use std::collections::BTreeMap;
use std::fmt;

pub use compare::{Incompatibility, difference, incompatibilities};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The structure of a type as postcard encodes it. Named types ([`Schema::Named`]) are defined
/// in the [`ServiceSchema::types`] of their service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Schema {
    /// `()`: nothing on the wire.
    Unit,
    /// `bool`.
    Bool,
    /// `i8`.
    I8,
    /// `i16`.
    I16,
    /// `i32`.
    I32,
    /// `i64`.
    I64,
    /// `i128`.
    I128,
    /// `u8`.
    U8,
    /// `u16`.
    U16,
    /// `u32`.
    U32,
    /// `u64`.
    U64,
    /// `u128`.
    U128,
    /// `f32`.
    F32,
    /// `f64`.
    F64,
    /// `char`.
    Char,
    /// `String` or `&str`.
    Str,
    /// A byte string: `serde_bytes::ByteBuf`, `Payload`, or a `Vec<u8>` argument or result.
    Bytes,
    /// `Option<T>`.
    Option(#[serde(deserialize_with = "nested")] Box<Schema>),
    /// A sequence: `Vec<T>`, `HashSet<T>`, `VecDeque<T>`...
    Seq(#[serde(deserialize_with = "nested")] Box<Schema>),
    /// A map: `HashMap<K, V>`, `BTreeMap<K, V>`...
    Map(
        #[serde(deserialize_with = "nested")] Box<Schema>,
        #[serde(deserialize_with = "nested")] Box<Schema>,
    ),
    /// A tuple or an array (`[T; N]` is a tuple of `N` items).
    Tuple(#[serde(deserialize_with = "nested")] Vec<Schema>),
    /// A struct or an enum, by name; its definition is in the service's `types`.
    Named(String),
}

/// How deep a schema read from a peer may nest: a hostile server's description cannot exhaust
/// the stack of the client reading it.
const MAX_NESTING: usize = 128;

thread_local! {
    /// How deep the schema being read on this thread nests where it is.
    static NESTING: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Reads a part of a schema nested in another, refusing to go deeper than [`MAX_NESTING`].
fn nested<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    let depth = NESTING.with(|nesting| {
        nesting.set(nesting.get() + 1);
        nesting.get()
    });
    let read = if depth > MAX_NESTING {
        Err(serde::de::Error::custom(format!(
            "the schema nests more than {MAX_NESTING} deep"
        )))
    } else {
        T::deserialize(deserializer)
    };
    NESTING.with(|nesting| nesting.set(nesting.get() - 1));
    read
}

/// A named type: a struct or an enum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TypeDef {
    /// `struct Marker;`
    UnitStruct,
    /// `struct Id(u64);`
    NewtypeStruct(Schema),
    /// `struct Pair(i32, i32);`
    TupleStruct(Vec<Schema>),
    /// `struct Point { x: i32, y: i32 }`
    Struct(Vec<Field>),
    /// An enum: each variant, by name, in order.
    Enum(Vec<(String, Variant)>),
}

/// One variant of an enum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Variant {
    /// `Empty`
    Unit,
    /// `Some(T)`
    Newtype(Schema),
    /// `Pair(i32, i32)`
    Tuple(Vec<Schema>),
    /// `Point { x: i32, y: i32 }`
    Struct(Vec<Field>),
}

/// A named field, or a named argument.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    /// The field's name.
    pub name: String,
    /// Its type.
    pub schema: Schema,
}

/// One method of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MethodSchema {
    /// The method's name.
    pub name: String,
    /// The arguments sent in the request, in order (a streamed argument is not among them).
    pub args: Vec<Field>,
    /// The streamed argument, if the method takes one: its name, and its items' type.
    pub upload: Option<Field>,
    /// What the method returns; for a streamed result, the items' type.
    pub result: Schema,
    /// Whether the result is a stream of `result` items, and whether an error may come in its
    /// place.
    pub download: Download,
    /// Whether running the method twice does no harm (`#[rpc(idempotent)]`).
    pub idempotent: bool,
    /// The hash of the method's canonical schema: equal on both sides exactly when they
    /// encode its arguments and result alike.
    pub fingerprint: u64,
}

/// Whether a method's result is streamed, and how.
///
/// In postcard a varint variant index, so that the first two read as postcard's `false` and
/// `true`: the schemas of methods that do not return a fallible stream are the bytes they were
/// when this was a `bool`. In JSON (lock files) likewise `false`, `true`, or
/// `{"ItemsOrError": schema}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Download {
    /// One value of the method's `result` type (`-> T`).
    None,
    /// A stream of `result` items (`-> Streaming<T>`).
    Items,
    /// A stream of `result` items, or, instead of the stream, an error of this type
    /// (`-> Result<Streaming<T>, E>`).
    ItemsOrError(Schema),
}

/// [`Download`] as postcard writes it: a variant index, then the error's schema.
#[derive(Serialize, Deserialize)]
#[serde(rename = "Download")]
enum DownloadWire<S> {
    None,
    Items,
    ItemsOrError(S),
}

/// [`Download`] as JSON writes it: a `bool`, or the error's schema under its variant's name.
#[derive(Deserialize)]
#[serde(untagged)]
enum DownloadJson {
    Flag(bool),
    Tagged(DownloadWire<Schema>),
}

impl Serialize for Download {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Download::None if serializer.is_human_readable() => serializer.serialize_bool(false),
            Download::Items if serializer.is_human_readable() => serializer.serialize_bool(true),
            Download::None => DownloadWire::<&Schema>::None.serialize(serializer),
            Download::Items => DownloadWire::<&Schema>::Items.serialize(serializer),
            Download::ItemsOrError(error) => {
                DownloadWire::ItemsOrError(error).serialize(serializer)
            }
        }
    }
}

impl<'de> Deserialize<'de> for Download {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = if deserializer.is_human_readable() {
            match DownloadJson::deserialize(deserializer)? {
                DownloadJson::Flag(false) => DownloadWire::None,
                DownloadJson::Flag(true) => DownloadWire::Items,
                DownloadJson::Tagged(wire) => wire,
            }
        } else {
            DownloadWire::deserialize(deserializer)?
        };
        Ok(match wire {
            DownloadWire::None => Download::None,
            DownloadWire::Items => Download::Items,
            DownloadWire::ItemsOrError(error) => Download::ItemsOrError(error),
        })
    }
}

impl Download {
    /// Whether the result is streamed.
    pub fn is_stream(&self) -> bool {
        !matches!(self, Download::None)
    }

    /// The type of the error that may come instead of the stream.
    pub fn error(&self) -> Option<&Schema> {
        match self {
            Download::ItemsOrError(error) => Some(error),
            Download::None | Download::Items => None,
        }
    }
}

/// Everything a service's methods send and receive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSchema {
    /// The service's name, as the trait is named.
    pub name: String,
    /// Its methods, in the order the trait declares them.
    pub methods: Vec<MethodSchema>,
    /// The named types the methods use, at any depth, by name. Two types of one name are told
    /// apart by a suffix (`Item`, `Item#2`).
    pub types: BTreeMap<String, TypeDef>,
}

impl ServiceSchema {
    /// The method called `name`.
    pub fn method(&self, name: &str) -> Option<&MethodSchema> {
        self.methods.iter().find(|method| method.name == name)
    }

    /// The service as Rust source that compiles beside serde (with its `derive` feature) and
    /// rpc-core: the `use`s it needs, its types, then its trait, whose generated client calls
    /// a server of this schema. What a schema does not say is chosen so that no byte on the
    /// wire changes: each type derives `Serialize` and `Deserialize` (and `Debug`, `Clone`,
    /// `PartialEq`; `Eq` and `Hash` where a map's key holds it), fields are public, a map is a
    /// `HashMap` (a `Vec` of pairs where its key holds a float or a map, which cannot be
    /// hashed), a set or a byte string is a `Vec`, a type that holds itself directly or through
    /// others (not through a vector or a map) holds itself in a `Box`, a name that is not an
    /// identifier is made one ([`rust_identifier`]; an instance of a generic type one word, as
    /// Rust names types: `Page<String>` as `PageString`), and a method whose types are not
    /// described (`#[rpc(opaque)]`) is left out, with a comment that says so.
    pub fn to_rust(&self) -> String {
        render::service(self)
    }

    /// The canonical form of method `method`, which its fingerprint hashes (docs/wire.md);
    /// `None` if it would be over 256 KiB, or nest over 256 deep.
    pub fn canonical_form(&self, method: &MethodSchema) -> Option<Vec<u8>> {
        canonical::method(method, &self.types)
    }
}

/// Why a service's schema could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    /// The service.
    pub service: &'static str,
    /// The method whose type failed.
    pub method: String,
    /// Where in the method: "the argument `x`", "the result", "the streamed items".
    pub place: String,
    /// The Rust type, as the compiler names it.
    pub type_name: &'static str,
    /// Why.
    pub reason: String,
    /// What kind of problem it is, which says how to mend it.
    pub problem: SchemaProblem,
}

/// What kind of problem a [`SchemaError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SchemaProblem {
    /// The type cannot be described: its `Deserialize` refuses every value made up to read
    /// it, it contains itself with no way out, or its fields nest too widely. Marking the
    /// method `#[rpc(opaque)]` sends it without a schema.
    Undescribable,
    /// The type reads a text and refused every one offered: it parses a form of its own (a
    /// validated newtype, `#[serde(try_from = "String")]`). Naming a text it accepts in the
    /// service's attribute, `#[rpc_core::service(texts("SKU-0001"))]`, lets it be described.
    TextRefused,
    /// The type cannot travel over rpc-core at all: its `Deserialize` asks the format what
    /// comes next (an untagged or internally tagged enum, `#[serde(flatten)]`,
    /// `serde_json::Value`), which postcard, not self-describing, cannot say. Sent without a
    /// schema, its values would still fail to decode.
    NotCarried,
    /// A value of the type does not read back as itself: written with postcard, as every call
    /// is, its bytes read back as an error or as another value. A field its `Serialize` leaves
    /// out (`#[serde(skip_serializing_if = "...")]`, `skip_serializing`) is the usual cause:
    /// postcard is not self-describing, and every field written must be read back in order.
    /// Every call carrying such a value would fail or be misread, schema or not.
    NotReadBack,
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let SchemaError {
            service,
            method,
            place,
            type_name,
            reason,
            problem,
        } = self;
        write!(
            f,
            "the schema of `{service}::{method}` cannot be made: {place} (of type `{type_name}`) "
        )?;
        match problem {
            SchemaProblem::Undescribable => write!(
                f,
                "cannot be described, because {reason}. Mark the method `#[rpc(opaque)]` to send \
                 it without a schema"
            ),
            SchemaProblem::TextRefused => write!(
                f,
                "cannot be described, because {reason}. If it parses a text of a form of its \
                 own, name one it accepts in the service's attribute: \
                 `#[rpc_core::service(texts(\"...\"))]`; or mark the method `#[rpc(opaque)]` \
                 to send it without a schema"
            ),
            SchemaProblem::NotCarried => write!(
                f,
                "cannot travel over rpc-core, because {reason}. Carry what it holds in a type \
                 postcard can read without asking: an externally tagged enum (serde's default) \
                 rather than an untagged or internally tagged one, fields written out rather \
                 than flattened, or a self-describing value as its encoded text or bytes (a \
                 JSON `String`)"
            ),
            SchemaProblem::NotReadBack => write!(
                f,
                "does not read back what it writes: {reason}. rpc-core encodes with postcard, \
                 which writes no field names: every field a value writes is read back in order, \
                 so a field left out when written (`#[serde(skip_serializing_if = \"...\")]`, \
                 `skip_serializing`) or a `Serialize` that disagrees with its `Deserialize` \
                 breaks every call that carries it. Write every field the type reads"
            ),
        }
    }
}

impl std::error::Error for SchemaError {}

/// Traces the schemas of a service's methods, one after another. Generated code calls it.
#[derive(Debug)]
pub struct ServiceTracer {
    name: &'static str,
    tracer: trace::Tracer,
    methods: Vec<MethodSchema>,
    error: Option<SchemaError>,
}

impl ServiceTracer {
    /// Starts the schema of the service `name`.
    pub fn new(name: &'static str) -> Self {
        ServiceTracer::with_texts(name, &[])
    }

    /// Starts the schema of the service `name`, whose types that parse a text of a form of
    /// their own accept one of `texts` (`#[rpc_core::service(texts("SKU-0001"))]`): offered
    /// where a type refuses `""` and `"a"`, before common ones such as a date or an address.
    pub fn with_texts(name: &'static str, texts: &'static [&'static str]) -> Self {
        ServiceTracer {
            name,
            tracer: trace::Tracer::with_texts(texts),
            methods: Vec::new(),
            error: None,
        }
    }

    /// Starts the schema of method `name`.
    pub fn method(&mut self, name: &'static str, idempotent: bool) -> MethodTracer<'_> {
        MethodTracer {
            service: self,
            method: MethodSchema {
                name: name.to_owned(),
                args: Vec::new(),
                upload: None,
                result: Schema::Unit,
                download: Download::None,
                idempotent,
                fingerprint: 0,
            },
            opaque: None,
        }
    }

    /// The service's schema, or the first type that could not be described.
    pub fn finish(self) -> Result<ServiceSchema, SchemaError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let types = self.tracer.types();
        let mut methods = self.methods;
        for method in &mut methods {
            if method.fingerprint != 0 {
                continue;
            }
            let Some(form) = canonical::method(method, &types) else {
                return Err(SchemaError {
                    service: self.name,
                    method: method.name.clone(),
                    place: "its arguments and result".to_owned(),
                    type_name: "(all of them)",
                    reason: format!(
                        "their canonical form would be over {} bytes: their types' fields \
                         nest too widely",
                        canonical::MAX_LEN
                    ),
                    problem: SchemaProblem::Undescribable,
                });
            };
            method.fingerprint = canonical::fingerprint(&form);
        }
        Ok(ServiceSchema {
            name: self.name.to_owned(),
            methods,
            types,
        })
    }

    /// The schema of `T`, for `place` in `method`; a value of `T` made up while tracing that
    /// fails `check` fails the service's schema.
    fn trace<T: DeserializeOwned>(
        &mut self,
        method: &str,
        place: impl FnOnce() -> String,
        check: fn(&[T]) -> Result<(), String>,
    ) -> Schema {
        if self.error.is_some() {
            return Schema::Unit;
        }
        let traced = self.tracer.trace_made::<T>();
        let (reason, problem) = match traced {
            Ok((schema, made)) => match check(&made) {
                Ok(()) => return schema,
                Err(reason) => (reason, SchemaProblem::NotReadBack),
            },
            Err(untraced) => untraced,
        };
        self.error = Some(SchemaError {
            service: self.name,
            method: method.to_owned(),
            place: place(),
            type_name: std::any::type_name::<T>(),
            reason,
            problem,
        });
        Schema::Unit
    }
}

/// Traces one method's schema, part by part. Generated code calls it.
#[derive(Debug)]
pub struct MethodTracer<'s> {
    service: &'s mut ServiceTracer,
    method: MethodSchema,
    opaque: Option<u64>,
}

impl MethodTracer<'_> {
    /// The method is sent without a schema (`#[rpc(opaque)]`): its fingerprint is
    /// `fingerprint`, a hash of its signature's text, and its types are not traced.
    pub fn opaque(mut self, fingerprint: u64) -> Self {
        self.opaque = Some(fingerprint);
        self
    }

    /// Its next argument, `name`, of type `T`.
    pub fn arg<T: Serialize + DeserializeOwned>(mut self, name: &'static str) -> Self {
        let schema = self.schema::<T>(|| format!("the argument `{name}`"));
        self.with_arg(name, schema)
    }

    /// Its next argument, `name`, of `schema`.
    fn with_arg(mut self, name: &'static str, schema: Schema) -> Self {
        self.method.args.push(Field {
            name: name.to_owned(),
            schema,
        });
        self
    }

    /// Its streamed argument, `name`, with items of type `T`.
    pub fn upload<T: Serialize + DeserializeOwned>(mut self, name: &'static str) -> Self {
        let schema = self.schema::<T>(|| format!("the items of the streamed argument `{name}`"));
        self.method.upload = Some(Field {
            name: name.to_owned(),
            schema,
        });
        self
    }

    /// Its result, of type `T`.
    pub fn returns<T: Serialize + DeserializeOwned>(mut self) {
        self.method.result = self.schema::<T>(|| "the result".to_owned());
        self.done();
    }

    /// Its streamed result, with items of type `T`.
    pub fn streams<T: Serialize + DeserializeOwned>(mut self) {
        self.method.result = self.schema::<T>(|| "the streamed result's items".to_owned());
        self.method.download = Download::Items;
        self.done();
    }

    /// Its streamed result, with items of type `T`, or instead of the stream an error of type
    /// `E` (`-> Result<Streaming<T>, E>`).
    pub fn streams_or_fails<T, E>(mut self)
    where
        T: Serialize + DeserializeOwned,
        E: Serialize + DeserializeOwned,
    {
        self.method.result = self.schema::<T>(|| "the streamed result's items".to_owned());
        let error = self.schema::<E>(|| "the error returned instead of a stream".to_owned());
        self.method.download = Download::ItemsOrError(error);
        self.done();
    }

    /// The schema of `T`, for `place`, if it reads back what it writes.
    fn schema<T: Serialize + DeserializeOwned>(
        &mut self,
        place: impl FnOnce() -> String,
    ) -> Schema {
        self.schema_checked(place, read_back::check::<T>)
    }

    /// The schema of `T`, for `place`, if its made-up values pass `check`.
    fn schema_checked<T: DeserializeOwned>(
        &mut self,
        place: impl FnOnce() -> String,
        check: fn(&[T]) -> Result<(), String>,
    ) -> Schema {
        if self.opaque.is_some() {
            return Schema::Named(std::any::type_name::<T>().to_owned());
        }
        self.service.trace::<T>(&self.method.name, place, check)
    }

    /// An argument, `name`, of a type that is only read, not written: for tests of tracing
    /// alone, whose types deserialize by hand.
    #[cfg(test)]
    pub(crate) fn read_only_arg<T: DeserializeOwned>(mut self, name: &'static str) -> Self {
        let schema = self.schema_checked::<T>(|| format!("the argument `{name}`"), |_| Ok(()));
        self.with_arg(name, schema)
    }

    fn done(mut self) {
        if let Some(fingerprint) = self.opaque {
            // Never 0: 0 marks a fingerprint still to compute.
            self.method.fingerprint = fingerprint.max(1);
        }
        self.service.methods.push(self.method);
    }
}

/// `name` as a Rust identifier, as [`ServiceSchema::to_rust`] writes names: as it is if it is
/// one; a keyword raw (`r#type`); anything else with each character an identifier cannot hold
/// made `_` (`first-name` becomes `first_name`), and `_` before a name that would start with a
/// digit or be `self`, `Self`, `super` or `crate`.
pub fn rust_identifier(name: &str) -> String {
    render::ident(name)
}

impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&render::schema(self))
    }
}

#[cfg(test)]
mod made_up;
#[cfg(test)]
mod tests;
