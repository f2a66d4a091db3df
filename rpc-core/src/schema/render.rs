//! Schemas as Rust source, for people: what `rpc describe` prints.

use std::fmt::Write;

use super::{Field, Schema, ServiceSchema, TypeDef, Variant};

/// A type as Rust writes it.
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

fn fields(fields: &[Field], indent: &str) -> String {
    let mut out = String::new();
    for field in fields {
        let _ = writeln!(
            out,
            "{indent}    {}: {},",
            field.name,
            schema(&field.schema)
        );
    }
    out
}

fn tuple(items: &[Schema]) -> String {
    let items: Vec<String> = items.iter().map(schema).collect();
    items.join(", ")
}

fn type_def(name: &str, def: &TypeDef) -> String {
    let name = name.replace('#', "_");
    match def {
        TypeDef::UnitStruct => format!("pub struct {name};\n"),
        TypeDef::NewtypeStruct(inner) => format!("pub struct {name}(pub {});\n", schema(inner)),
        TypeDef::TupleStruct(items) => format!("pub struct {name}({});\n", tuple(items)),
        TypeDef::Struct(members) => format!("pub struct {name} {{\n{}}}\n", fields(members, "")),
        TypeDef::Enum(variants) => {
            let mut out = format!("pub enum {name} {{\n");
            for (variant, shape) in variants {
                let _ = match shape {
                    Variant::Unit => writeln!(out, "    {variant},"),
                    Variant::Newtype(inner) => writeln!(out, "    {variant}({}),", schema(inner)),
                    Variant::Tuple(items) => writeln!(out, "    {variant}({}),", tuple(items)),
                    Variant::Struct(members) => {
                        writeln!(out, "    {variant} {{\n{}    }},", fields(members, "    "))
                    }
                };
            }
            out.push_str("}\n");
            out
        }
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

/// A service as Rust source: its types, then its trait.
pub(super) fn service(service: &ServiceSchema) -> String {
    let mut out = String::new();
    for (name, def) in &service.types {
        if is_std_result(name, def) {
            continue;
        }
        out.push_str(&type_def(name, def));
        out.push('\n');
    }
    let _ = writeln!(out, "#[rpc_core::service]\npub trait {} {{", service.name);
    for method in &service.methods {
        if method.idempotent {
            out.push_str("    #[rpc(idempotent)]\n");
        }
        let mut args: Vec<String> = vec!["&self".to_owned()];
        args.extend(
            method
                .args
                .iter()
                .map(|arg| format!("{}: {}", arg.name, schema(&arg.schema))),
        );
        if let Some(upload) = &method.upload {
            args.push(format!(
                "{}: Streaming<{}>",
                upload.name,
                schema(&upload.schema)
            ));
        }
        let result = if method.download {
            format!("Streaming<{}>", schema(&method.result))
        } else {
            schema(&method.result)
        };
        let returns = if result == "()" {
            String::new()
        } else {
            format!(" -> {result}")
        };
        let _ = writeln!(
            out,
            "    async fn {}({}){returns};",
            method.name,
            args.join(", ")
        );
    }
    out.push_str("}\n");
    out
}
