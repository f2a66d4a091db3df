//! Schemas as Rust source: what `rpc describe` prints, for people to read, and for a program
//! to compile and call the server described.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use super::{Field, MethodSchema, Schema, ServiceSchema, TypeDef, Variant};

/// A type as Rust writes it, for a person reading a message (`Display` for [`Schema`]).
pub(super) fn schema(schema: &Schema) -> String {
    match schema {
        Schema::Unit => "()".to_owned(),
        Schema::Bool => "bool".to_owned(),
        Schema::I8 => "i8".to_owned(),
        Schema::I16 => "i16".to_owned(),
        Schema::I32 => "i32".to_owned(),
        Schema::I64 => "i64".to_owned(),
        Schema::I128 => "i128".to_owned(),
        Schema::U8 => "u8".to_owned(),
        Schema::U16 => "u16".to_owned(),
        Schema::U32 => "u32".to_owned(),
        Schema::U64 => "u64".to_owned(),
        Schema::U128 => "u128".to_owned(),
        Schema::F32 => "f32".to_owned(),
        Schema::F64 => "f64".to_owned(),
        Schema::Char => "char".to_owned(),
        Schema::Str => "String".to_owned(),
        Schema::Bytes => "Vec<u8>".to_owned(),
        Schema::Option(inner) => format!("Option<{}>", self::schema(inner)),
        Schema::Seq(item) => format!("Vec<{}>", self::schema(item)),
        Schema::Map(key, value) => {
            format!("HashMap<{}, {}>", self::schema(key), self::schema(value))
        }
        Schema::Tuple(items) if items.len() == 1 => format!("({},)", self::schema(&items[0])),
        Schema::Tuple(items) => {
            let items: Vec<String> = items.iter().map(self::schema).collect();
            format!("({})", items.join(", "))
        }
        Schema::Named(name) => name.replace('#', "_"),
    }
}

/// Whether `name` is an instance of the standard library's `Result`, which the signatures name
/// as Rust does and which needs no definition (as a generic instance, `pub enum Result<i64,
/// MathError>` would not be Rust).
fn is_std_result(name: &str, def: &TypeDef) -> bool {
    let TypeDef::Enum(variants) = def else {
        return false;
    };
    name.starts_with("Result<")
        && matches!(
            variants.as_slice(),
            [(ok, Variant::Newtype(_)), (err, Variant::Newtype(_))] if ok == "Ok" && err == "Err"
        )
}

/// Rust's keywords that may stand as raw identifiers (`r#type`); `self`, `Self`, `super` and
/// `crate` may not, and are made other names.
const KEYWORDS: &[&str] = &[
    "abstract", "as", "async", "await", "become", "box", "break", "const", "continue", "do", "dyn",
    "else", "enum", "extern", "false", "final", "fn", "for", "gen", "if", "impl", "in", "let",
    "loop", "macro", "match", "mod", "move", "mut", "override", "priv", "pub", "ref", "return",
    "static", "struct", "trait", "true", "try", "type", "typeof", "unsafe", "unsized", "use",
    "virtual", "where", "while", "yield",
];

/// `name` as an identifier (`super::rust_identifier`). Names are not on the wire, so any
/// identifier will do.
pub(super) fn ident(name: &str) -> String {
    if KEYWORDS.contains(&name) {
        return format!("r#{name}");
    }
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_numeric()) || is_path_keyword(&out) {
        out.insert(0, '_');
    }
    out
}

fn is_path_keyword(name: &str) -> bool {
    matches!(name, "self" | "Self" | "super" | "crate" | "_")
}

/// A service's types and trait as Rust source that compiles beside serde (with its `derive`
/// feature) and rpc-core, and whose client calls the server described. What a schema does not
/// say is chosen so that no byte on the wire changes: each type derives `Serialize` and
/// `Deserialize` (and `Debug`, `Clone`, `PartialEq`; `Eq` and `Hash` too where it is a map's
/// key), a map is a `HashMap` (a vector of pairs where its key holds a float or a map, which
/// cannot be hashed), a byte string or a set is a `Vec`, a type that holds itself directly or
/// through others (not through a vector or a map) holds itself boxed, and a name that is not
/// an identifier is made one.
struct Source<'a> {
    types: &'a BTreeMap<String, TypeDef>,
    /// For each type, the types it holds inline, at any depth: directly, in an option or a
    /// tuple, not in a sequence or a map.
    inline: BTreeMap<&'a str, BTreeSet<&'a str>>,
    /// The types a hashed map key holds, at any depth: they derive `Eq` and `Hash` too.
    hashed: BTreeSet<&'a str>,
    /// Whether a `HashMap` was written, for the `use` that names it.
    maps: Cell<bool>,
    /// Whether a `Streaming` was written, for the `use` that names it.
    streams: Cell<bool>,
}

impl<'a> Source<'a> {
    fn new(service: &'a ServiceSchema) -> Source<'a> {
        let types = &service.types;
        let mut direct: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for (name, def) in types {
            let held = direct.entry(name.as_str()).or_default();
            for schema in schemas_of(def) {
                held_inline(schema, held);
            }
        }
        let inline = direct
            .keys()
            .map(|&name| (name, reachable(name, &direct)))
            .collect();
        let mut source = Source {
            types,
            inline,
            hashed: BTreeSet::new(),
            maps: Cell::new(false),
            streams: Cell::new(false),
        };
        let mut keys = Vec::new();
        for def in types.values() {
            for schema in schemas_of(def) {
                map_keys(schema, &mut keys);
            }
        }
        for method in &service.methods {
            for schema in method_schemas(method) {
                map_keys(schema, &mut keys);
            }
        }
        for key in keys {
            if source.hashable(key, &mut BTreeSet::new()) {
                source.hash(key);
            }
        }
        source
    }

    /// Whether a value of `schema` can be hashed: it holds no float and no map.
    fn hashable(&self, schema: &Schema, seen: &mut BTreeSet<String>) -> bool {
        match schema {
            Schema::F32 | Schema::F64 | Schema::Map(..) => false,
            Schema::Option(inner) | Schema::Seq(inner) => self.hashable(inner, seen),
            Schema::Tuple(items) => items.iter().all(|item| self.hashable(item, seen)),
            Schema::Named(name) => match self.types.get(name) {
                Some(def) if seen.insert(name.clone()) => {
                    schemas_of(def).all(|inner| self.hashable(inner, seen))
                }
                // Already being looked at: the rest of it answers.
                Some(_) => true,
                None => false,
            },
            _ => true,
        }
    }

    /// Marks every type `key` holds as hashed.
    fn hash(&mut self, key: &'a Schema) {
        match key {
            Schema::Option(inner) | Schema::Seq(inner) => self.hash(inner),
            Schema::Map(key, value) => {
                self.hash(key);
                self.hash(value);
            }
            Schema::Tuple(items) => items.iter().for_each(|item| self.hash(item)),
            Schema::Named(name) => {
                if let Some((name, def)) = self.types.get_key_value(name)
                    && self.hashed.insert(name.as_str())
                {
                    schemas_of(def).for_each(|inner| self.hash(inner));
                }
            }
            _ => {}
        }
    }

    /// `schema` as Rust, in a field of `owner` (none in a signature), held `inline` or not.
    fn ty(&self, schema: &Schema, owner: Option<&str>, inline: bool) -> String {
        match schema {
            Schema::Option(inner) => format!("Option<{}>", self.ty(inner, owner, inline)),
            Schema::Seq(item) => format!("Vec<{}>", self.ty(item, owner, false)),
            Schema::Map(key, value) => {
                let (k, v) = (self.ty(key, owner, false), self.ty(value, owner, false));
                if self.hashable(key, &mut BTreeSet::new()) {
                    self.maps.set(true);
                    format!("HashMap<{k}, {v}>")
                } else {
                    format!("Vec<({k}, {v})>")
                }
            }
            Schema::Tuple(items) if items.len() == 1 => {
                format!("({},)", self.ty(&items[0], owner, inline))
            }
            Schema::Tuple(items) => format!("({})", self.tuple(items, owner, inline, "")),
            Schema::Named(name) => {
                if let Some([ok, err]) = self.std_result(name) {
                    let (ok, err) = (self.ty(ok, owner, inline), self.ty(err, owner, inline));
                    return format!("Result<{ok}, {err}>");
                }
                let named = ident(name);
                let holds_owner = owner.is_some_and(|owner| {
                    name == owner
                        || self
                            .inline
                            .get(name.as_str())
                            .is_some_and(|held| held.contains(owner))
                });
                if inline && holds_owner {
                    format!("Box<{named}>")
                } else {
                    named
                }
            }
            other => self::schema(other),
        }
    }

    /// The types of the `Ok` and `Err` of `name`, if it is an instance of the standard
    /// library's `Result`: written as `Result<T, E>` from them, not from its name.
    fn std_result(&self, name: &str) -> Option<[&'a Schema; 2]> {
        let def = self.types.get(name)?;
        let TypeDef::Enum(variants) = def else {
            return None;
        };
        match variants.as_slice() {
            [(_, Variant::Newtype(ok)), (_, Variant::Newtype(err))] if is_std_result(name, def) => {
                Some([ok, err])
            }
            _ => None,
        }
    }

    fn tuple(&self, items: &[Schema], owner: Option<&str>, inline: bool, vis: &str) -> String {
        let items: Vec<String> = items
            .iter()
            .map(|item| format!("{vis}{}", self.ty(item, owner, inline)))
            .collect();
        items.join(", ")
    }

    fn fields(&self, fields: &[Field], owner: &str, indent: &str, visibility: &str) -> String {
        let mut out = String::new();
        for field in fields {
            let _ = writeln!(
                out,
                "{indent}    {visibility}{}: {},",
                ident(&field.name),
                self.ty(&field.schema, Some(owner), true)
            );
        }
        out
    }

    fn type_def(&self, name: &str, def: &TypeDef) -> String {
        let derives = if self.hashed.contains(name) {
            "Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize"
        } else {
            "Debug, Clone, PartialEq, Serialize, Deserialize"
        };
        let mut out = format!("#[derive({derives})]\n");
        let rust = ident(name);
        let _ = match def {
            TypeDef::UnitStruct => writeln!(out, "pub struct {rust};"),
            TypeDef::NewtypeStruct(inner) => {
                let inner = self.ty(inner, Some(name), true);
                writeln!(out, "pub struct {rust}(pub {inner});")
            }
            TypeDef::TupleStruct(items) => {
                let items = self.tuple(items, Some(name), true, "pub ");
                writeln!(out, "pub struct {rust}({items});")
            }
            TypeDef::Struct(members) => {
                let fields = self.fields(members, name, "", "pub ");
                writeln!(out, "pub struct {rust} {{\n{fields}}}")
            }
            TypeDef::Enum(variants) => {
                let _ = writeln!(out, "pub enum {rust} {{");
                for (variant, shape) in variants {
                    let variant = ident(variant);
                    let _ = match shape {
                        Variant::Unit => writeln!(out, "    {variant},"),
                        Variant::Newtype(inner) => {
                            let inner = self.ty(inner, Some(name), true);
                            writeln!(out, "    {variant}({inner}),")
                        }
                        Variant::Tuple(items) => {
                            let items = self.tuple(items, Some(name), true, "");
                            writeln!(out, "    {variant}({items}),")
                        }
                        Variant::Struct(members) => {
                            let fields = self.fields(members, name, "    ", "");
                            writeln!(out, "    {variant} {{\n{fields}    }},")
                        }
                    };
                }
                writeln!(out, "}}")
            }
        };
        out
    }

    /// A method's declaration in the trait, or, for a method whose types the server does not
    /// describe (`#[rpc(opaque)]`), a comment saying it is left out.
    fn method(&self, method: &MethodSchema) -> String {
        let opaque = method_schemas(method).any(|schema| self.names_unknown(schema));
        if opaque {
            return format!(
                "    // `{}` is left out: the server does not describe its types \
                 (`#[rpc(opaque)]`).\n",
                method.name
            );
        }
        let mut out = String::new();
        if method.idempotent {
            out.push_str("    #[rpc(idempotent)]\n");
        }
        let mut args: Vec<String> = vec!["&self".to_owned()];
        args.extend(method.args.iter().map(|arg| {
            format!(
                "{}: {}",
                ident(&arg.name),
                self.ty(&arg.schema, None, false)
            )
        }));
        if let Some(upload) = &method.upload {
            let items = self.ty(&upload.schema, None, false);
            args.push(format!("{}: Streaming<{items}>", ident(&upload.name)));
            self.streams.set(true);
        }
        let result = self.ty(&method.result, None, false);
        let result = if method.download {
            self.streams.set(true);
            format!("Streaming<{result}>")
        } else {
            result
        };
        let returns = if result == "()" {
            String::new()
        } else {
            format!(" -> {result}")
        };
        let _ = writeln!(
            out,
            "    async fn {}({}){returns};",
            ident(&method.name),
            args.join(", ")
        );
        out
    }

    /// Whether `schema` names a type the service does not define.
    fn names_unknown(&self, schema: &Schema) -> bool {
        match schema {
            Schema::Option(inner) | Schema::Seq(inner) => self.names_unknown(inner),
            Schema::Map(key, value) => self.names_unknown(key) || self.names_unknown(value),
            Schema::Tuple(items) => items.iter().any(|item| self.names_unknown(item)),
            Schema::Named(name) => !self.types.contains_key(name),
            _ => false,
        }
    }
}

/// The schemas a type's definition holds, one level down.
fn schemas_of(def: &TypeDef) -> Box<dyn Iterator<Item = &Schema> + '_> {
    match def {
        TypeDef::UnitStruct => Box::new(std::iter::empty()),
        TypeDef::NewtypeStruct(inner) => Box::new(std::iter::once(inner)),
        TypeDef::TupleStruct(items) => Box::new(items.iter()),
        TypeDef::Struct(fields) => Box::new(fields.iter().map(|field| &field.schema)),
        TypeDef::Enum(variants) => Box::new(variants.iter().flat_map(|(_, shape)| {
            let held: Box<dyn Iterator<Item = &Schema>> = match shape {
                Variant::Unit => Box::new(std::iter::empty()),
                Variant::Newtype(inner) => Box::new(std::iter::once(inner)),
                Variant::Tuple(items) => Box::new(items.iter()),
                Variant::Struct(fields) => Box::new(fields.iter().map(|field| &field.schema)),
            };
            held
        })),
    }
}

/// The schemas of a method's signature: its arguments, streamed argument and result.
fn method_schemas(method: &MethodSchema) -> impl Iterator<Item = &Schema> {
    let args = method.args.iter().map(|arg| &arg.schema);
    let upload = method.upload.iter().map(|upload| &upload.schema);
    args.chain(upload).chain(std::iter::once(&method.result))
}

/// Adds to `held` the types `schema` names inline: not in a sequence or a map.
fn held_inline<'a>(schema: &'a Schema, held: &mut BTreeSet<&'a str>) {
    match schema {
        Schema::Option(inner) => held_inline(inner, held),
        Schema::Tuple(items) => items.iter().for_each(|item| held_inline(item, held)),
        Schema::Named(name) => {
            held.insert(name.as_str());
        }
        _ => {}
    }
}

/// Every type reachable from `from` through `edges`, at any depth.
fn reachable<'a>(from: &'a str, edges: &BTreeMap<&'a str, BTreeSet<&'a str>>) -> BTreeSet<&'a str> {
    let mut seen = BTreeSet::new();
    let mut next: Vec<&str> = edges.get(from).into_iter().flatten().copied().collect();
    while let Some(name) = next.pop() {
        if seen.insert(name) {
            next.extend(edges.get(name).into_iter().flatten().copied());
        }
    }
    seen
}

/// Adds to `keys` the key of each map in `schema`, at any depth.
fn map_keys<'a>(schema: &'a Schema, keys: &mut Vec<&'a Schema>) {
    match schema {
        Schema::Option(inner) | Schema::Seq(inner) => map_keys(inner, keys),
        Schema::Map(key, value) => {
            keys.push(key);
            map_keys(key, keys);
            map_keys(value, keys);
        }
        Schema::Tuple(items) => items.iter().for_each(|item| map_keys(item, keys)),
        _ => {}
    }
}

/// A service as Rust source: the `use`s it needs, its types, then its trait.
pub(super) fn service(service: &ServiceSchema) -> String {
    let source = Source::new(service);
    let mut body = String::new();
    for (name, def) in &service.types {
        if is_std_result(name, def) {
            continue;
        }
        body.push_str(&source.type_def(name, def));
        body.push('\n');
    }
    let _ = writeln!(
        body,
        "#[rpc_core::service]\npub trait {} {{",
        ident(&service.name)
    );
    for method in &service.methods {
        body.push_str(&source.method(method));
    }
    body.push_str("}\n");
    let defines = service
        .types
        .iter()
        .any(|(name, def)| !is_std_result(name, def));
    let mut out = String::new();
    if source.streams.get() {
        out.push_str("use rpc_core::Streaming;\n");
    }
    if defines {
        out.push_str("use serde::{Deserialize, Serialize};\n");
    }
    if source.maps.get() {
        out.push_str("use std::collections::HashMap;\n");
    }
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(&body);
    out
}
