//! `rpc_cli::json` over random types and values: whatever JSON a type accepts encodes to bytes
//! that decode back to JSON encoding to the same bytes, and bytes a server might send (cut
//! short, or random) get an answer or an error, never a panic.

use proptest::collection::vec;
use proptest::prelude::*;
use rpc_cli::json::{Types, decode, encode};
use rpc_core::schema::{Field, Schema, TypeDef, Variant};
use serde_json::{Map, Value};

/// A type to test, its named types not yet named.
#[derive(Debug, Clone)]
enum Shape {
    Leaf(Schema),
    Option(Box<Shape>),
    Seq(Box<Shape>),
    Map(Box<Shape>, Box<Shape>),
    Tuple(Vec<Shape>),
    UnitStruct,
    Newtype(Box<Shape>),
    TupleStruct(Vec<Shape>),
    Struct(Vec<Shape>),
    Enum(Vec<VariantShape>),
}

/// A variant of a [`Shape::Enum`].
#[derive(Debug, Clone)]
enum VariantShape {
    Unit,
    Newtype(Shape),
    Tuple(Vec<Shape>),
    Struct(Vec<Shape>),
}

fn leaf() -> impl Strategy<Value = Shape> {
    prop_oneof![
        Just(Schema::Unit),
        Just(Schema::Bool),
        Just(Schema::I8),
        Just(Schema::I16),
        Just(Schema::I32),
        Just(Schema::I64),
        Just(Schema::I128),
        Just(Schema::U8),
        Just(Schema::U16),
        Just(Schema::U32),
        Just(Schema::U64),
        Just(Schema::U128),
        Just(Schema::F32),
        Just(Schema::F64),
        Just(Schema::Char),
        Just(Schema::Str),
        Just(Schema::Bytes),
    ]
    .prop_map(Shape::Leaf)
}

fn shape() -> impl Strategy<Value = Shape> {
    leaf().prop_recursive(4, 24, 3, |inner| {
        let items = || vec(inner.clone(), 0..3);
        let variant = prop_oneof![
            Just(VariantShape::Unit),
            inner.clone().prop_map(VariantShape::Newtype),
            items().prop_map(VariantShape::Tuple),
            items().prop_map(VariantShape::Struct),
        ];
        prop_oneof![
            inner.clone().prop_map(|s| Shape::Option(Box::new(s))),
            inner.clone().prop_map(|s| Shape::Seq(Box::new(s))),
            (inner.clone(), inner.clone()).prop_map(|(k, v)| Shape::Map(Box::new(k), Box::new(v))),
            items().prop_map(Shape::Tuple),
            Just(Shape::UnitStruct),
            inner.clone().prop_map(|s| Shape::Newtype(Box::new(s))),
            items().prop_map(Shape::TupleStruct),
            items().prop_map(Shape::Struct),
            vec(variant, 1..4).prop_map(Shape::Enum),
        ]
    })
}

/// Fields `f0`, `f1`... of `shapes`.
fn fields(shapes: &[Shape], types: &mut Types) -> Vec<Field> {
    shapes
        .iter()
        .enumerate()
        .map(|(at, shape)| Field {
            name: format!("f{at}"),
            schema: schema(shape, types),
        })
        .collect()
}

/// `shape`'s schema, its named types added to `types` as `T0`, `T1`...
fn schema(shape: &Shape, types: &mut Types) -> Schema {
    let all = |shapes: &[Shape], types: &mut Types| -> Vec<Schema> {
        shapes.iter().map(|shape| schema(shape, types)).collect()
    };
    let def = match shape {
        Shape::Leaf(leaf) => return leaf.clone(),
        Shape::Option(inner) => return Schema::Option(Box::new(schema(inner, types))),
        Shape::Seq(inner) => return Schema::Seq(Box::new(schema(inner, types))),
        Shape::Map(k, v) => {
            return Schema::Map(Box::new(schema(k, types)), Box::new(schema(v, types)));
        }
        Shape::Tuple(items) => return Schema::Tuple(all(items, types)),
        Shape::UnitStruct => TypeDef::UnitStruct,
        Shape::Newtype(inner) => TypeDef::NewtypeStruct(schema(inner, types)),
        Shape::TupleStruct(items) => TypeDef::TupleStruct(all(items, types)),
        Shape::Struct(items) => TypeDef::Struct(fields(items, types)),
        Shape::Enum(variants) => TypeDef::Enum(
            variants
                .iter()
                .enumerate()
                .map(|(at, variant)| {
                    let variant = match variant {
                        VariantShape::Unit => Variant::Unit,
                        VariantShape::Newtype(inner) => Variant::Newtype(schema(inner, types)),
                        VariantShape::Tuple(items) => Variant::Tuple(all(items, types)),
                        VariantShape::Struct(items) => Variant::Struct(fields(items, types)),
                    };
                    (format!("V{at}"), variant)
                })
                .collect(),
        ),
    };
    let name = format!("T{}", types.len());
    types.insert(name.clone(), def);
    Schema::Named(name)
}

/// An integer as the tool writes one: a number, or a string past 64 bits.
fn integer(n: i128) -> Value {
    i64::try_from(n)
        .map(Value::from)
        .or_else(|_| u64::try_from(n).map(Value::from))
        .unwrap_or_else(|_| Value::String(n.to_string()))
}

/// A string, often one that reads as JSON too (a number, `true`, `null`).
fn text() -> impl Strategy<Value = String> {
    prop_oneof!["[0-9a-z]{0,3}", "true|false|null|-1|1.5", any::<String>()]
}

/// JSON that `schema` accepts, in any of the forms it accepts.
fn value(schema: &Schema, types: &Types) -> BoxedStrategy<Value> {
    let items = |schemas: &[Schema]| -> BoxedStrategy<Value> {
        let each: Vec<_> = schemas.iter().map(|s| value(s, types)).collect();
        each.prop_map(Value::Array).boxed()
    };
    let object = |fields: &[Field]| -> BoxedStrategy<Value> {
        let names: Vec<String> = fields.iter().map(|field| field.name.clone()).collect();
        let each: Vec<_> = fields.iter().map(|f| value(&f.schema, types)).collect();
        each.prop_map(move |values| Value::Object(names.iter().cloned().zip(values).collect()))
            .boxed()
    };
    match schema {
        Schema::Unit => Just(Value::Null).boxed(),
        Schema::Bool => any::<bool>().prop_map(Value::Bool).boxed(),
        Schema::I8 => any::<i8>().prop_map(Value::from).boxed(),
        Schema::I16 => any::<i16>().prop_map(Value::from).boxed(),
        Schema::I32 => any::<i32>().prop_map(Value::from).boxed(),
        Schema::I64 => any::<i64>().prop_map(Value::from).boxed(),
        Schema::I128 => any::<i128>().prop_map(integer).boxed(),
        Schema::U8 => any::<u8>().prop_map(Value::from).boxed(),
        Schema::U16 => any::<u16>().prop_map(Value::from).boxed(),
        Schema::U32 => any::<u32>().prop_map(Value::from).boxed(),
        Schema::U64 => any::<u64>().prop_map(Value::from).boxed(),
        Schema::U128 => any::<u128>()
            .prop_map(|n| match u64::try_from(n) {
                Ok(small) => Value::from(small),
                Err(_) => Value::String(n.to_string()),
            })
            .boxed(),
        Schema::F32 => any::<f32>()
            .prop_filter("finite", |x| x.is_finite())
            .prop_map(|x| Value::from(f64::from(x)))
            .boxed(),
        Schema::F64 => any::<f64>()
            .prop_filter("finite", |x| x.is_finite())
            .prop_map(Value::from)
            .boxed(),
        Schema::Char => any::<char>()
            .prop_map(|c| Value::String(c.to_string()))
            .boxed(),
        Schema::Str => text().prop_map(Value::String).boxed(),
        Schema::Bytes => prop_oneof![
            vec(any::<u8>(), 0..6).prop_map(Value::from),
            text().prop_map(Value::String),
        ]
        .boxed(),
        Schema::Option(inner) => prop_oneof![Just(Value::Null), value(inner, types)].boxed(),
        Schema::Seq(item) => vec(value(item, types), 0..3).prop_map(Value::Array).boxed(),
        Schema::Map(k, v) => {
            let pairs = vec((value(k, types), value(v, types)), 0..3).prop_map(|pairs| {
                Value::Array(
                    pairs
                        .into_iter()
                        .map(|(k, v)| Value::from(vec![k, v]))
                        .collect(),
                )
            });
            if **k == Schema::Str {
                let by_name = vec((text(), value(v, types)), 0..3)
                    .prop_map(|entries| Value::Object(entries.into_iter().collect::<Map<_, _>>()));
                prop_oneof![pairs, by_name].boxed()
            } else {
                pairs.boxed()
            }
        }
        Schema::Tuple(schemas) => items(schemas),
        Schema::Named(name) => match &types[name] {
            TypeDef::UnitStruct => Just(Value::Null).boxed(),
            TypeDef::NewtypeStruct(inner) => value(inner, types),
            TypeDef::TupleStruct(schemas) => items(schemas),
            TypeDef::Struct(fields) => object(fields),
            TypeDef::Enum(variants) => {
                let each: Vec<BoxedStrategy<Value>> = variants
                    .iter()
                    .map(|(tag, variant)| {
                        let tag = tag.clone();
                        let content = match variant {
                            Variant::Unit => return Just(Value::String(tag)).boxed(),
                            Variant::Newtype(inner) => value(inner, types),
                            Variant::Tuple(schemas) => items(schemas),
                            Variant::Struct(fields) => object(fields),
                            other => panic!("a variant this test does not make: {other:?}"),
                        };
                        content
                            .prop_map(move |content| {
                                Value::Object([(tag.clone(), content)].into_iter().collect())
                            })
                            .boxed()
                    })
                    .collect();
                proptest::strategy::Union::new(each).boxed()
            }
            other => panic!("a type this test does not make: {other:?}"),
        },
        other => panic!("a schema this test does not make: {other:?}"),
    }
}

/// A random type, its named types, and JSON it accepts.
fn typed_value() -> impl Strategy<Value = (Schema, Types, Value)> {
    shape().prop_flat_map(|shape| {
        let mut types = Types::new();
        let schema = schema(&shape, &mut types);
        let json = value(&schema, &types);
        (Just(schema), Just(types), json)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// Accepted JSON encodes; its bytes decode; the JSON they decode to encodes to them again.
    #[test]
    fn json_accepted_goes_to_bytes_and_back((schema, types, json) in typed_value()) {
        let bytes = encode(&schema, &types, &json, "v");
        prop_assert!(bytes.is_ok(), "{json} as {schema} ({types:?}): {bytes:?}");
        let bytes = bytes.unwrap_or_default();
        let back = decode(&schema, &types, &bytes);
        prop_assert!(back.is_ok(), "{bytes:?} as {schema}: {back:?}");
        let back = back.unwrap_or_default();
        prop_assert_eq!(
            encode(&schema, &types, &back, "v"),
            Ok(bytes),
            "{} decoded as {}", json, back
        );
    }

    /// A value's bytes cut short never decode, and neither cut nor random bytes panic.
    #[test]
    fn bytes_cut_short_or_random_are_refused_or_read(
        (schema, types, json) in typed_value(),
        noise in vec(any::<u8>(), 0..24),
    ) {
        let bytes = encode(&schema, &types, &json, "v").unwrap_or_default();
        for end in 0..bytes.len() {
            let cut = decode(&schema, &types, &bytes[..end]);
            prop_assert!(cut.is_err(), "{:?} of {bytes:?} decoded: {cut:?}", &bytes[..end]);
        }
        let _ = decode(&schema, &types, &noise);
    }
}
