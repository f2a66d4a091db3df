//! The canonical form of a method's schema, which its fingerprint hashes: the structure of
//! what goes on the wire, without names, with nesting that postcard does not mark flattened.
//! docs/wire.md ("Fingerprints") specifies it byte by byte.

use std::collections::BTreeMap;

use super::{Field, MethodSchema, Schema, TypeDef, Variant};

const UNIT: u8 = 0;
const OPTION: u8 = 17;
const SEQ: u8 = 18;
const MAP: u8 = 19;
const TUPLE: u8 = 20;
const ENUM: u8 = 21;
const BACK: u8 = 22;
const RECURSIVE: u8 = 23;
const STREAM: u8 = 24;

/// FNV-1a, 64 bits.
pub(super) fn fingerprint(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

/// A method's canonical form: a byte saying which sides stream, the arguments as one tuple,
/// the streamed argument's items, the result (or the streamed result's items), and the error
/// that may come instead of a streamed result.
pub(super) fn method(method: &MethodSchema, types: &BTreeMap<String, TypeDef>) -> Option<Vec<u8>> {
    let mut writer = Writer::new(types);
    let error = method.download.error();
    let shape = u8::from(method.upload.is_some())
        | (u8::from(method.download.is_stream()) << 1)
        | (u8::from(error.is_some()) << 2);
    writer.out.push(shape);
    let args: Vec<&Schema> = method.args.iter().map(|arg| &arg.schema).collect();
    writer.tuple(&args);
    if let Some(upload) = &method.upload {
        writer.out.push(STREAM);
        writer.node(&upload.schema);
    }
    if method.download.is_stream() {
        writer.out.push(STREAM);
    }
    writer.node(&method.result);
    if let Some(error) = error {
        writer.node(error);
    }
    writer.finish()
}

/// The canonical form of one type: equal for two types exactly when postcard encodes them alike.
pub(super) fn node(schema: &Schema, types: &BTreeMap<String, TypeDef>) -> Option<Vec<u8>> {
    let mut writer = Writer::new(types);
    writer.node(schema);
    writer.finish()
}

/// The largest canonical form written: a schema (perhaps a hostile peer's) whose named types
/// expand past it, or nest past [`MAX_NESTING`], has none.
pub(super) const MAX_LEN: usize = 1 << 18;

/// How many types may be looked through, in all, to find which contain themselves.
const MAX_STEPS: usize = 1 << 18;

/// How deep nodes may nest while a canonical form is written.
const MAX_NESTING: usize = 256;

struct Writer<'a> {
    types: &'a BTreeMap<String, TypeDef>,
    /// The recursive types being written, outermost first.
    binders: Vec<&'a str>,
    out: Vec<u8>,
    /// How deep the node being written is.
    depth: usize,
    /// Whether the form grew past [`MAX_LEN`] or [`MAX_NESTING`]: then it is abandoned.
    over: bool,
    /// How many types have been looked through to find which contain themselves.
    steps: usize,
    /// Which named types contain themselves, as far as asked.
    recursive: std::collections::HashMap<&'a str, bool>,
}

/// One element of a flattened tuple.
enum Element<'a> {
    Schema(&'a Schema),
    /// A named type written as its own node: an enum, or a type that contains itself.
    Named(&'a str),
}

impl<'a> Writer<'a> {
    fn new(types: &'a BTreeMap<String, TypeDef>) -> Self {
        Writer {
            types,
            binders: Vec::new(),
            out: Vec::new(),
            depth: 0,
            over: false,
            steps: 0,
            recursive: std::collections::HashMap::new(),
        }
    }

    fn finish(self) -> Option<Vec<u8>> {
        (!self.over).then_some(self.out)
    }

    /// Enters a node: `false` once the form is too long or too deep to go on.
    fn enter(&mut self) -> bool {
        self.depth += 1;
        if self.depth > MAX_NESTING || self.out.len() > MAX_LEN {
            self.over = true;
        }
        !self.over
    }

    fn varint(&mut self, mut value: u64) {
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                self.out.push(byte);
                return;
            }
            self.out.push(byte | 0x80);
        }
    }

    /// Writes `schema` as one node.
    fn node(&mut self, schema: &'a Schema) {
        if self.enter() {
            self.node_within(schema);
        }
        self.depth -= 1;
    }

    fn node_within(&mut self, schema: &'a Schema) {
        let primitive = match schema {
            Schema::Bool => 1,
            Schema::I8 => 2,
            Schema::I16 => 3,
            Schema::I32 => 4,
            Schema::I64 => 5,
            Schema::I128 => 6,
            Schema::U8 => 7,
            Schema::U16 => 8,
            Schema::U32 => 9,
            Schema::U64 => 10,
            Schema::U128 => 11,
            Schema::F32 => 12,
            Schema::F64 => 13,
            Schema::Char => 14,
            Schema::Str => 15,
            Schema::Bytes => 16,
            Schema::Option(inner) => {
                self.out.push(OPTION);
                return self.node(inner);
            }
            // A sequence of bytes is a byte string: postcard writes both alike.
            Schema::Seq(item) if **item == Schema::U8 => 16,
            Schema::Seq(item) => {
                self.out.push(SEQ);
                return self.node(item);
            }
            Schema::Map(key, value) => {
                self.out.push(MAP);
                self.node(key);
                return self.node(value);
            }
            Schema::Unit | Schema::Tuple(_) | Schema::Named(_) => {
                return self.tuple(&[schema]);
            }
        };
        self.out.push(primitive);
    }

    /// Writes `items` as one tuple node, flattened: nested tuples, structs and units melt into
    /// it; no element is a unit; one element is written alone.
    fn tuple(&mut self, items: &[&'a Schema]) {
        let mut elements = Vec::new();
        for item in items {
            self.flatten(item, &mut elements);
        }
        if self.over {
            return;
        }
        match elements.as_slice() {
            [] => self.out.push(UNIT),
            [one] => self.element(one),
            many => {
                self.out.push(TUPLE);
                self.varint(many.len() as u64);
                for element in many {
                    self.element(element);
                }
            }
        }
    }

    fn element(&mut self, element: &Element<'a>) {
        match *element {
            Element::Schema(schema) => self.node(schema),
            Element::Named(name) => self.named(name),
        }
    }

    fn flatten(&mut self, schema: &'a Schema, into: &mut Vec<Element<'a>>) {
        // Named types expand here: the same bounds as for writing hold.
        if self.enter() && into.len() <= MAX_LEN {
            self.flatten_within(schema, into);
        } else {
            self.over = true;
        }
        self.depth -= 1;
    }

    fn flatten_within(&mut self, schema: &'a Schema, into: &mut Vec<Element<'a>>) {
        let types = self.types;
        match schema {
            Schema::Unit => {}
            Schema::Tuple(items) => items.iter().for_each(|item| self.flatten(item, into)),
            Schema::Named(name) => {
                if self.binders.contains(&name.as_str()) || self.recursive(name) {
                    into.push(Element::Named(name));
                    return;
                }
                match types.get(name) {
                    Some(TypeDef::UnitStruct) => {}
                    Some(TypeDef::NewtypeStruct(inner)) => self.flatten(inner, into),
                    Some(TypeDef::TupleStruct(items)) => {
                        items.iter().for_each(|item| self.flatten(item, into));
                    }
                    Some(TypeDef::Struct(fields)) => {
                        fields
                            .iter()
                            .for_each(|field| self.flatten(&field.schema, into));
                    }
                    // An enum is a node of its own, and so is a type without a definition.
                    Some(TypeDef::Enum(_)) | None => into.push(Element::Named(name)),
                }
            }
            other => into.push(Element::Schema(other)),
        }
    }

    /// Writes the named type `name` as one node: a back-reference if it is being written, an
    /// enum, or a recursive type's binder.
    fn named(&mut self, name: &'a str) {
        if self.enter() {
            self.named_within(name);
        }
        self.depth -= 1;
    }

    fn named_within(&mut self, name: &'a str) {
        if let Some(depth) = self.binders.iter().rev().position(|bound| *bound == name) {
            self.out.push(BACK);
            self.varint(depth as u64);
            return;
        }
        let recursive = self.recursive(name);
        if recursive {
            self.out.push(RECURSIVE);
            self.binders.push(name);
        }
        match self.types.get(name) {
            Some(TypeDef::Enum(variants)) => {
                self.out.push(ENUM);
                self.varint(variants.len() as u64);
                for (_, variant) in variants {
                    match variant {
                        Variant::Unit => self.out.push(UNIT),
                        Variant::Newtype(inner) => self.node(inner),
                        Variant::Tuple(items) => self.tuple(&items.iter().collect::<Vec<_>>()),
                        Variant::Struct(fields) => self.tuple(&schemas(fields)),
                    }
                }
            }
            Some(TypeDef::UnitStruct) => self.out.push(UNIT),
            Some(TypeDef::NewtypeStruct(inner)) => self.node(inner),
            Some(TypeDef::TupleStruct(items)) => self.tuple(&items.iter().collect::<Vec<_>>()),
            Some(TypeDef::Struct(fields)) => self.tuple(&schemas(fields)),
            // Only an opaque method, whose fingerprint is not canonical, names a type it does
            // not define.
            None => self.out.push(UNIT),
        }
        if recursive {
            self.binders.pop();
        }
    }

    /// Whether the named type `name` contains itself (found once per type).
    fn recursive(&mut self, name: &'a str) -> bool {
        if let Some(&known) = self.recursive.get(name) {
            return known;
        }
        let found = self.reaches_itself(name);
        self.recursive.insert(name, found);
        found
    }

    fn reaches_itself(&mut self, name: &str) -> bool {
        let mut pending = vec![name];
        let mut seen = std::collections::HashSet::new();
        while let Some(next) = pending.pop() {
            // Every type looked through counts against the form's budget: a hostile schema's
            // long chains of types cannot make this quadratic.
            self.steps += 1;
            if self.steps > MAX_STEPS {
                self.over = true;
                return false;
            }
            let Some(def) = self.types.get(next) else {
                continue;
            };
            let mut reached = Vec::new();
            def_references(def, &mut reached);
            for reached in reached {
                if reached == name {
                    return true;
                }
                if seen.insert(reached) {
                    pending.push(reached);
                }
            }
        }
        false
    }
}

fn schemas(fields: &[Field]) -> Vec<&Schema> {
    fields.iter().map(|field| &field.schema).collect()
}

fn def_references<'a>(def: &'a TypeDef, names: &mut Vec<&'a str>) {
    match def {
        TypeDef::UnitStruct => {}
        TypeDef::NewtypeStruct(inner) => references(inner, names),
        TypeDef::TupleStruct(items) => items.iter().for_each(|item| references(item, names)),
        TypeDef::Struct(fields) => fields.iter().for_each(|f| references(&f.schema, names)),
        TypeDef::Enum(variants) => {
            for (_, variant) in variants {
                match variant {
                    Variant::Unit => {}
                    Variant::Newtype(inner) => references(inner, names),
                    Variant::Tuple(items) => items.iter().for_each(|item| references(item, names)),
                    Variant::Struct(fields) => {
                        fields.iter().for_each(|f| references(&f.schema, names));
                    }
                }
            }
        }
    }
}

/// Adds to `names` every named type `schema` holds, at any depth.
pub(super) fn references<'a>(schema: &'a Schema, names: &mut Vec<&'a str>) {
    match schema {
        Schema::Named(name) => names.push(name),
        Schema::Option(inner) | Schema::Seq(inner) => references(inner, names),
        Schema::Map(key, value) => {
            references(key, names);
            references(value, names);
        }
        Schema::Tuple(items) => items.iter().for_each(|item| references(item, names)),
        _ => {}
    }
}
