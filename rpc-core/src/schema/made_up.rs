//! Properties of tracing, over types made up at random: structs and enums that hold each
//! other, directly, in options and in sequences. Each is deserialized by hand, as serde's derive
//! would, from a description held by the test: whenever every type it reaches has values (every
//! cycle has a way out), tracing describes it exactly; it never describes a type without values,
//! and never panics or runs away.

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
    /// The graph's type of this index.
    Named(usize),
    Option(Box<Ty>),
    Seq(Box<Ty>),
}

/// A made-up named type.
#[derive(Debug, Clone)]
enum Def {
    /// A struct of these fields.
    Struct(Vec<Ty>),
    /// An enum of these variants, each of these fields: none a unit variant, one a newtype
    /// variant, more a tuple variant.
    Enum(Vec<Vec<Ty>>),
}

const MOST_TYPES: usize = 6;
const MOST_MEMBERS: usize = 3;

/// Names that live for the program: `T0`..., `f0`..., `v0`...
fn names(prefix: &str) -> &'static [&'static str] {
    static TYPES: OnceLock<Vec<&'static str>> = OnceLock::new();
    static FIELDS: OnceLock<Vec<&'static str>> = OnceLock::new();
    static VARIANTS: OnceLock<Vec<&'static str>> = OnceLock::new();
    let (table, count) = match prefix {
        "T" => (&TYPES, MOST_TYPES),
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
}

impl<'de> DeserializeSeed<'de> for Seed {
    type Value = Made;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Made, D::Error> {
        match &self.ty {
            Ty::U8 => {
                <u8 as de::Deserialize>::deserialize(deserializer)?;
                Ok(Made)
            }
            Ty::Option(_) => deserializer.deserialize_option(self),
            Ty::Seq(_) => deserializer.deserialize_seq(self),
            Ty::Named(at) => match &self.graph[*at] {
                Def::Struct(fields) => {
                    let fields = &names("f")[..fields.len()];
                    deserializer.deserialize_struct(names("T")[*at], fields, self)
                }
                Def::Enum(variants) => {
                    let variants = &names("v")[..variants.len()];
                    deserializer.deserialize_enum(names("T")[*at], variants, self)
                }
            },
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
        let members: &[Ty] = match &self.ty {
            Ty::Seq(item) => {
                while items.next_element_seed(self.of(item))?.is_some() {}
                return Ok(Made);
            }
            Ty::Named(at) => match &self.graph[*at] {
                Def::Struct(fields) => fields,
                Def::Enum(_) => return Err(de::Error::custom("an enum is not a sequence")),
            },
            Ty::U8 | Ty::Option(_) => return Err(de::Error::custom("not a sequence")),
        };
        for (at, member) in members.iter().enumerate() {
            if items.next_element_seed(self.of(member))?.is_none() {
                return Err(de::Error::invalid_length(at, &self));
            }
        }
        Ok(Made)
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Made, A::Error> {
        let Ty::Named(at) = &self.ty else {
            return Err(de::Error::custom("not an enum"));
        };
        let Def::Enum(variants) = &self.graph[*at] else {
            return Err(de::Error::custom("not an enum"));
        };
        let (index, variant) = data.variant_seed(Index)?;
        let Some(fields) = variants.get(index) else {
            return Err(de::Error::custom("no such variant"));
        };
        match fields.as_slice() {
            [] => variant.unit_variant().map(|()| Made),
            [one] => variant.newtype_variant_seed(self.of(one)),
            many => {
                let fields = Fields {
                    graph: Rc::clone(&self.graph),
                    fields: many.to_vec(),
                };
                variant.tuple_variant(many.len(), fields)
            }
        }
    }
}

/// The fields of a tuple variant.
struct Fields {
    graph: Rc<Vec<Def>>,
    fields: Vec<Ty>,
}

impl<'de> de::Visitor<'de> for Fields {
    type Value = Made;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the fields {:?}", self.fields)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Made, A::Error> {
        for (at, ty) in self.fields.iter().enumerate() {
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
/// some variant's fields all have one; options and sequences always do (none, empty).
fn inhabited(graph: &[Def]) -> Vec<bool> {
    let mut has = vec![false; graph.len()];
    loop {
        let place = |ty: &Ty, has: &[bool]| match ty {
            Ty::Named(at) => has[*at],
            _ => true,
        };
        let next: Vec<bool> = graph
            .iter()
            .map(|def| match def {
                Def::Struct(fields) => fields.iter().all(|f| place(f, &has)),
                Def::Enum(variants) => variants
                    .iter()
                    .any(|fields| fields.iter().all(|f| place(f, &has))),
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
        Ty::U8 => Schema::U8,
        Ty::Named(at) => Schema::Named(names("T")[*at].to_owned()),
        Ty::Option(inner) => Schema::Option(Box::new(expected(inner))),
        Ty::Seq(inner) => Schema::Seq(Box::new(expected(inner))),
    }
}

/// The named types tracing should give: those type 0 reaches, each as defined.
fn expected_types(graph: &[Def]) -> BTreeMap<String, TypeDef> {
    fn reach(ty: &Ty, next: &mut Vec<usize>) {
        match ty {
            Ty::U8 => {}
            Ty::Named(at) => next.push(*at),
            Ty::Option(inner) | Ty::Seq(inner) => reach(inner, next),
        }
    }
    let mut types = BTreeMap::new();
    let mut next = vec![0];
    while let Some(at) = next.pop() {
        let name = names("T")[at].to_owned();
        if types.contains_key(&name) {
            continue;
        }
        let def = match &graph[at] {
            Def::Struct(fields) => {
                fields.iter().for_each(|f| reach(f, &mut next));
                TypeDef::Struct(
                    fields
                        .iter()
                        .zip(names("f"))
                        .map(|(ty, name)| Field {
                            name: (*name).to_owned(),
                            schema: expected(ty),
                        })
                        .collect(),
                )
            }
            Def::Enum(variants) => {
                variants.iter().flatten().for_each(|f| reach(f, &mut next));
                TypeDef::Enum(
                    variants
                        .iter()
                        .zip(names("v"))
                        .map(|(fields, name)| {
                            let shape = match fields.as_slice() {
                                [] => Variant::Unit,
                                [one] => Variant::Newtype(expected(one)),
                                many => Variant::Tuple(many.iter().map(expected).collect()),
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

/// A place in a graph of `types` types: mostly another type, sometimes in an option or a
/// sequence, sometimes a number.
fn ty(types: usize) -> impl Strategy<Value = Ty> {
    let leaf = prop_oneof![1 => Just(Ty::U8), 3 => (0..types).prop_map(Ty::Named)];
    leaf.prop_recursive(2, 4, 1, |inner| {
        prop_oneof![
            inner.clone().prop_map(|ty| Ty::Option(Box::new(ty))),
            inner.prop_map(|ty| Ty::Seq(Box::new(ty))),
        ]
    })
}

fn graph() -> impl Strategy<Value = Vec<Def>> {
    (1..=MOST_TYPES).prop_flat_map(|types| {
        let members = move || prop::collection::vec(ty(types), 0..=MOST_MEMBERS);
        let def = prop_oneof![
            members().prop_map(Def::Struct),
            prop::collection::vec(members(), 1..=MOST_MEMBERS).prop_map(Def::Enum),
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
        tracer.method("call", false).arg::<Made>("value").returns::<()>();
        match tracer.finish() {
            Ok(schema) => {
                prop_assert!(inhabited[0], "a type without values was described: {schema:?}");
                prop_assert_eq!(&schema.methods[0].args[0].schema, &expected(&Ty::Named(0)));
                prop_assert_eq!(schema.types, expected_types);
            }
            Err(error) => prop_assert!(!all_have_values, "{}", error),
        }
    }
}
