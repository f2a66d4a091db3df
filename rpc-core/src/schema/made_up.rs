//! Properties of tracing, over types made up at random: structs and enums that hold each
//! other, directly, in options, sequences, maps and tuples, and numbers that refuse zero. Each
//! is deserialized by hand, as serde's derive would, from a description held by the test:
//! whenever every type it reaches has values (every cycle has a way out), tracing describes it
//! exactly; it never describes a type without values, and never panics or runs away.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;
use std::sync::OnceLock;

use proptest::prelude::*;
use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, SeqAccess, VariantAccess};

use super::{Field, Schema, ServiceTracer, TypeDef, Variant};

/// A place in a made-up type.
#[derive(Debug, Clone)]
enum Ty {
    U8,
    /// A `u8` that refuses 0, as `NonZeroU8` does.
    NonZero,
    /// The graph's type of this index.
    Named(usize),
    Option(Box<Ty>),
    Seq(Box<Ty>),
    Map(Box<Ty>, Box<Ty>),
    Tuple(Vec<Ty>),
}

/// A made-up named type.
#[derive(Debug, Clone)]
enum Def {
    /// A struct of these fields.
    Struct(Vec<Ty>),
    /// `struct Unit;`
    Unit,
    /// `struct Id(T);`
    Newtype(Ty),
    /// `struct Pair(A, B);`
    TupleStruct(Vec<Ty>),
    /// An enum of these variants, each of these fields, named or not: no fields a unit
    /// variant, one unnamed a newtype variant, more a tuple variant; named, a struct variant.
    Enum(Vec<(bool, Vec<Ty>)>),
}

const MOST_TYPES: usize = 6;
const MOST_MEMBERS: usize = 3;

/// Names that live for the program: `T0`..., `f0`..., `v0`...
fn names(prefix: &str) -> &'static [&'static str] {
    static TYPES: OnceLock<Vec<&'static str>> = OnceLock::new();
    static FIELDS: OnceLock<Vec<&'static str>> = OnceLock::new();
    static VARIANTS: OnceLock<Vec<&'static str>> = OnceLock::new();
    let (table, count) = match prefix {
        "T" => (&TYPES, 64),
        "f" => (&FIELDS, MOST_MEMBERS),
        _ => (&VARIANTS, MOST_MEMBERS),
    };
    table.get_or_init(|| {
        (0..count)
            .map(|at| &*Box::leak(format!("{prefix}{at}").into_boxed_str()))
            .collect()
    })
}

thread_local! {
    /// The graph whose type 0 [`Made`] deserializes, on this thread.
    static GRAPH: RefCell<Rc<Vec<Def>>> = RefCell::new(Rc::new(Vec::new()));
}

/// A value of the current graph's type 0.
struct Made;

impl<'de> de::Deserialize<'de> for Made {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Made, D::Error> {
        let graph = GRAPH.with(|graph| Rc::clone(&graph.borrow()));
        Seed {
            graph,
            ty: Ty::Named(0),
        }
        .deserialize(deserializer)
    }
}

/// Deserializes a value of `ty`, as serde's derive would for the Rust type it stands for.
struct Seed {
    graph: Rc<Vec<Def>>,
    ty: Ty,
}

impl Seed {
    fn of(&self, ty: &Ty) -> Seed {
        Seed {
            graph: Rc::clone(&self.graph),
            ty: ty.clone(),
        }
    }

    /// The visitor of a sequence of these members: a tuple's, a struct's or a variant's.
    fn members(&self, members: &[Ty]) -> Members {
        Members {
            graph: Rc::clone(&self.graph),
            members: members.to_vec(),
        }
    }
}

impl<'de> DeserializeSeed<'de> for Seed {
    type Value = Made;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Made, D::Error> {
        match &self.ty {
            Ty::U8 => {
                <u8 as de::Deserialize>::deserialize(deserializer)?;
                Ok(Made)
            }
            Ty::NonZero => match <u8 as de::Deserialize>::deserialize(deserializer)? {
                0 => Err(de::Error::custom("0 is not a NonZero")),
                _ => Ok(Made),
            },
            Ty::Option(_) => deserializer.deserialize_option(self),
            Ty::Seq(_) => deserializer.deserialize_seq(self),
            Ty::Map(..) => deserializer.deserialize_map(self),
            Ty::Tuple(items) => deserializer.deserialize_tuple(items.len(), self.members(items)),
            Ty::Named(at) => {
                let name = names("T")[*at];
                match &self.graph[*at] {
                    Def::Struct(fields) => {
                        let names = &names("f")[..fields.len()];
                        deserializer.deserialize_struct(name, names, self.members(fields))
                    }
                    Def::Unit => deserializer.deserialize_unit_struct(name, self),
                    Def::Newtype(_) => deserializer.deserialize_newtype_struct(name, self),
                    Def::TupleStruct(items) => {
                        let members = self.members(items);
                        deserializer.deserialize_tuple_struct(name, items.len(), members)
                    }
                    Def::Enum(variants) => {
                        let names = &names("v")[..variants.len()];
                        deserializer.deserialize_enum(name, names, self)
                    }
                }
            }
        }
    }
}

impl<'de> de::Visitor<'de> for Seed {
    type Value = Made;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a value of {:?}", self.ty)
    }

    fn visit_none<E: de::Error>(self) -> Result<Made, E> {
        Ok(Made)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Made, D::Error> {
        let Ty::Option(inner) = &self.ty else {
            return Err(de::Error::custom("not an option"));
        };
        self.of(inner).deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Made, A::Error> {
        let Ty::Seq(item) = &self.ty else {
            return Err(de::Error::custom("not a sequence"));
        };
        while items.next_element_seed(self.of(item))?.is_some() {}
        Ok(Made)
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut entries: A) -> Result<Made, A::Error> {
        let Ty::Map(key, value) = &self.ty else {
            return Err(de::Error::custom("not a map"));
        };
        while entries.next_key_seed(self.of(key))?.is_some() {
            entries.next_value_seed(self.of(value))?;
        }
        Ok(Made)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Made, E> {
        Ok(Made)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, deserializer: D) -> Result<Made, D::Error> {
        let Ty::Named(at) = &self.ty else {
            return Err(de::Error::custom("not a newtype struct"));
        };
        let Def::Newtype(inner) = &self.graph[*at] else {
            return Err(de::Error::custom("not a newtype struct"));
        };
        self.of(inner).deserialize(deserializer)
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Made, A::Error> {
        let Ty::Named(at) = &self.ty else {
            return Err(de::Error::custom("not an enum"));
        };
        let Def::Enum(variants) = &self.graph[*at] else {
            return Err(de::Error::custom("not an enum"));
        };
        let (index, variant) = data.variant_seed(Index)?;
        let Some((named, fields)) = variants.get(index) else {
            return Err(de::Error::custom("no such variant"));
        };
        match (named, fields.as_slice()) {
            (_, []) => variant.unit_variant().map(|()| Made),
            (true, fields) => {
                let names = &names("f")[..fields.len()];
                variant.struct_variant(names, self.members(fields))
            }
            (false, [one]) => variant.newtype_variant_seed(self.of(one)),
            (false, many) => variant.tuple_variant(many.len(), self.members(many)),
        }
    }
}

/// Deserializes a sequence of these members: a tuple's, a struct's or a variant's fields.
struct Members {
    graph: Rc<Vec<Def>>,
    members: Vec<Ty>,
}

impl<'de> de::Visitor<'de> for Members {
    type Value = Made;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the members {:?}", self.members)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Made, A::Error> {
        for (at, ty) in self.members.iter().enumerate() {
            let seed = Seed {
                graph: Rc::clone(&self.graph),
                ty: ty.clone(),
            };
            if items.next_element_seed(seed)?.is_none() {
                return Err(de::Error::invalid_length(at, &self));
            }
        }
        Ok(Made)
    }
}

/// A variant's index.
struct Index;

impl<'de> DeserializeSeed<'de> for Index {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        <u32 as de::Deserialize>::deserialize(deserializer).map(|index| index as usize)
    }
}

/// Whether each type of `graph` has a value: a struct when every field has one, an enum when
/// some variant's fields all have one; options, sequences and maps always do (none, empty).
fn inhabited(graph: &[Def]) -> Vec<bool> {
    fn place(ty: &Ty, has: &[bool]) -> bool {
        match ty {
            Ty::Named(at) => has[*at],
            Ty::Tuple(items) => items.iter().all(|item| place(item, has)),
            Ty::U8 | Ty::NonZero | Ty::Option(_) | Ty::Seq(_) | Ty::Map(..) => true,
        }
    }
    let mut has = vec![false; graph.len()];
    loop {
        let next: Vec<bool> = graph
            .iter()
            .map(|def| match def {
                Def::Unit => true,
                Def::Newtype(inner) => place(inner, &has),
                Def::Struct(fields) | Def::TupleStruct(fields) => {
                    fields.iter().all(|f| place(f, &has))
                }
                Def::Enum(variants) => variants
                    .iter()
                    .any(|(_, fields)| fields.iter().all(|f| place(f, &has))),
            })
            .collect();
        if next == has {
            return has;
        }
        has = next;
    }
}

/// The schema tracing should give `ty`.
fn expected(ty: &Ty) -> Schema {
    match ty {
        Ty::U8 | Ty::NonZero => Schema::U8,
        Ty::Named(at) => Schema::Named(names("T")[*at].to_owned()),
        Ty::Option(inner) => Schema::Option(Box::new(expected(inner))),
        Ty::Seq(inner) => Schema::Seq(Box::new(expected(inner))),
        Ty::Map(key, value) => Schema::Map(Box::new(expected(key)), Box::new(expected(value))),
        Ty::Tuple(items) => Schema::Tuple(items.iter().map(expected).collect()),
    }
}

/// The named types tracing should give: those type 0 reaches, each as defined.
fn expected_types(graph: &[Def]) -> BTreeMap<String, TypeDef> {
    fn reach(ty: &Ty, next: &mut Vec<usize>) {
        match ty {
            Ty::U8 | Ty::NonZero => {}
            Ty::Named(at) => next.push(*at),
            Ty::Option(inner) | Ty::Seq(inner) => reach(inner, next),
            Ty::Map(key, value) => {
                reach(key, next);
                reach(value, next);
            }
            Ty::Tuple(items) => items.iter().for_each(|item| reach(item, next)),
        }
    }
    let fields = |fields: &[Ty]| -> Vec<Field> {
        fields
            .iter()
            .zip(names("f"))
            .map(|(ty, name)| Field {
                name: (*name).to_owned(),
                schema: expected(ty),
            })
            .collect()
    };
    let mut types = BTreeMap::new();
    let mut next = vec![0];
    while let Some(at) = next.pop() {
        let name = names("T")[at].to_owned();
        if types.contains_key(&name) {
            continue;
        }
        let def = match &graph[at] {
            Def::Struct(members) => {
                members.iter().for_each(|f| reach(f, &mut next));
                TypeDef::Struct(fields(members))
            }
            Def::Unit => TypeDef::UnitStruct,
            Def::Newtype(inner) => {
                reach(inner, &mut next);
                TypeDef::NewtypeStruct(expected(inner))
            }
            Def::TupleStruct(items) => {
                items.iter().for_each(|f| reach(f, &mut next));
                TypeDef::TupleStruct(items.iter().map(expected).collect())
            }
            Def::Enum(variants) => {
                for (_, members) in variants {
                    members.iter().for_each(|f| reach(f, &mut next));
                }
                TypeDef::Enum(
                    variants
                        .iter()
                        .zip(names("v"))
                        .map(|((named, members), name)| {
                            let shape = match (named, members.as_slice()) {
                                (_, []) => Variant::Unit,
                                (true, members) => Variant::Struct(fields(members)),
                                (false, [one]) => Variant::Newtype(expected(one)),
                                (false, many) => {
                                    Variant::Tuple(many.iter().map(expected).collect())
                                }
                            };
                            ((*name).to_owned(), shape)
                        })
                        .collect(),
                )
            }
        };
        types.insert(name, def);
    }
    types
}

/// A place in a graph of `types` types: mostly another type, sometimes in an option, a
/// sequence, a map or a tuple, sometimes a number.
fn ty(types: usize) -> impl Strategy<Value = Ty> {
    let leaf = prop_oneof![
        1 => Just(Ty::U8),
        1 => Just(Ty::NonZero),
        4 => (0..types).prop_map(Ty::Named),
    ];
    leaf.prop_recursive(2, 6, 2, |inner| {
        prop_oneof![
            2 => inner.clone().prop_map(|ty| Ty::Option(Box::new(ty))),
            2 => inner.clone().prop_map(|ty| Ty::Seq(Box::new(ty))),
            1 => (inner.clone(), inner.clone())
                .prop_map(|(key, value)| Ty::Map(Box::new(key), Box::new(value))),
            1 => prop::collection::vec(inner, 1..=2).prop_map(Ty::Tuple),
        ]
    })
}

fn graph() -> impl Strategy<Value = Vec<Def>> {
    (1..=MOST_TYPES).prop_flat_map(|types| {
        let members = move || prop::collection::vec(ty(types), 0..=MOST_MEMBERS);
        let variant = (any::<bool>(), members());
        let def = prop_oneof![
            3 => members().prop_map(Def::Struct),
            1 => Just(Def::Unit),
            1 => ty(types).prop_map(Def::Newtype),
            1 => prop::collection::vec(ty(types), 1..=MOST_MEMBERS).prop_map(Def::TupleStruct),
            4 => prop::collection::vec(variant, 1..=MOST_MEMBERS).prop_map(Def::Enum),
        ];
        prop::collection::vec(def, types)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn a_type_of_values_is_traced_exactly(graph in graph()) {
        // Every type it reaches has values, as every type a program sends does: one without
        // (a struct that holds itself, with no way out) is never made, and tracing may refuse
        // what holds it even where it is optional, as no value shows its fields.
        let inhabited = inhabited(&graph);
        let expected_types = expected_types(&graph);
        let all_have_values = expected_types.keys().all(|name| {
            let at: usize = name[1..].parse().expect("T and an index");
            inhabited[at]
        });
        GRAPH.with(|current| *current.borrow_mut() = Rc::new(graph.clone()));
        let mut tracer = ServiceTracer::new("Made");
        tracer.method("call", false).read_only_arg::<Made>("value").returns::<()>();
        match tracer.finish() {
            Ok(schema) => {
                prop_assert!(inhabited[0], "a type without values was described: {schema:?}");
                prop_assert_eq!(&schema.methods[0].args[0].schema, &expected(&Ty::Named(0)));
                prop_assert_eq!(schema.types, expected_types);
            }
            // Types that hold others many times over, each flattened into the canonical form
            // where it is held, may be refused for its size: the bound stands.
            Err(error) if error.reason.contains("canonical form would be over") => {}
            Err(error) => prop_assert!(!all_have_values, "{}", error),
        }
    }
}

/// Sixty types that hold one another, each struct two others and each enum's first variant
/// two: a pass explores each type where it is first entered and ends every value entered
/// again, so tracing takes a few passes over a few thousand values rather than passes over
/// values as large as the types allow (each pass of the tracer before this rule explored
/// tens of times more for every six types more: ten seconds for 36 types).
#[test]
fn a_great_many_types_that_hold_one_another_are_traced_in_small_passes() {
    const TYPES: usize = 60;
    let graph: Vec<Def> = (0..TYPES)
        .map(|at| {
            let next = |by: usize| Ty::Named((at + by) % TYPES);
            if at % 3 == 0 {
                Def::Struct(vec![next(1), Ty::Option(Box::new(next(7))), Ty::U8])
            } else {
                Def::Enum(vec![
                    (false, vec![next(1), next(2)]),
                    (true, vec![Ty::Seq(Box::new(next(5))), Ty::NonZero]),
                    (false, vec![]),
                ])
            }
        })
        .collect();
    GRAPH.with(|current| *current.borrow_mut() = Rc::new(graph));
    let mut tracer = ServiceTracer::new("Made");
    tracer
        .method("call", false)
        .read_only_arg::<Made>("value")
        .returns::<()>();
    // Traced whole; the flattened canonical form of so many structs held inline is over its
    // bound, which is refused as it should be.
    let error = tracer
        .finish()
        .expect_err("over the canonical form's bound");
    assert!(
        error.reason.contains("canonical form would be over"),
        "{error}"
    );
}
