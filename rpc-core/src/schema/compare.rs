//! What differs between two schemas of a service, on the wire, in words: for a client whose
//! method the server has with another signature, and for a lock file's check.

use std::collections::BTreeMap;
use std::fmt;

use super::{Download, Field, MethodSchema, Schema, ServiceSchema, TypeDef, Variant, canonical};

/// How many levels of types a difference is looked for in.
const MAX_DEPTH: usize = 32;

/// A change that breaks callers: a method removed, or encoded differently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incompatibility {
    /// The method.
    pub method: String,
    /// What changed, in words.
    pub change: String,
}

impl fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.method, self.change)
    }
}

/// The changes from `old` to `new` that callers built from `old` would trip over: methods
/// removed, and methods whose arguments or result are encoded differently. Methods added are
/// not among them, nor changes that leave the bytes alone (renamed fields and types).
pub fn incompatibilities(old: &ServiceSchema, new: &ServiceSchema) -> Vec<Incompatibility> {
    let sides = Sides {
        ours: &old.types,
        theirs: &new.types,
        here: "before",
        there: "now",
    };
    old.methods
        .iter()
        .filter_map(|before| {
            let change = match new.method(&before.name) {
                None => "it was removed".to_owned(),
                Some(now) if now.fingerprint == before.fingerprint => return None,
                Some(now) => sides.method(before, now),
            };
            Some(Incompatibility {
                method: before.name.clone(),
                change,
            })
        })
        .collect()
}

/// What differs between this side's `method` in `ours` and the peer's in `theirs`, in words;
/// `None` if either lacks it or they agree.
pub fn difference(ours: &ServiceSchema, theirs: &ServiceSchema, method: &str) -> Option<String> {
    let (mine, peers) = (ours.method(method)?, theirs.method(method)?);
    if mine.fingerprint == peers.fingerprint {
        return None;
    }
    let sides = Sides {
        ours: &ours.types,
        theirs: &theirs.types,
        here: "here",
        there: "on the server",
    };
    Some(sides.method(mine, peers))
}

/// The two schemas compared, and how to say which is which.
struct Sides<'a> {
    ours: &'a BTreeMap<String, TypeDef>,
    theirs: &'a BTreeMap<String, TypeDef>,
    here: &'a str,
    there: &'a str,
}

impl Sides<'_> {
    /// Whether `ours` and `theirs` are encoded alike; `false` when either is too large to
    /// tell.
    fn same(&self, ours: &Schema, theirs: &Schema) -> bool {
        match (
            canonical::node(ours, self.ours),
            canonical::node(theirs, self.theirs),
        ) {
            (Some(ours), Some(theirs)) => ours == theirs,
            _ => false,
        }
    }

    fn method(&self, ours: &MethodSchema, theirs: &MethodSchema) -> String {
        if ours.args.len() != theirs.args.len() {
            return format!(
                "it takes ({}) {} and ({}) {}",
                list(&ours.args),
                self.here,
                list(&theirs.args),
                self.there
            );
        }
        for (mine, peers) in ours.args.iter().zip(&theirs.args) {
            if !self.same(&mine.schema, &peers.schema) {
                let place = format!("the argument `{}`", mine.name);
                return self.explain(&place, &mine.schema, &peers.schema, 0);
            }
        }
        match (&ours.upload, &theirs.upload) {
            (Some(mine), Some(peers)) if !self.same(&mine.schema, &peers.schema) => {
                let place = format!("the items of the streamed argument `{}`", mine.name);
                return self.explain(&place, &mine.schema, &peers.schema, 0);
            }
            (Some(_), None) | (None, Some(_)) => {
                let streams = |upload: &Option<Field>| {
                    if upload.is_some() {
                        "streams"
                    } else {
                        "does not stream"
                    }
                };
                return format!(
                    "it {} an argument {} and {} {}",
                    streams(&ours.upload),
                    self.here,
                    streams(&theirs.upload),
                    self.there
                );
            }
            _ => {}
        }
        let streams = |download: &Download| match download {
            Download::None => "does not stream its result",
            Download::Items => "streams its result",
            Download::ItemsOrError(_) => "streams its result or returns an error instead",
        };
        match (&ours.download, &theirs.download) {
            (Download::ItemsOrError(mine), Download::ItemsOrError(peers))
                if !self.same(mine, peers) =>
            {
                return self.explain("the error returned instead of a stream", mine, peers, 0);
            }
            (mine, peers) if std::mem::discriminant(mine) != std::mem::discriminant(peers) => {
                return format!(
                    "it {} {} and {} {}",
                    streams(mine),
                    self.here,
                    streams(peers),
                    self.there
                );
            }
            _ => {}
        }
        if !self.same(&ours.result, &theirs.result) {
            return self.explain("the result", &ours.result, &theirs.result, 0);
        }
        "its fingerprint differs, though its schema does not: one side marks it \
         `#[rpc(opaque)]`, or was built from another version of rpc-core"
            .to_owned()
    }

    /// The first difference between `ours` and `theirs` at `place`, which differ on the wire,
    /// looked for `depth` levels down already.
    fn explain(&self, place: &str, ours: &Schema, theirs: &Schema, depth: usize) -> String {
        // A recursive type can lead the search round in circles; a difference this deep is
        // named where it was reached.
        if depth > MAX_DEPTH {
            return self.plain(place, ours, theirs);
        }
        let depth = depth + 1;
        let (ours_def, theirs_def) = (self.def(ours, self.ours), self.def(theirs, self.theirs));
        match (ours, theirs, ours_def, theirs_def) {
            (_, _, Some((name, TypeDef::Struct(mine))), Some((_, TypeDef::Struct(peers)))) => {
                if mine.len() != peers.len() {
                    return format!(
                        "{place}: `{name}` has the fields ({}) {} and ({}) {}",
                        list(mine),
                        self.here,
                        list(peers),
                        self.there
                    );
                }
                self.fields(place, name, mine, peers, depth)
            }
            (_, _, Some((name, TypeDef::Enum(mine))), Some((_, TypeDef::Enum(peers)))) => {
                let names = |variants: &[(String, Variant)]| {
                    variants
                        .iter()
                        .map(|(name, _)| name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                if mine.len() != peers.len() {
                    return format!(
                        "{place}: the enum `{name}` has the variants ({}) {} and ({}) {}",
                        names(mine),
                        self.here,
                        names(peers),
                        self.there
                    );
                }
                for ((variant, mine), (_, peers)) in mine.iter().zip(peers) {
                    let place = format!("{place}, variant `{name}::{variant}`");
                    match (mine, peers) {
                        (Variant::Unit, Variant::Unit) => {}
                        (Variant::Newtype(mine), Variant::Newtype(peers)) => {
                            if !self.same(mine, peers) {
                                return self.explain(&place, mine, peers, depth);
                            }
                        }
                        (Variant::Struct(mine), Variant::Struct(peers))
                            if mine.len() == peers.len() =>
                        {
                            let differs = mine
                                .iter()
                                .zip(peers)
                                .any(|(m, p)| !self.same(&m.schema, &p.schema));
                            if differs {
                                return self.fields(&place, name, mine, peers, depth);
                            }
                        }
                        (mine, peers) => {
                            let mine = Schema::Tuple(variant_items(mine));
                            let peers = Schema::Tuple(variant_items(peers));
                            if !self.same(&mine, &peers) {
                                return self.explain(&place, &mine, &peers, depth);
                            }
                        }
                    }
                }
                self.plain(place, ours, theirs)
            }
            (Schema::Option(mine), Schema::Option(peers), ..) => self.explain(
                &format!("{place} (inside the `Option`)"),
                mine,
                peers,
                depth,
            ),
            (Schema::Seq(mine), Schema::Seq(peers), ..) => {
                self.explain(&format!("{place} (its items)"), mine, peers, depth)
            }
            (Schema::Map(mine_key, mine_value), Schema::Map(peers_key, peers_value), ..) => {
                if self.same(mine_key, peers_key) {
                    self.explain(
                        &format!("{place} (its values)"),
                        mine_value,
                        peers_value,
                        depth,
                    )
                } else {
                    self.explain(&format!("{place} (its keys)"), mine_key, peers_key, depth)
                }
            }
            (Schema::Tuple(mine), Schema::Tuple(peers), ..) if mine.len() == peers.len() => {
                for (index, (mine, peers)) in mine.iter().zip(peers).enumerate() {
                    if !self.same(mine, peers) {
                        return self.explain(&format!("{place}, item {index}"), mine, peers, depth);
                    }
                }
                self.plain(place, ours, theirs)
            }
            _ => self.plain(place, ours, theirs),
        }
    }

    fn fields(
        &self,
        place: &str,
        name: &str,
        mine: &[Field],
        peers: &[Field],
        depth: usize,
    ) -> String {
        for (mine, peers) in mine.iter().zip(peers) {
            if !self.same(&mine.schema, &peers.schema) {
                let place = format!("{place}, field `{name}.{}`", mine.name);
                return self.explain(&place, &mine.schema, &peers.schema, depth);
            }
        }
        format!(
            "{place}: `{name}` is encoded differently {} and {}",
            self.here, self.there
        )
    }

    fn plain(&self, place: &str, ours: &Schema, theirs: &Schema) -> String {
        format!(
            "{place} is `{ours}` {} and `{theirs}` {}",
            self.here, self.there
        )
    }

    /// The definition `schema` names, with its name.
    fn def<'t>(
        &self,
        schema: &'t Schema,
        types: &'t BTreeMap<String, TypeDef>,
    ) -> Option<(&'t str, &'t TypeDef)> {
        match schema {
            Schema::Named(name) => types.get(name).map(|def| (name.as_str(), def)),
            _ => None,
        }
    }
}

fn variant_items(variant: &Variant) -> Vec<Schema> {
    match variant {
        Variant::Unit => Vec::new(),
        Variant::Newtype(inner) => vec![inner.clone()],
        Variant::Tuple(items) => items.clone(),
        Variant::Struct(fields) => fields.iter().map(|field| field.schema.clone()).collect(),
    }
}

fn list(fields: &[Field]) -> String {
    let fields: Vec<String> = fields
        .iter()
        .map(|field| format!("{}: {}", field.name, field.schema))
        .collect();
    fields.join(", ")
}
