#![allow(dead_code, unreachable_pub)]
//! Schemas traced from serde types, and fingerprints that follow the bytes on the wire.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::canonical;
use super::*;

/// The schema of a one-method service taking a `T` and returning `()`, and its fingerprint.
fn traced<T: Serialize + DeserializeOwned>() -> (ServiceSchema, u64) {
    let mut tracer = ServiceTracer::new("Test");
    tracer
        .method("call", false)
        .arg::<T>("value")
        .returns::<()>();
    let schema = tracer.finish().expect("describable");
    let fingerprint = schema.methods[0].fingerprint;
    (schema, fingerprint)
}

fn fingerprint<T: Serialize + DeserializeOwned>() -> u64 {
    traced::<T>().1
}

fn arg(schema: &ServiceSchema) -> &Schema {
    &schema.methods[0].args[0].schema
}

#[derive(Serialize, Deserialize)]
struct Point {
    x: i32,
    y: i32,
}

#[derive(Serialize, Deserialize)]
enum Shape {
    Empty,
    Circle(f64),
    Segment(Point, Point),
    Polygon { corners: Vec<Point>, closed: bool },
}

#[derive(Serialize, Deserialize)]
enum Tree {
    Leaf(u32),
    Node(Box<Tree>, Box<Tree>),
}

#[derive(Serialize, Deserialize)]
enum List {
    Cons(u32, Box<List>),
    Nil,
}

#[derive(Serialize, Deserialize)]
struct Chain {
    value: String,
    next: Option<Box<Chain>>,
}

#[derive(Serialize, Deserialize)]
struct Everything {
    flags: (bool, char),
    small: (i8, i16, i32, i64, i128),
    unsigned: (u8, u16, u32, u64, u128),
    real: (f32, f64),
    text: String,
    bytes: serde_bytes::ByteBuf,
    payload: crate::Payload,
    list: Vec<u16>,
    set: HashSet<String>,
    map: HashMap<String, Vec<Tree>>,
    sorted: BTreeMap<u8, Shape>,
    array: [u8; 3],
    unit: (),
    marker: Marker,
    id: Id,
    pair: Pair,
    chain: Chain,
    list_of: List,
}

#[derive(Serialize, Deserialize)]
struct Marker;

#[derive(Serialize, Deserialize)]
struct Id(u64);

#[derive(Serialize, Deserialize)]
struct Pair(i32, String);

#[test]
fn every_kind_of_type_is_described() {
    let (schema, _) = traced::<Everything>();
    assert_eq!(*arg(&schema), Schema::Named("Everything".into()));
    let TypeDef::Struct(fields) = &schema.types["Everything"] else {
        panic!("a struct: {schema:?}");
    };
    let field = |name: &str| {
        &fields
            .iter()
            .find(|field| field.name == name)
            .expect("the field")
            .schema
    };
    use Schema::*;
    assert_eq!(*field("flags"), Tuple(vec![Bool, Char]));
    assert_eq!(*field("small"), Tuple(vec![I8, I16, I32, I64, I128]));
    assert_eq!(*field("unsigned"), Tuple(vec![U8, U16, U32, U64, U128]));
    assert_eq!(*field("real"), Tuple(vec![F32, F64]));
    assert_eq!(*field("text"), Str);
    assert_eq!(*field("bytes"), Bytes);
    assert_eq!(*field("payload"), Bytes);
    assert_eq!(*field("list"), Seq(Box::new(U16)));
    assert_eq!(*field("set"), Seq(Box::new(Str)));
    let trees = Seq(Box::new(Named("Tree".into())));
    assert_eq!(*field("map"), Map(Box::new(Str), Box::new(trees)));
    assert_eq!(*field("array"), Tuple(vec![U8, U8, U8]));
    assert_eq!(*field("unit"), Unit);
    assert_eq!(schema.types["Marker"], TypeDef::UnitStruct);
    assert_eq!(schema.types["Id"], TypeDef::NewtypeStruct(U64));
    assert_eq!(schema.types["Pair"], TypeDef::TupleStruct(vec![I32, Str]));
    assert_eq!(
        schema.types["Shape"],
        TypeDef::Enum(vec![
            ("Empty".into(), Variant::Unit),
            ("Circle".into(), Variant::Newtype(F64)),
            (
                "Segment".into(),
                Variant::Tuple(vec![Named("Point".into()), Named("Point".into())])
            ),
            (
                "Polygon".into(),
                Variant::Struct(vec![
                    Field {
                        name: "corners".into(),
                        schema: Seq(Box::new(Named("Point".into())))
                    },
                    Field {
                        name: "closed".into(),
                        schema: Bool
                    },
                ])
            ),
        ])
    );
    let tree = Named("Tree".into());
    assert_eq!(
        schema.types["Tree"],
        TypeDef::Enum(vec![
            ("Leaf".into(), Variant::Newtype(U32)),
            ("Node".into(), Variant::Tuple(vec![tree.clone(), tree])),
        ])
    );
    let list = Named("List".into());
    assert_eq!(
        schema.types["List"],
        TypeDef::Enum(vec![
            ("Cons".into(), Variant::Tuple(vec![U32, list])),
            ("Nil".into(), Variant::Unit),
        ])
    );
    let TypeDef::Struct(chain) = &schema.types["Chain"] else {
        panic!("a struct");
    };
    assert_eq!(chain[1].schema, Option(Box::new(Named("Chain".into()))));
}

#[test]
fn fingerprints_follow_the_bytes_on_the_wire() {
    mod before {
        #[derive(serde::Serialize, serde::Deserialize)]
        pub struct User {
            pub name: String,
            pub age: u32,
        }
    }
    mod renamed {
        #[derive(serde::Serialize, serde::Deserialize)]
        pub struct Person {
            pub full_name: std::string::String,
            pub years: u32,
        }
    }
    mod added {
        #[derive(serde::Serialize, serde::Deserialize)]
        pub struct User {
            pub name: String,
            pub age: u32,
            pub email: Option<String>,
        }
    }
    mod retyped {
        #[derive(serde::Serialize, serde::Deserialize)]
        pub struct User {
            pub name: String,
            pub age: u64,
        }
    }
    mod reordered {
        #[derive(serde::Serialize, serde::Deserialize)]
        pub struct User {
            pub age: u32,
            pub name: String,
        }
    }
    mod removed {
        #[derive(serde::Serialize, serde::Deserialize)]
        pub struct User {
            pub name: String,
        }
    }
    type Years = u32;
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Aliased {
        name: String,
        age: Years,
    }

    let base = fingerprint::<before::User>();
    assert_eq!(
        base,
        fingerprint::<renamed::Person>(),
        "names are not on the wire"
    );
    assert_eq!(base, fingerprint::<Aliased>(), "an alias is the same type");
    assert_eq!(
        base,
        fingerprint::<(String, u32)>(),
        "a struct is its fields in order"
    );
    for (change, other) in [
        ("a field added", fingerprint::<added::User>()),
        ("a field retyped", fingerprint::<retyped::User>()),
        ("fields reordered", fingerprint::<reordered::User>()),
        ("a field removed", fingerprint::<removed::User>()),
    ] {
        assert_ne!(base, other, "{change}");
    }
}

#[test]
fn enum_fingerprints_follow_their_variants() {
    #[derive(serde::Serialize, serde::Deserialize)]
    enum Before {
        A,
        B(u8),
    }
    #[derive(serde::Serialize, serde::Deserialize)]
    enum Inserted {
        A,
        New,
        B(u8),
    }
    #[derive(serde::Serialize, serde::Deserialize)]
    enum Appended {
        A,
        B(u8),
        New,
    }
    #[derive(serde::Serialize, serde::Deserialize)]
    enum Renamed {
        First,
        Second(u8),
    }
    #[derive(serde::Serialize, serde::Deserialize)]
    enum Wider {
        A,
        B(u16),
    }
    let base = fingerprint::<Before>();
    assert_eq!(base, fingerprint::<Renamed>());
    assert_ne!(base, fingerprint::<Inserted>());
    assert_ne!(base, fingerprint::<Appended>());
    assert_ne!(base, fingerprint::<Wider>());
}

#[test]
fn byte_buffers_and_byte_vectors_are_one_thing_on_the_wire() {
    let bytes = fingerprint::<serde_bytes::ByteBuf>();
    assert_eq!(bytes, fingerprint::<Vec<u8>>());
    assert_eq!(bytes, fingerprint::<crate::Payload>());
    assert_ne!(bytes, fingerprint::<String>());
    assert_ne!(bytes, fingerprint::<Vec<i8>>());
}

#[test]
fn recursive_types_get_distinct_fingerprints() {
    #[derive(serde::Serialize, serde::Deserialize)]
    enum Other {
        Leaf(u32),
        Node(Box<Other>),
    }
    assert_ne!(fingerprint::<Tree>(), fingerprint::<Other>());
    assert_ne!(fingerprint::<Tree>(), fingerprint::<List>());
    assert_eq!(fingerprint::<Tree>(), fingerprint::<Tree>());
}

#[test]
fn a_type_postcard_cannot_carry_is_refused_with_its_name() {
    #[derive(serde::Serialize, serde::Deserialize)]
    #[serde(untagged)]
    enum Loose {
        Number(u32),
        Text(String),
    }
    let mut tracer = ServiceTracer::new("Test");
    tracer
        .method("call", false)
        .arg::<u8>("fine")
        .arg::<Loose>("loose")
        .returns::<()>();
    let error = tracer
        .finish()
        .expect_err("untagged enums need deserialize_any");
    assert_eq!(error.method, "call");
    assert_eq!(error.place, "the argument `loose`");
    assert_eq!(error.problem, SchemaProblem::NotCarried);
    assert!(error.type_name.ends_with("Loose"), "{error}");
    let said = error.to_string();
    assert!(said.contains("cannot travel over rpc-core"), "{said}");
    assert!(said.contains("externally tagged enum"), "{said}");
    assert!(
        !said.contains("#[rpc(opaque)]"),
        "opaque would not carry it: {said}"
    );
}

#[test]
fn a_type_whose_deserialize_refuses_every_value_is_told_of_opaque() {
    /// Accepts nothing, so no schema is read from it; postcard could carry it.
    #[derive(Serialize)]
    struct Picky(u8);
    impl<'de> Deserialize<'de> for Picky {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Picky, D::Error> {
            let n = u8::deserialize(deserializer)?;
            Err(serde::de::Error::custom(format!("{n} is too small")))
        }
    }
    let error = refused::<Picky>();
    assert_eq!(error.problem, SchemaProblem::Undescribable);
    assert!(error.to_string().contains("#[rpc(opaque)]"), "{error}");
}

#[test]
fn a_type_that_refuses_zeros_is_traced_with_ones() {
    #[derive(Serialize, Deserialize)]
    struct Ids {
        first: std::num::NonZeroU32,
        rest: Vec<std::num::NonZeroU64>,
        name: Option<String>,
    }
    let (schema, fingerprint) = traced::<Ids>();
    let field = |name: &str, schema: Schema| Field {
        name: name.to_owned(),
        schema,
    };
    assert_eq!(
        schema.types["Ids"],
        TypeDef::Struct(vec![
            field("first", Schema::U32),
            field("rest", Schema::Seq(Box::new(Schema::U64))),
            field("name", Schema::Option(Box::new(Schema::Str))),
        ])
    );
    // The same bytes on the wire as the plain integers: the same fingerprint.
    #[derive(Serialize, Deserialize)]
    struct Plain {
        first: u32,
        rest: Vec<u64>,
        name: Option<String>,
    }
    assert_eq!(fingerprint, self::fingerprint::<Plain>());
}

#[test]
fn a_type_whose_deserialize_refuses_made_up_values_is_refused_with_why() {
    /// Accepts no value at all.
    #[derive(Serialize)]
    struct Never;
    impl<'de> Deserialize<'de> for Never {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Never, D::Error> {
            let n = u8::deserialize(deserializer)?;
            Err(serde::de::Error::custom(format!("{n} is not welcome")))
        }
    }
    let mut tracer = ServiceTracer::new("Test");
    tracer
        .method("call", false)
        .arg::<Never>("n")
        .returns::<()>();
    let error = tracer.finish().expect_err("no value is a Never");
    assert!(
        error
            .reason
            .contains("refused the made-up values (zeros and empty strings, then ones and \"a\""),
        "{error}"
    );
}

#[test]
fn a_deserialize_that_refuses_every_text_is_refused_with_what_it_said() {
    /// Accepts no text at all.
    #[derive(Serialize)]
    struct Mute;
    impl<'de> Deserialize<'de> for Mute {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Mute, D::Error> {
            let text = String::deserialize(deserializer)?;
            Err(serde::de::Error::custom(format!("{text:?} is not welcome")))
        }
    }
    let error = refused::<Mute>();
    assert_eq!(error.problem, SchemaProblem::TextRefused);
    // Offered every text in turn, then ones, which offer the last again.
    let last = trace::TEXTS.last().expect("texts");
    assert!(
        error.reason.contains(&format!("{last:?} is not welcome")),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains("`#[rpc_core::service(texts(\"...\"))]`"),
        "says how to name one it accepts: {error}"
    );
}

/// What types that travel as text parse, and one that reads a byte string of a fixed size.
mod parsed {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// A date, `YYYY-MM-DD`, as date types read one.
    pub struct Date(pub String);
    impl<'de> Deserialize<'de> for Date {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Date, D::Error> {
            let text = String::deserialize(deserializer)?;
            let digits = |range: std::ops::Range<usize>| {
                text.get(range)
                    .is_some_and(|part| part.bytes().all(|b| b.is_ascii_digit()))
            };
            let dashes = text.len() == 10 && &text[4..5] == "-" && &text[7..8] == "-";
            if dashes && digits(0..4) && digits(5..7) && digits(8..10) {
                Ok(Date(text))
            } else {
                Err(serde::de::Error::custom(format!("{text:?} is not a date")))
            }
        }
    }
    impl Serialize for Date {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.serialize_str(&self.0)
        }
    }

    /// A socket address, read from its text.
    pub struct Address(pub std::net::SocketAddr);
    impl<'de> Deserialize<'de> for Address {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Address, D::Error> {
            let text = String::deserialize(deserializer)?;
            text.parse().map(Address).map_err(serde::de::Error::custom)
        }
    }
    impl Serialize for Address {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.collect_str(&self.0)
        }
    }

    /// Sixteen bytes, as a UUID reads them where the format is not human-readable.
    pub struct Id(pub [u8; 16]);
    impl<'de> Deserialize<'de> for Id {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Id, D::Error> {
            let bytes = serde_bytes::ByteBuf::deserialize(deserializer)?;
            let bytes: [u8; 16] = bytes[..]
                .try_into()
                .map_err(|_| serde::de::Error::invalid_length(bytes.len(), &"16 bytes"))?;
            Ok(Id(bytes))
        }
    }
    impl Serialize for Id {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.serialize_bytes(&self.0)
        }
    }
}

/// Validated newtypes, as `#[serde(try_from = "String")]` reads them: the text is read as a
/// `String`, then checked.
mod validated {
    use serde::{Deserialize, Serialize};

    /// Defines a newtype over `String` that accepts the texts `accepts` does.
    macro_rules! validated {
        ($name:ident, $accepts:expr) => {
            #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
            #[serde(try_from = "String", into = "String")]
            pub struct $name(pub String);
            impl TryFrom<String> for $name {
                type Error = String;
                fn try_from(text: String) -> Result<Self, String> {
                    let accepts: fn(&str) -> bool = $accepts;
                    match accepts(&text) {
                        true => Ok($name(text)),
                        false => Err(format!("{text:?} is refused")),
                    }
                }
            }
            impl From<$name> for String {
                fn from(value: $name) -> String {
                    value.0
                }
            }
        };
    }

    validated!(Email, |text| text.split_once('@').is_some_and(
        |(user, domain)| { !user.is_empty() && domain.contains('.') }
    ));
    validated!(Username, |text| {
        (3..=32).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_lowercase())
    });
    // 26 characters of Crockford's base 32, as `ulid::Ulid` reads them.
    validated!(Ulid, |text| {
        text.len() == 26
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
            && text.as_bytes()[0] <= b'7'
    });
    // A date and time with its offset, then a time zone in brackets, as `jiff::Zoned` reads it.
    validated!(Zoned, |text| {
        text.split_once('[').is_some_and(|(time, zone)| {
            time.len() == 25 && time.as_bytes()[19] == b'+' && zone.ends_with(']')
        })
    });
    validated!(Sku, |text| {
        let bytes = text.as_bytes();
        bytes.len() == 8
            && bytes[..3].iter().all(u8::is_ascii_uppercase)
            && bytes[3] == b'-'
            && bytes[4..].iter().all(u8::is_ascii_digit)
    });
}

#[test]
fn validated_texts_of_common_forms_are_offered_one_they_accept() {
    #[derive(Serialize, Deserialize)]
    struct Account {
        email: validated::Email,
        name: Option<validated::Username>,
    }
    let (schema, _) = traced::<Account>();
    assert_eq!(
        schema.types["Account"],
        TypeDef::Struct(vec![
            Field {
                name: "email".into(),
                schema: Schema::Str
            },
            Field {
                name: "name".into(),
                schema: Schema::Option(Box::new(Schema::Str))
            },
        ])
    );
}

#[test]
fn identifiers_and_zoned_times_of_common_crates_are_offered_one_they_accept() {
    let (schema, _) = traced::<(validated::Ulid, validated::Zoned)>();
    assert_eq!(*arg(&schema), Schema::Tuple(vec![Schema::Str, Schema::Str]));
}

#[test]
fn what_one_type_accepted_at_the_root_is_not_where_another_starts() {
    // Both read their text at the root, the same place by its named type (none): the username
    // must be offered the texts from the first again, not from where the email left off.
    let mut tracer = ServiceTracer::new("Test");
    tracer
        .method("mail", false)
        .arg::<validated::Email>("to")
        .returns::<()>();
    tracer
        .method("greet", false)
        .arg::<validated::Username>("name")
        .returns::<()>();
    let schema = tracer.finish().expect("describable");
    assert_eq!(schema.methods[1].args[0].schema, Schema::Str);
}

#[test]
fn a_service_names_the_texts_its_own_types_accept() {
    let error = refused::<validated::Sku>();
    assert_eq!(error.problem, SchemaProblem::TextRefused);
    assert!(error.reason.contains("is refused"), "{error}");

    #[derive(Serialize, Deserialize)]
    struct Line {
        sku: validated::Sku,
        count: u32,
    }
    let mut tracer = ServiceTracer::with_texts("Test", &["12", "ABC-0001"]);
    tracer
        .method("price", false)
        .arg::<validated::Sku>("sku")
        .returns::<Line>();
    let schema = tracer.finish().expect("described with the service's text");
    assert_eq!(schema.methods[0].args[0].schema, Schema::Str);
    // It travels as the `String` it reads: the fingerprint is a `String`'s.
    #[derive(Serialize, Deserialize)]
    struct PlainLine {
        sku: String,
        count: u32,
    }
    let mut plain = ServiceTracer::new("Test");
    plain
        .method("price", false)
        .arg::<String>("sku")
        .returns::<PlainLine>();
    let plain = plain.finish().expect("describable");
    assert_eq!(schema.methods[0].fingerprint, plain.methods[0].fingerprint);
}

#[test]
fn types_that_parse_text_or_read_fixed_bytes_are_offered_what_they_read() {
    #[derive(Serialize, Deserialize)]
    struct Booking {
        on: parsed::Date,
        at: Option<parsed::Address>,
        ids: Vec<parsed::Id>,
        name: String,
    }
    let (schema, _) = traced::<Booking>();
    let field = |name: &str, schema: Schema| Field {
        name: name.to_owned(),
        schema,
    };
    assert_eq!(
        schema.types["Booking"],
        TypeDef::Struct(vec![
            field("on", Schema::Str),
            field("at", Schema::Option(Box::new(Schema::Str))),
            field("ids", Schema::Seq(Box::new(Schema::Bytes))),
            field("name", Schema::Str),
        ])
    );
}

#[test]
fn a_type_that_contains_itself_with_no_way_out_is_refused() {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Endless {
        next: Box<Endless>,
    }
    let mut tracer = ServiceTracer::new("Test");
    tracer
        .method("call", false)
        .arg::<Endless>("e")
        .returns::<()>();
    let error = tracer.finish().expect_err("no value of it exists");
    assert!(error.reason.contains("contains itself"), "{error}");
}

#[test]
fn two_types_of_one_name_are_told_apart() {
    mod a {
        #[derive(serde::Serialize, serde::Deserialize)]
        pub struct Item {
            pub id: u32,
        }
    }
    mod b {
        #[derive(serde::Serialize, serde::Deserialize)]
        pub struct Item {
            pub label: String,
        }
    }
    let (schema, _) = traced::<(a::Item, b::Item)>();
    assert_eq!(
        *arg(&schema),
        Schema::Tuple(vec![
            Schema::Named("Item".into()),
            Schema::Named("Item#2".into())
        ])
    );
    assert_eq!(schema.types.len(), 2);
}

#[test]
fn the_canonical_form_is_the_one_docs_wire_md_works_through() {
    // docs/wire.md, "Fingerprints": `async fn draw(&self, at: Point, label: Option<String>)
    // -> bool` with `struct Point { x: i32, y: i32 }`.
    let mut tracer = ServiceTracer::new("Plot");
    tracer
        .method("draw", false)
        .arg::<Point>("at")
        .arg::<Option<String>>("label")
        .returns::<bool>();
    let schema = tracer.finish().expect("describable");
    let draw = &schema.methods[0];
    assert_eq!(
        schema.canonical_form(draw).expect("small"),
        [0x00, 20, 3, 4, 4, 17, 15, 1],
        "shape, tuple of 3: i32, i32, option of str; then bool"
    );
    assert_eq!(draw.fingerprint, 0xe669_42cb_19e1_708d);
}

#[test]
fn a_recursive_type_is_traced_whatever_comes_after_the_recursion() {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Deep {
        next: Option<Box<Deep>>,
        children: Vec<Deep>,
        by_name: HashMap<String, Deep>,
        shape: Tree,
    }
    let (schema, _) = traced::<Deep>();
    let TypeDef::Struct(fields) = &schema.types["Deep"] else {
        panic!("a struct");
    };
    assert_eq!(fields[3].schema, Schema::Named("Tree".into()));
    assert!(matches!(&schema.types["Tree"], TypeDef::Enum(variants) if variants.len() == 2));
}

#[test]
fn instances_of_a_generic_type_are_told_apart() {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Fail;
    let (schema, _) = traced::<(Result<i64, Fail>, Result<String, Fail>)>();
    assert_eq!(
        *arg(&schema),
        Schema::Tuple(vec![
            Schema::Named("Result<i64, Fail>".into()),
            Schema::Named("Result<String, Fail>".into())
        ])
    );
    // Rendered as Rust: the standard library's `Result` is named, not defined again.
    let rust = schema.to_rust();
    assert!(!rust.contains("pub enum Result"), "{rust}");
    assert!(rust.contains("pub struct Fail;"), "{rust}");
    assert!(
        rust.contains("value: (Result<i64, Fail>, Result<String, Fail>)"),
        "{rust}"
    );
}

#[test]
fn every_variant_of_an_enum_inside_an_enum_is_traced() {
    #[derive(serde::Serialize, serde::Deserialize)]
    enum Failure {
        Overflow,
        Invalid { why: String },
        Nested(Tree),
    }
    let (schema, _) = traced::<Result<i64, Failure>>();
    let TypeDef::Enum(variants) = &schema.types["Failure"] else {
        panic!("an enum");
    };
    assert_eq!(variants.len(), 3);
    assert!(matches!(&schema.types["Tree"], TypeDef::Enum(variants) if variants.len() == 2));
}

/// A hostile server's description cannot exhaust the stack or the CPU of a client reading it.
#[test]
fn a_description_that_nests_without_end_is_refused() {
    // Option(Option(Option(...))), 100,000 deep: one byte (17) a level.
    let mut bytes = vec![17u8; 100_000];
    bytes.push(1);
    let read = postcard::from_bytes::<Schema>(&bytes);
    assert!(read.is_err(), "refused, not followed to the end");
    let nested: Vec<u8> = [17u8; 100].into_iter().chain([1]).collect();
    assert!(
        postcard::from_bytes::<Schema>(&nested).is_ok(),
        "100 deep is fine"
    );
}

#[test]
fn a_description_whose_types_expand_without_end_is_compared_in_bounded_time() {
    // T0 = (T1, T1), T1 = (T2, T2), ... T63 = u8: 2^63 leaves if written out.
    let mut types = BTreeMap::new();
    for level in 0..63 {
        let next = Schema::Named(format!("T{}", level + 1));
        types.insert(
            format!("T{level}"),
            TypeDef::TupleStruct(vec![next.clone(), next]),
        );
    }
    types.insert("T63".to_owned(), TypeDef::NewtypeStruct(Schema::U8));
    let method = |schema: Schema, fingerprint| MethodSchema {
        name: "call".into(),
        args: vec![Field {
            name: "value".into(),
            schema,
        }],
        upload: None,
        result: Schema::Unit,
        download: Download::None,
        idempotent: false,
        fingerprint,
    };
    let theirs = ServiceSchema {
        name: "Test".into(),
        methods: vec![method(Schema::Named("T0".into()), 1)],
        types,
    };
    let ours = ServiceSchema {
        name: "Test".into(),
        methods: vec![method(Schema::U8, 2)],
        types: BTreeMap::new(),
    };
    assert_eq!(theirs.canonical_form(&theirs.methods[0]), None);
    let said = difference(&ours, &theirs, "call").expect("they differ");
    assert!(said.contains("the argument `value`"), "{said}");

    // A newtype chain 10,000 deep writes nothing until its end: its depth is bounded too.
    let mut chain = BTreeMap::new();
    for level in 0..10_000 {
        let next = Schema::Named(format!("N{}", level + 1));
        chain.insert(format!("N{level}"), TypeDef::NewtypeStruct(next));
    }
    chain.insert("N10000".to_owned(), TypeDef::UnitStruct);
    let deep = ServiceSchema {
        name: "Test".into(),
        methods: vec![method(Schema::Named("N0".into()), 3)],
        types: chain,
    };
    assert_eq!(deep.canonical_form(&deep.methods[0]), None);
    assert!(difference(&ours, &deep, "call").is_some());
}

#[test]
fn differences_inside_recursive_types_are_found_without_going_round() {
    #[derive(serde::Serialize, serde::Deserialize)]
    enum Before {
        Leaf(u32),
        Node(Box<Before>, Box<Before>),
    }
    #[derive(serde::Serialize, serde::Deserialize)]
    enum After {
        Leaf(u64),
        Node(Box<After>, Box<After>),
    }
    let (before, _) = traced::<Before>();
    let (after, _) = traced::<After>();
    let said = difference(&before, &after, "call").expect("they differ");
    assert!(
        said.contains("variant `Before::Leaf` is `u32` here and `u64` on the server"),
        "{said}"
    );
}

/// A method's canonical form says which sides stream (section 5.1 of docs/wire.md).
#[test]
fn streamed_arguments_and_results_are_in_the_canonical_form() {
    /// What the method returns.
    enum Returns {
        Value,
        Stream,
        StreamOrError,
    }
    let form = |upload: bool, returns: Returns| {
        let mut tracer = ServiceTracer::new("Test");
        let method = tracer.method("call", false);
        let method = if upload {
            method.upload::<u8>("items")
        } else {
            method
        };
        match returns {
            Returns::Value => method.returns::<u16>(),
            Returns::Stream => method.streams::<u16>(),
            Returns::StreamOrError => method.streams_or_fails::<u16, u32>(),
        }
        let schema = tracer.finish().expect("describable");
        schema.canonical_form(&schema.methods[0]).expect("small")
    };
    assert_eq!(form(false, Returns::Value), [0, 0, 8]);
    assert_eq!(form(true, Returns::Value), [1, 0, 24, 7, 8]);
    assert_eq!(form(false, Returns::Stream), [2, 0, 24, 8]);
    assert_eq!(form(true, Returns::Stream), [3, 0, 24, 7, 24, 8]);
    assert_eq!(
        form(false, Returns::StreamOrError),
        [6, 0, 24, 8, 9],
        "the error's node ends the form"
    );
    assert_eq!(form(true, Returns::StreamOrError), [7, 0, 24, 7, 24, 8, 9]);
}

#[test]
fn counts_of_128_and_more_are_written_as_varints() {
    let wide = Schema::Tuple(vec![Schema::U8; 200]);
    let form = canonical::node(&wide, &BTreeMap::new()).expect("small");
    assert_eq!(form[..3], [20, 0xc8, 0x01], "tuple of 200: 0xc8 0x01");
    assert_eq!(form.len(), 3 + 200);
}

#[test]
fn a_wide_schema_is_not_mistaken_for_a_deep_one() {
    // 1,000 elements, each an enum written through its own named node: nesting stays shallow.
    let mut types = BTreeMap::new();
    types.insert(
        "E".to_owned(),
        TypeDef::Enum(vec![
            ("A".into(), Variant::Unit),
            ("B".into(), Variant::Newtype(Schema::U8)),
        ]),
    );
    let wide = Schema::Tuple(vec![Schema::Named("E".into()); 1000]);
    assert!(canonical::node(&wide, &types).is_some());
    let options = Schema::Tuple(vec![Schema::Option(Box::new(Schema::U8)); 1000]);
    assert!(canonical::node(&options, &types).is_some());
}

#[test]
fn a_schema_too_long_or_too_deep_has_no_canonical_form() {
    // Long but shallow: over the size bound on its own.
    let long = Schema::Tuple(vec![Schema::U8; 300_000]);
    assert_eq!(canonical::node(&long, &BTreeMap::new()), None);
    // Deep but short: over the nesting bound on its own, well before the stack runs out.
    let mut deep = Schema::U8;
    for _ in 0..10_000 {
        deep = Schema::Option(Box::new(deep));
    }
    assert_eq!(canonical::node(&deep, &BTreeMap::new()), None);
}

#[test]
fn struct_variants_and_recursive_structs_count_their_fields() {
    #[derive(serde::Serialize, serde::Deserialize)]
    enum Narrow {
        Point { x: u8 },
    }
    #[derive(serde::Serialize, serde::Deserialize)]
    enum Wide {
        Point { x: u16 },
    }
    assert_ne!(fingerprint::<Narrow>(), fingerprint::<Wide>());
    #[derive(serde::Serialize, serde::Deserialize)]
    struct ByteList {
        value: u8,
        next: Option<Box<ByteList>>,
    }
    #[derive(serde::Serialize, serde::Deserialize)]
    struct WordList {
        value: u16,
        next: Option<Box<WordList>>,
    }
    assert_ne!(fingerprint::<ByteList>(), fingerprint::<WordList>());
}

#[test]
fn types_that_contain_themselves_through_maps_and_tuples_get_fingerprints() {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Directory {
        entries: BTreeMap<String, Directory>,
    }
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Pairs {
        pairs: Vec<(u8, Pairs)>,
    }
    let directory = fingerprint::<Directory>();
    let pairs = fingerprint::<Pairs>();
    assert_ne!(directory, pairs);
}

#[test]
fn a_difference_is_named_where_it_is_not_at_the_first_argument() {
    let two = |b: Schema| MethodSchema {
        name: "call".into(),
        args: vec![
            Field {
                name: "a".into(),
                schema: Schema::U8,
            },
            Field {
                name: "b".into(),
                schema: b,
            },
        ],
        upload: None,
        result: Schema::Unit,
        download: Download::None,
        idempotent: false,
        fingerprint: 0,
    };
    let service = |b: Schema, fingerprint| ServiceSchema {
        name: "Test".into(),
        methods: vec![MethodSchema {
            fingerprint,
            ..two(b)
        }],
        types: BTreeMap::new(),
    };
    let said = difference(&service(Schema::U16, 1), &service(Schema::U32, 2), "call")
        .expect("they differ");
    assert_eq!(
        said,
        "the argument `b` is `u16` here and `u32` on the server"
    );
}

/// A one-method service whose `call` takes a `T` named `value` and returns an `R`.
fn service_of<T: Serialize + DeserializeOwned, R: Serialize + DeserializeOwned>() -> ServiceSchema {
    let mut tracer = ServiceTracer::new("Test");
    tracer
        .method("call", false)
        .arg::<T>("value")
        .returns::<R>();
    tracer.finish().expect("describable")
}

/// What `difference` says of `call` taking a `Before` here and an `After` on the server.
fn said<Before: Serialize + DeserializeOwned, After: Serialize + DeserializeOwned>() -> String {
    difference(
        &service_of::<Before, ()>(),
        &service_of::<After, ()>(),
        "call",
    )
    .expect("they differ")
}

mod shapes {
    #![allow(dead_code)]
    use std::collections::BTreeMap;

    #[derive(serde::Serialize, serde::Deserialize)]
    pub struct Two {
        pub a: u8,
        pub b: u8,
    }
    #[derive(serde::Serialize, serde::Deserialize)]
    pub struct Three {
        pub a: u8,
        pub b: u8,
        pub c: u8,
    }
    #[derive(serde::Serialize, serde::Deserialize)]
    pub struct TwoWide {
        pub a: u8,
        pub b: u16,
    }
    #[derive(serde::Serialize, serde::Deserialize)]
    pub enum Kind {
        Unit,
        One(u8),
        Pair(u8, u8),
        Named { x: u8 },
    }
    #[derive(serde::Serialize, serde::Deserialize)]
    pub enum KindOne {
        Unit,
        One(u16),
        Pair(u8, u8),
        Named { x: u8 },
    }
    #[derive(serde::Serialize, serde::Deserialize)]
    pub enum KindPair {
        Unit,
        One(u8),
        Pair(u8, u16),
        Named { x: u8 },
    }
    #[derive(serde::Serialize, serde::Deserialize)]
    pub enum KindNamed {
        Unit,
        One(u8),
        Pair(u8, u8),
        Named { x: u16 },
    }
    #[derive(serde::Serialize, serde::Deserialize)]
    pub enum KindShort {
        Unit,
        One(u8),
    }
    pub type MapU8 = BTreeMap<u8, u8>;
    pub type MapU16Key = BTreeMap<u16, u8>;
    pub type MapU16Value = BTreeMap<u8, u16>;
}

#[test]
fn differences_are_named_where_they_are() {
    use shapes::*;
    assert_eq!(
        said::<Two, Three>(),
        "the argument `value`: `Two` has the fields (a: u8, b: u8) here and (a: u8, b: u8, c: u8) \
         on the server"
    );
    assert_eq!(
        said::<Two, TwoWide>(),
        "the argument `value`, field `Two.b` is `u8` here and `u16` on the server"
    );
    assert_eq!(
        said::<Kind, KindShort>(),
        "the argument `value`: the enum `Kind` has the variants (Unit, One, Pair, Named) here and \
         (Unit, One) on the server"
    );
    assert_eq!(
        said::<Kind, KindOne>(),
        "the argument `value`, variant `Kind::One` is `u8` here and `u16` on the server"
    );
    assert_eq!(
        said::<Kind, KindPair>(),
        "the argument `value`, variant `Kind::Pair`, item 1 is `u8` here and `u16` on the server"
    );
    assert_eq!(
        said::<Kind, KindNamed>(),
        "the argument `value`, variant `Kind::Named`, field `Kind.x` is `u8` here and `u16` on \
         the server"
    );
    assert_eq!(
        said::<Option<u8>, Option<u16>>(),
        "the argument `value` (inside the `Option`) is `u8` here and `u16` on the server"
    );
    assert_eq!(
        said::<Vec<u16>, Vec<u32>>(),
        "the argument `value` (its items) is `u16` here and `u32` on the server"
    );
    assert_eq!(
        said::<MapU8, MapU16Key>(),
        "the argument `value` (its keys) is `u8` here and `u16` on the server"
    );
    assert_eq!(
        said::<MapU8, MapU16Value>(),
        "the argument `value` (its values) is `u8` here and `u16` on the server"
    );
    assert_eq!(
        said::<(u8, u8), (u8, u16)>(),
        "the argument `value`, item 1 is `u8` here and `u16` on the server"
    );
    assert_eq!(
        said::<(u8, u8), (u8, u8, u8)>(),
        "the argument `value` is `(u8, u8)` here and `(u8, u8, u8)` on the server"
    );
}

#[test]
fn differences_in_streams_and_results_are_named() {
    let ours = service_of::<u8, u8>();
    let theirs = service_of::<u8, u16>();
    assert_eq!(
        difference(&ours, &theirs, "call").as_deref(),
        Some("the result is `u8` here and `u16` on the server")
    );
    let streaming = |upload: bool, download: bool| {
        let mut tracer = ServiceTracer::new("Test");
        let method = tracer.method("call", false).arg::<u8>("value");
        let method = if upload {
            method.upload::<u8>("items")
        } else {
            method
        };
        if download {
            method.streams::<u8>();
        } else {
            method.returns::<u8>();
        }
        tracer.finish().expect("describable")
    };
    assert_eq!(
        difference(&streaming(true, false), &ours, "call").as_deref(),
        Some("it streams an argument here and does not stream on the server")
    );
    assert_eq!(
        difference(&streaming(false, true), &ours, "call").as_deref(),
        Some("it streams its result here and does not stream its result on the server")
    );
    let fallible = |error: bool| {
        let mut tracer = ServiceTracer::new("Test");
        let method = tracer.method("call", false).arg::<u8>("value");
        if error {
            method.streams_or_fails::<u8, String>();
        } else {
            method.streams_or_fails::<u8, u8>();
        }
        tracer.finish().expect("describable")
    };
    assert_eq!(
        difference(&fallible(true), &streaming(false, true), "call").as_deref(),
        Some(
            "it streams its result or returns an error instead here and streams its result on \
             the server"
        )
    );
    assert_eq!(
        difference(&fallible(true), &fallible(false), "call").as_deref(),
        Some("the error returned instead of a stream is `String` here and `u8` on the server")
    );
    let mut tracer = ServiceTracer::new("Test");
    tracer
        .method("call", false)
        .arg::<u8>("value")
        .upload::<u16>("items")
        .returns::<u8>();
    let wider = tracer.finish().expect("describable");
    assert_eq!(
        difference(&streaming(true, false), &wider, "call").as_deref(),
        Some("the items of the streamed argument `items` is `u8` here and `u16` on the server")
    );
    let one = service_of::<u8, ()>();
    let two = service_of::<(u8, u8), ()>();
    assert!(difference(&one, &one, "call").is_none(), "no difference");
    assert!(difference(&one, &two, "other").is_none(), "no such method");
}

#[test]
fn incompatibilities_are_the_removed_and_the_changed_methods() {
    let mut before = ServiceTracer::new("Test");
    before.method("kept", false).arg::<u8>("a").returns::<()>();
    before
        .method("changed", false)
        .arg::<u8>("a")
        .returns::<()>();
    before
        .method("removed", false)
        .arg::<u8>("a")
        .returns::<()>();
    let before = before.finish().expect("describable");
    let mut after = ServiceTracer::new("Test");
    after.method("kept", false).arg::<u8>("a").returns::<()>();
    after
        .method("changed", false)
        .arg::<u16>("a")
        .returns::<()>();
    after.method("added", false).arg::<u8>("a").returns::<()>();
    let after = after.finish().expect("describable");
    let found = incompatibilities(&before, &after);
    let said: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert_eq!(
        said,
        [
            "`changed`: the argument `a` is `u8` before and `u16` now",
            "`removed`: it was removed"
        ]
    );
    assert!(incompatibilities(&before, &before).is_empty());
}

mod more_shapes {
    #![allow(dead_code)]

    #[derive(serde::Serialize, serde::Deserialize)]
    pub enum Short {
        Named { x: u8 },
    }
    #[derive(serde::Serialize, serde::Deserialize)]
    pub enum Long {
        Named { x: u16, y: u8 },
    }
    #[derive(serde::Serialize, serde::Deserialize)]
    pub struct ByteChain {
        pub next: Option<Box<ByteChain>>,
        pub value: u8,
    }
    #[derive(serde::Serialize, serde::Deserialize)]
    pub struct WordChain {
        pub next: Option<Box<WordChain>>,
        pub value: u16,
    }
}

#[test]
fn differences_of_length_are_named_as_a_whole() {
    use more_shapes::*;
    assert_eq!(
        said::<(u8, u8), (u16, u8, u8)>(),
        "the argument `value` is `(u8, u8)` here and `(u16, u8, u8)` on the server"
    );
    assert_eq!(
        said::<Short, Long>(),
        "the argument `value`, variant `Short::Named` is `(u8,)` here and `(u16, u8)` on the \
         server"
    );
}

#[test]
fn a_difference_behind_a_recursion_is_named_without_going_round_for_ever() {
    // Each level's `next` differs (the chain's items do), so the search could go down `next`
    // for ever; it stops at a bounded depth and names the place it reached.
    let said = said::<more_shapes::ByteChain, more_shapes::WordChain>();
    assert!(
        said.starts_with("the argument `value`, field `ByteChain.next`"),
        "{said}"
    );
    assert!(said.ends_with("on the server"), "{said}");
}

#[test]
fn a_same_upload_is_passed_over_for_the_difference_after_it() {
    let with = |result_is_wide: bool| {
        let mut tracer = ServiceTracer::new("Test");
        let method = tracer.method("call", false).upload::<u8>("items");
        if result_is_wide {
            method.returns::<u16>();
        } else {
            method.returns::<u8>();
        }
        tracer.finish().expect("describable")
    };
    assert_eq!(
        difference(&with(false), &with(true), "call").as_deref(),
        Some("the result is `u8` here and `u16` on the server")
    );
}

#[test]
fn types_are_traced_as_postcard_writes_them_not_as_text() {
    // An address is a string to a human-readable format, and four bytes to postcard.
    let (schema, _) = traced::<std::net::Ipv4Addr>();
    assert_eq!(*arg(&schema), Schema::Tuple(vec![Schema::U8; 4]));
}

#[test]
fn a_service_reads_back_as_rust() {
    let mut tracer = ServiceTracer::new("Shapes");
    tracer
        .method("draw", true)
        .arg::<Point>("at")
        .arg::<Pair>("pair")
        .returns::<()>();
    tracer
        .method("pick", false)
        .arg::<Shape>("shape")
        .streams::<u8>();
    let rust = tracer.finish().expect("describable").to_rust();
    assert!(
        rust.contains("pub struct Point {\n    pub x: i32,\n    pub y: i32,\n}\n"),
        "{rust}"
    );
    assert!(
        rust.contains("pub struct Pair(pub i32, pub String);\n"),
        "{rust}"
    );
    assert!(
        rust.contains(
            "pub enum Shape {\n    Empty,\n    Circle(f64),\n    Segment(Point, Point),\n    \
             Polygon {\n        corners: Vec<Point>,\n        closed: bool,\n    },\n}\n"
        ),
        "{rust}"
    );
    assert!(
        rust.contains(
            "pub trait Shapes {\n    #[rpc(idempotent)]\n    async fn draw(&self, at: Point, \
             pair: Pair);\n    async fn pick(&self, shape: Shape) -> Streaming<u8>;\n}\n"
        ),
        "{rust}"
    );
}

/// The rendering of a service whose one method takes a `T`.
fn rendered<T: Serialize + DeserializeOwned>() -> String {
    traced::<T>().0.to_rust()
}

#[test]
fn a_type_that_holds_itself_inline_holds_itself_boxed() {
    let rust = rendered::<Tree>();
    assert!(rust.contains("    Node(Box<Tree>, Box<Tree>),\n"), "{rust}");
    let rust = rendered::<List>();
    assert!(rust.contains("    Cons(u32, Box<List>),\n"), "{rust}");

    // Through another type, and through an option: every reference in the cycle is boxed.
    #[derive(Serialize, Deserialize)]
    enum Expr {
        Num(i64),
        Let(Box<Binding>),
        Maybe(Option<(u8, Box<Expr>)>),
        Many(Vec<Expr>),
    }
    #[derive(Serialize, Deserialize)]
    struct Binding {
        value: Box<Expr>,
        names: HashMap<String, Expr>,
    }
    let rust = rendered::<Expr>();
    assert!(rust.contains("    Let(Box<Binding>),\n"), "{rust}");
    assert!(
        rust.contains("    Maybe(Option<(u8, Box<Expr>)>),\n"),
        "{rust}"
    );
    assert!(rust.contains("    pub value: Box<Expr>,\n"), "{rust}");
    // Not through a vector or a map, which hold their items on the heap already.
    assert!(rust.contains("    Many(Vec<Expr>),\n"), "{rust}");
    assert!(
        rust.contains("    pub names: HashMap<String, Expr>,\n"),
        "{rust}"
    );
    // Nor in a signature, which holds the value once.
    assert!(
        rust.contains("async fn call(&self, value: Expr);"),
        "{rust}"
    );
}

/// A service `Test` whose one method, `call`, takes `args` and returns `()`, with `types`.
fn service_taking(args: Vec<(&str, Schema)>, types: Vec<(&str, TypeDef)>) -> ServiceSchema {
    let field = |(name, schema): (&str, Schema)| Field {
        name: name.to_owned(),
        schema,
    };
    ServiceSchema {
        name: "Test".to_owned(),
        methods: vec![MethodSchema {
            name: "call".to_owned(),
            args: args.into_iter().map(field).collect(),
            upload: None,
            result: Schema::Unit,
            download: Download::None,
            idempotent: false,
            fingerprint: 1,
        }],
        types: types
            .into_iter()
            .map(|(name, def)| (name.to_owned(), def))
            .collect(),
    }
}

#[test]
fn map_keys_derive_what_hashing_needs_and_keys_that_cannot_be_hashed_go_as_pairs() {
    #[derive(Serialize, Deserialize, PartialEq, Eq, Hash)]
    enum Key {
        Plain,
        Tagged(Tag),
    }
    #[derive(Serialize, Deserialize, PartialEq, Eq, Hash)]
    struct Tag(String);
    #[derive(Serialize, Deserialize)]
    struct Maps {
        by_key: HashMap<Key, u8>,
        nested: BTreeMap<String, HashMap<Vec<u64>, u8>>,
        listed: Vec<(Key, f32)>,
    }
    let rust = rendered::<Maps>();
    let hashed = "#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]\n";
    let plain = "#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]\n";
    assert!(rust.contains(&format!("{hashed}pub enum Key {{")), "{rust}");
    assert!(
        rust.contains(&format!("{hashed}pub struct Tag(pub String);")),
        "{rust}"
    );
    assert!(
        rust.contains(&format!("{plain}pub struct Maps {{")),
        "{rust}"
    );
    assert!(
        rust.contains("    pub by_key: HashMap<Key, u8>,\n"),
        "{rust}"
    );
    assert!(
        rust.contains("    pub nested: HashMap<String, HashMap<Vec<u64>, u8>>,\n"),
        "{rust}"
    );
    assert!(
        rust.starts_with(
            "use serde::{Deserialize, Serialize};\nuse std::collections::HashMap;\n\n"
        ),
        "{rust}"
    );

    // A key that holds a float or a map cannot be hashed: its map goes as a vector of pairs,
    // the same bytes on the wire. (Rust's maps need keys that can be, so such schemas come
    // from keys with serde implementations of their own.)
    let map = |key: Schema, value: Schema| Schema::Map(Box::new(key), Box::new(value));
    let named = |name: &str| Schema::Named(name.to_owned());
    let inner = Field {
        name: "inner".to_owned(),
        schema: map(Schema::U8, Schema::U8),
    };
    let schema = service_taking(
        vec![
            ("by_float", map(Schema::F32, Schema::Str)),
            (
                "by_measure",
                map(
                    Schema::Tuple(vec![Schema::U8, named("Measure")]),
                    Schema::Str,
                ),
            ),
            ("by_holder", map(named("Holder"), Schema::Unit)),
        ],
        vec![
            ("Measure", TypeDef::NewtypeStruct(Schema::F64)),
            ("Holder", TypeDef::Struct(vec![inner])),
        ],
    );
    let rust = schema.to_rust();
    assert!(rust.contains("by_float: Vec<(f32, String)>"), "{rust}");
    assert!(
        rust.contains("by_measure: Vec<((u8, Measure), String)>"),
        "{rust}"
    );
    assert!(rust.contains("by_holder: Vec<(Holder, ())>"), "{rust}");
    assert!(
        rust.contains(&format!("{plain}pub struct Measure(pub f64);")),
        "{rust}"
    );
    assert!(
        rust.contains(&format!(
            "{plain}pub struct Holder {{\n    pub inner: HashMap<u8, u8>,"
        )),
        "{rust}"
    );
    assert!(!rust.contains("Hash,"), "{rust}");
}

#[test]
fn names_that_are_not_identifiers_are_made_ones() {
    #[derive(Serialize, Deserialize)]
    struct Named {
        r#type: u8,
        #[serde(rename = "first-name")]
        first_name: String,
        #[serde(rename = "2nd")]
        second: bool,
        #[serde(rename = "self")]
        this: (),
    }
    let rust = rendered::<Named>();
    for field in [
        "    pub r#type: u8,\n",
        "    pub first_name: String,\n",
        "    pub _2nd: bool,\n",
        "    pub _self: (),\n",
    ] {
        assert!(rust.contains(field), "{field}: {rust}");
    }
}

#[test]
fn a_rendering_says_what_it_uses_and_leaves_out_opaque_methods() {
    let mut tracer = ServiceTracer::new("Plain");
    tracer
        .method("add", false)
        .arg::<i64>("a")
        .arg::<i64>("type")
        .returns::<i64>();
    tracer
        .method("raw", false)
        .opaque(7)
        .arg::<Point>("at")
        .streams::<u8>();
    let rust = tracer.finish().expect("describable").to_rust();
    assert_eq!(
        rust,
        "#[rpc_core::service]\npub trait Plain {\n    async fn add(&self, a: i64, r#type: i64) \
         -> i64;\n    // `raw` is left out: the server does not describe its types \
         (`#[rpc(opaque)]`).\n}\n"
    );
}

#[test]
fn an_enum_that_holds_itself_through_a_struct_is_traced_whatever_its_variants_order() {
    // `Let` holds the enum again through `Binding`, so it is complete only once every variant
    // is known; the tracer once took it again and again, first in order, and never reached
    // `Many`: "it contains itself with no way out".
    #[derive(Serialize, Deserialize)]
    enum Expr {
        Num(i64),
        Let(Box<Binding>),
        Many(Vec<Expr>),
    }
    #[derive(Serialize, Deserialize)]
    struct Binding {
        value: Box<Expr>,
    }
    let (schema, _) = traced::<Expr>();
    let named = |name: &str| Schema::Named(name.to_owned());
    assert_eq!(
        schema.types["Expr"],
        TypeDef::Enum(vec![
            ("Num".to_owned(), Variant::Newtype(Schema::I64)),
            ("Let".to_owned(), Variant::Newtype(named("Binding"))),
            (
                "Many".to_owned(),
                Variant::Newtype(Schema::Seq(Box::new(named("Expr"))))
            ),
        ])
    );
    assert_eq!(
        schema.types["Binding"],
        TypeDef::Struct(vec![Field {
            name: "value".to_owned(),
            schema: named("Expr"),
        }])
    );
}

/// A description from a hostile server may hold a great many types: 100,000 in one cycle, each
/// holding the next inline, and a map keyed by the first. The rendering works them out without
/// recursing type by type (which would overflow the stack) and in time linear in their number.
#[test]
fn a_great_many_types_in_one_cycle_render_without_deep_recursion() {
    const TYPES: usize = 100_000;
    let name = |at: usize| format!("T{}", at % TYPES);
    let types = (0..TYPES)
        .map(|at| {
            let next = Schema::Named(name(at + 1));
            (name(at), TypeDef::TupleStruct(vec![Schema::U8, next]))
        })
        .collect::<Vec<_>>();
    let schema = service_taking(
        vec![(
            "by_chain",
            Schema::Map(Box::new(Schema::Named(name(0))), Box::new(Schema::Unit)),
        )],
        types
            .iter()
            .map(|(name, def)| (name.as_str(), def.clone()))
            .collect(),
    );
    let rust = schema.to_rust();
    let hashed = "#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]\n";
    assert!(
        rust.contains(&format!("{hashed}pub struct T0(pub u8, pub Box<T1>);\n")),
        "every type of the cycle holds the next boxed, and is hashed"
    );
    assert!(rust.contains(&format!(
        "{hashed}pub struct T99999(pub u8, pub Box<T0>);\n"
    )));
    assert!(rust.contains("async fn call(&self, by_chain: HashMap<T0, ()>);"));
}

/// Recursive types as users write them: syntax trees, cons lists held in structs, types whose
/// every variant holds the enum again (a sequence ends it), cycles through three types. Each
/// once failed as "it contains itself with no way out" where a variant that holds the enum
/// again inline was taken again and again, nested, for it counted as settled (being learned
/// further out); a nested enum now takes a variant known to end first.
#[test]
fn recursive_types_users_write_are_traced() {
    let named = |name: &str| Schema::Named(name.to_owned());
    let seq = |item: Schema| Schema::Seq(Box::new(item));

    #[derive(Serialize, Deserialize)]
    enum Expr {
        Bin(Box<Bin>),
        Lit(u8),
    }
    #[derive(Serialize, Deserialize)]
    struct Bin {
        op: Op,
        l: Expr,
        r: Expr,
    }
    #[derive(Serialize, Deserialize)]
    enum Op {
        Add,
        Sub,
    }
    let (schema, _) = traced::<Expr>();
    assert_eq!(
        schema.types["Expr"],
        TypeDef::Enum(vec![
            ("Bin".to_owned(), Variant::Newtype(named("Bin"))),
            ("Lit".to_owned(), Variant::Newtype(Schema::U8)),
        ])
    );
    let field = |name: &str, schema: Schema| Field {
        name: name.to_owned(),
        schema,
    };
    assert_eq!(
        schema.types["Bin"],
        TypeDef::Struct(vec![
            field("op", named("Op")),
            field("l", named("Expr")),
            field("r", named("Expr")),
        ])
    );
    assert_eq!(
        schema.types["Op"],
        TypeDef::Enum(vec![
            ("Add".to_owned(), Variant::Unit),
            ("Sub".to_owned(), Variant::Unit)
        ])
    );

    #[derive(Serialize, Deserialize)]
    enum Cons {
        Cell(u8, Box<Cons>),
        Nil,
    }
    #[derive(Serialize, Deserialize)]
    struct Lists {
        a: Cons,
        b: Cons,
        c: Option<Cons>,
    }
    let (schema, _) = traced::<Lists>();
    assert_eq!(
        schema.types["Cons"],
        TypeDef::Enum(vec![
            (
                "Cell".to_owned(),
                Variant::Tuple(vec![Schema::U8, named("Cons")])
            ),
            ("Nil".to_owned(), Variant::Unit),
        ])
    );

    #[derive(Serialize, Deserialize)]
    enum Ty {
        Fn(Vec<Ty>, Box<Ty>),
        Tuple(Vec<Ty>),
        Named(String, Vec<Ty>),
        Ref(Box<Ty>),
    }
    let (schema, _) = traced::<Ty>();
    assert_eq!(
        schema.types["Ty"],
        TypeDef::Enum(vec![
            (
                "Fn".to_owned(),
                Variant::Tuple(vec![seq(named("Ty")), named("Ty")])
            ),
            ("Tuple".to_owned(), Variant::Newtype(seq(named("Ty")))),
            (
                "Named".to_owned(),
                Variant::Tuple(vec![Schema::Str, seq(named("Ty"))])
            ),
            ("Ref".to_owned(), Variant::Newtype(named("Ty"))),
        ])
    );

    #[derive(Serialize, Deserialize)]
    enum Stmt {
        Block(Block),
        Expr(Value),
        Empty,
    }
    #[derive(Serialize, Deserialize)]
    struct Block {
        stmts: Vec<Stmt>,
        tail: Option<Box<Value>>,
    }
    #[derive(Serialize, Deserialize)]
    enum Value {
        Block(Box<Block>),
        If(Box<Value>, Box<Block>, Option<Box<Block>>),
        Lit(i64),
    }
    let (schema, _) = traced::<Stmt>();
    assert_eq!(schema.types.len(), 3, "{:?}", schema.types);
    assert!(
        matches!(&schema.types["Value"], TypeDef::Enum(variants) if variants.len() == 3),
        "{:?}",
        schema.types
    );

    // Found by the properties over made-up types (`made_up.rs`): a variant that ends only
    // through an option whose item is not known yet; one whose sequence's items hold the enum
    // again, through an option of an option.
    #[derive(Serialize, Deserialize)]
    enum Maybe {
        Again(Box<Maybe>, u8),
        Ends(Option<Box<Maybe>>, Option<u8>),
    }
    let (schema, _) = traced::<Maybe>();
    assert_eq!(
        schema.types["Maybe"],
        TypeDef::Enum(vec![
            (
                "Again".to_owned(),
                Variant::Tuple(vec![named("Maybe"), Schema::U8])
            ),
            (
                "Ends".to_owned(),
                Variant::Tuple(vec![
                    Schema::Option(Box::new(named("Maybe"))),
                    Schema::Option(Box::new(Schema::U8))
                ])
            ),
        ])
    );
    #[derive(Serialize, Deserialize)]
    enum Outer {
        Many(Vec<Inner>, u8),
        Again(Box<Outer>, u8),
    }
    #[derive(Serialize, Deserialize)]
    struct Inner {
        back: Option<Option<Box<Outer>>>,
    }
    // A map keyed by the enum that holds it (the outermost map is given an entry, whose key
    // ends in an empty map); a cycle through four enums whose one way out is the third's.
    #[derive(Serialize, Deserialize, PartialEq, Eq, Hash)]
    enum Keyed {
        Map(BTreeMap<Keyed, u8>),
    }
    impl PartialOrd for Keyed {
        fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for Keyed {
        fn cmp(&self, _: &Self) -> std::cmp::Ordering {
            std::cmp::Ordering::Equal
        }
    }
    let (schema, _) = traced::<Keyed>();
    let map = |key: Schema, value: Schema| Schema::Map(Box::new(key), Box::new(value));
    assert_eq!(
        schema.types["Keyed"],
        TypeDef::Enum(vec![(
            "Map".to_owned(),
            Variant::Newtype(map(named("Keyed"), Schema::U8))
        )])
    );
    #[derive(Serialize, Deserialize)]
    enum First {
        Second((Second,), u8),
        Again(Box<First>, u8),
    }
    #[derive(Serialize, Deserialize)]
    enum Second {
        First((Box<First>,)),
        Third((Third,)),
    }
    #[derive(Serialize, Deserialize)]
    enum Third {
        Fourth(Box<Fourth>),
        End,
    }
    #[derive(Serialize, Deserialize)]
    enum Fourth {
        First(Box<First>),
    }
    let (schema, _) = traced::<First>();
    assert_eq!(schema.types.len(), 4, "{:?}", schema.types);

    let (schema, _) = traced::<Outer>();
    assert_eq!(
        schema.types["Outer"],
        TypeDef::Enum(vec![
            (
                "Many".to_owned(),
                Variant::Tuple(vec![seq(named("Inner")), Schema::U8])
            ),
            (
                "Again".to_owned(),
                Variant::Tuple(vec![named("Outer"), Schema::U8])
            ),
        ])
    );
}

#[test]
fn instances_of_a_generic_type_render_as_names_rust_would_give_them() {
    #[derive(Serialize, Deserialize)]
    struct Page<T> {
        items: Vec<T>,
    }
    let (schema, _) = traced::<(Page<String>, Page<Vec<u8>>)>();
    let rust = schema.to_rust();
    assert!(rust.contains("pub struct PageString {"), "{rust}");
    assert!(rust.contains("pub struct PageVecU8 {"), "{rust}");
    assert!(
        rust.contains("async fn call(&self, value: (PageString, PageVecU8));"),
        "{rust}"
    );
}

/// The error of a one-method service taking a `T`.
fn refused<T: Serialize + DeserializeOwned>() -> SchemaError {
    let mut tracer = ServiceTracer::new("Test");
    tracer
        .method("call", false)
        .arg::<T>("value")
        .returns::<()>();
    tracer.finish().expect_err("refused")
}

#[test]
fn a_field_left_out_when_empty_is_refused_as_not_read_back() {
    #[derive(Serialize, Deserialize)]
    struct Query {
        name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
        tag: u8,
    }
    let error = refused::<Query>();
    assert_eq!(error.problem, SchemaProblem::NotReadBack);
    assert_eq!(
        (&error.method[..], &error.place[..]),
        ("call", "the argument `value`")
    );
    assert!(error.type_name.ends_with("Query"), "{error}");
    assert!(
        error
            .reason
            .contains("the bytes ended before the value did"),
        "{error}"
    );
    let said = error.to_string();
    assert!(said.contains("does not read back what it writes"), "{said}");
    assert!(said.contains("skip_serializing_if"), "{said}");
    assert!(
        !said.contains("#[rpc(opaque)]"),
        "opaque would not mend it: {said}"
    );
}

#[test]
fn a_field_left_out_deep_inside_options_and_sequences_is_refused() {
    #[derive(Serialize, Deserialize)]
    struct Leaf {
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tags: Vec<u8>,
        weight: u32,
    }
    #[derive(Serialize, Deserialize)]
    struct Branch {
        leaves: Vec<Leaf>,
    }
    #[derive(Serialize, Deserialize)]
    struct Tree {
        trunk: Option<Branch>,
        height: u8,
    }
    // The leaf's tags are left out inside an option and a sequence.
    assert_eq!(refused::<Tree>().problem, SchemaProblem::NotReadBack);
    #[derive(Serialize, Deserialize)]
    enum Shape {
        Dot,
        Line(u8, u8),
        Text {
            #[serde(skip_serializing_if = "String::is_empty")]
            text: String,
            size: u8,
        },
    }
    // Left out in an enum's last variant, inside a sequence.
    assert_eq!(refused::<Vec<Shape>>().problem, SchemaProblem::NotReadBack);
    assert_eq!(
        refused::<Option<Vec<Leaf>>>().problem,
        SchemaProblem::NotReadBack
    );
}

#[test]
fn a_field_never_written_or_a_serialize_that_disagrees_is_refused() {
    #[derive(Serialize, Deserialize)]
    struct Never {
        #[serde(skip_serializing, default)]
        secret: u8,
        shown: u8,
    }
    assert_eq!(refused::<Never>().problem, SchemaProblem::NotReadBack);

    /// Writes two bytes where it reads one.
    #[derive(Deserialize)]
    struct Wide(u8);
    impl Serialize for Wide {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            (self.0, self.0).serialize(serializer)
        }
    }
    let error = refused::<Wide>();
    assert_eq!(error.problem, SchemaProblem::NotReadBack);
    assert!(
        error.reason.contains("read back from the first 1 alone"),
        "{error}"
    );
}

#[test]
fn fields_skipped_both_ways_and_values_their_serialize_refuses_pass() {
    #[derive(Serialize, Deserialize)]
    struct Cached {
        #[serde(skip)]
        memo: Option<u64>,
        key: String,
    }
    /// Refuses to be written when empty: a program never sends one, so nothing is learned
    /// from it.
    #[derive(Deserialize)]
    struct NonEmpty(Vec<u8>);
    impl Serialize for NonEmpty {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            if self.0.is_empty() {
                return Err(serde::ser::Error::custom("empty"));
            }
            self.0.serialize(serializer)
        }
    }
    traced::<Cached>();
    traced::<NonEmpty>();
    traced::<Vec<NonEmpty>>();
}

/// `download` was a `bool`: the schemas of services without a method that returns
/// `Result<Streaming<T>, E>` keep their bytes (docs/wire.md, section 6.1). (Lock files, in JSON,
/// keep theirs too: rpc-cli's tests.)
#[test]
fn download_reads_and_writes_as_the_bool_it_was() {
    let postcard = |download: &Download| postcard::to_stdvec(download).expect("encodes");
    assert_eq!(
        postcard(&Download::None),
        postcard::to_stdvec(&false).expect("encodes")
    );
    assert_eq!(
        postcard(&Download::Items),
        postcard::to_stdvec(&true).expect("encodes")
    );
    let fallible = Download::ItemsOrError(Schema::U8);
    assert_eq!(
        postcard(&fallible),
        [2, 7],
        "variant 2, then the error's schema: u8"
    );
    for download in [Download::None, Download::Items, fallible] {
        let back: Download = postcard::from_bytes(&postcard(&download)).expect("decodes");
        assert_eq!(back, download);
    }
}
