//! Schemas as Rust source: what `rpc describe` prints, for people to read, and for a program
//! to compile and call the server described.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use super::canonical::references;
use super::{Download, Field, MethodSchema, Schema, ServiceSchema, TypeDef, Variant};

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

/// A type's schema name as a Rust type's: an instance of a generic type or a second type of
/// one name made one word in upper camel case (`Page<String>` becomes `PageString`, `Item#2`
/// `Item2`), as Rust names types; anything else as [`ident`] makes it.
fn type_ident(name: &str) -> String {
    if name.chars().all(|c| c.is_alphanumeric() || c == '_') {
        return ident(name);
    }
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c.is_alphanumeric() {
            if upper {
                out.extend(c.to_uppercase());
            } else {
                out.push(c);
            }
            upper = false;
        } else {
            upper = true;
        }
    }
    ident(&out)
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
    /// Each type's place in `component`, by name.
    index: BTreeMap<&'a str, usize>,
    /// For each type, its strongly connected component in the graph of types held inline
    /// (directly, in an option or a tuple, not in a sequence or a map): two types of one
    /// component hold each other, so each holds the other boxed.
    component: Vec<usize>,
    /// For each type, whether it holds a float or a map at any depth, which cannot be hashed.
    unhashable: Vec<bool>,
    /// The types a hashed map key holds, at any depth: they derive `Eq` and `Hash` too.
    hashed: BTreeSet<&'a str>,
    /// Whether a `HashMap` was written, for the `use` that names it.
    maps: Cell<bool>,
    /// Whether a `Streaming` was written, for the `use` that names it.
    streams: Cell<bool>,
}

impl<'a> Source<'a> {
    /// Works out what the rendering needs to know of `service`'s types, in time linear in the
    /// size of its schema: a description from a hostile server may hold a great many types.
    fn new(service: &'a ServiceSchema) -> Source<'a> {
        let types = &service.types;
        let index: BTreeMap<&str, usize> = types
            .keys()
            .enumerate()
            .map(|(at, name)| (name.as_str(), at))
            .collect();
        let mut inline = vec![Vec::new(); types.len()];
        let mut held = vec![Vec::new(); types.len()];
        let mut unhashable = vec![false; types.len()];
        for (at, def) in types.values().enumerate() {
            for schema in schemas_of(def) {
                let mut names = Vec::new();
                held_inline(schema, &mut names);
                inline[at].extend(names.iter().filter_map(|name| index.get(name).copied()));
                names.clear();
                references(schema, &mut names);
                held[at].extend(names.iter().filter_map(|name| index.get(name).copied()));
                unhashable[at] |= holds_unhashable(schema);
            }
        }
        // A type that holds an unhashable one is unhashable too.
        let mut holders = vec![Vec::new(); types.len()];
        for (holder, heldby) in held.iter().enumerate() {
            for &one in heldby {
                holders[one].push(holder);
            }
        }
        let mut next: Vec<usize> = (0..types.len()).filter(|&at| unhashable[at]).collect();
        while let Some(at) = next.pop() {
            for &holder in &holders[at] {
                if !unhashable[holder] {
                    unhashable[holder] = true;
                    next.push(holder);
                }
            }
        }
        let mut source = Source {
            types,
            component: components(&inline),
            index,
            unhashable,
            hashed: BTreeSet::new(),
            maps: Cell::new(false),
            streams: Cell::new(false),
        };
        // What hashable map keys hold, at any depth, is hashed.
        let mut keys = Vec::new();
        for def in types.values() {
            schemas_of(def).for_each(|schema| map_keys(schema, &mut keys));
        }
        for method in &service.methods {
            method_schemas(method).for_each(|schema| map_keys(schema, &mut keys));
        }
        let mut next = Vec::new();
        for key in keys {
            if source.hashable(key) {
                let mut names = Vec::new();
                references(key, &mut names);
                next.extend(
                    names
                        .iter()
                        .filter_map(|name| source.index.get(name).copied()),
                );
            }
        }
        let names: Vec<&'a str> = types.keys().map(String::as_str).collect();
        while let Some(at) = next.pop() {
            if source.hashed.insert(names[at]) {
                next.extend(&held[at]);
            }
        }
        source
    }

    /// Whether a value of `schema` can be hashed: it holds no float and no map.
    fn hashable(&self, schema: &Schema) -> bool {
        let mut names = Vec::new();
        references(schema, &mut names);
        !holds_unhashable(schema)
            && names
                .iter()
                .all(|name| self.index.get(name).is_some_and(|&at| !self.unhashable[at]))
    }

    /// `schema` as Rust, in a field of `owner` (none in a signature), held `inline` or not.
    fn ty(&self, schema: &Schema, owner: Option<&str>, inline: bool) -> String {
        match schema {
            Schema::Option(inner) => format!("Option<{}>", self.ty(inner, owner, inline)),
            Schema::Seq(item) => format!("Vec<{}>", self.ty(item, owner, false)),
            Schema::Map(key, value) => {
                let (k, v) = (self.ty(key, owner, false), self.ty(value, owner, false));
                if self.hashable(key) {
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
                let named = type_ident(name);
                // `name` and `owner` hold each other (or are one): boxed, or the type would
                // hold itself without end.
                let component = |name: &str| self.index.get(name).map(|&at| self.component[at]);
                let holds_owner = owner.is_some_and(|owner| {
                    component(owner).is_some_and(|c| component(name) == Some(c))
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
        let rust = type_ident(name);
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
        let mut names = Vec::new();
        method_schemas(method).for_each(|schema| references(schema, &mut names));
        let opaque = names.iter().any(|name| !self.types.contains_key(*name));
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
        let result = match &method.download {
            Download::None => result,
            Download::Items => {
                self.streams.set(true);
                format!("Streaming<{result}>")
            }
            Download::ItemsOrError(error) => {
                self.streams.set(true);
                format!(
                    "Result<Streaming<{result}>, {}>",
                    self.ty(error, None, false)
                )
            }
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
fn held_inline<'a>(schema: &'a Schema, held: &mut Vec<&'a str>) {
    match schema {
        Schema::Option(inner) => held_inline(inner, held),
        Schema::Tuple(items) => items.iter().for_each(|item| held_inline(item, held)),
        Schema::Named(name) => held.push(name),
        _ => {}
    }
}

/// Whether `schema` holds, outside the named types it names, a float or a map, which cannot
/// be hashed.
fn holds_unhashable(schema: &Schema) -> bool {
    match schema {
        Schema::F32 | Schema::F64 | Schema::Map(..) => true,
        Schema::Option(inner) | Schema::Seq(inner) => holds_unhashable(inner),
        Schema::Tuple(items) => items.iter().any(holds_unhashable),
        _ => false,
    }
}

/// The strongly connected components of the graph whose node `n` has edges to `edges[n]`: for
/// each node, a node that stands for its component (Kosaraju's algorithm, without recursion, so
/// that a long chain of types cannot overflow the stack).
fn components(edges: &[Vec<usize>]) -> Vec<usize> {
    let nodes = edges.len();
    let mut visited = vec![false; nodes];
    let mut finished = Vec::with_capacity(nodes);
    for start in 0..nodes {
        if visited[start] {
            continue;
        }
        visited[start] = true;
        let mut stack = vec![(start, 0)];
        while let Some(top) = stack.last_mut() {
            let (node, next) = *top;
            match edges[node].get(next) {
                Some(&to) => {
                    top.1 += 1;
                    if !visited[to] {
                        visited[to] = true;
                        stack.push((to, 0));
                    }
                }
                None => {
                    finished.push(node);
                    stack.pop();
                }
            }
        }
    }
    let mut reversed = vec![Vec::new(); nodes];
    for (from, tos) in edges.iter().enumerate() {
        for &to in tos {
            reversed[to].push(from);
        }
    }
    let mut component = vec![usize::MAX; nodes];
    for &start in finished.iter().rev() {
        if component[start] != usize::MAX {
            continue;
        }
        component[start] = start;
        let mut stack = vec![start];
        while let Some(node) = stack.pop() {
            for &from in &reversed[node] {
                if component[from] == usize::MAX {
                    component[from] = start;
                    stack.push(from);
                }
            }
        }
    }
    component
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
