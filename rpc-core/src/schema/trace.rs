//! Tracing a type's schema: deserializing it from a deserializer that makes up values and
//! writes down what the type asks for.
//!
//! One pass deserializes one value. An `Option` is `Some` and a sequence or map has one
//! element until what they hold is known, then they are empty; an enum takes a variant not
//! traced yet. A pass may fail where a type contains itself; what it learned stays, and the
//! next pass takes another way, until every part of the type is known.

use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};

use super::{Field, Schema, SchemaProblem, TypeDef, Variant};

/// A type's shape while it is being traced: a [`Schema`] with parts not known yet.
#[derive(Debug, Clone, PartialEq)]
enum Format {
    Unknown,
    Known(Schema),
    Option(Box<Format>),
    Seq(Box<Format>),
    Map(Box<Format>, Box<Format>),
    Tuple(Vec<Format>),
}

/// A named type's shape while it is being traced.
#[derive(Debug, Clone, PartialEq)]
enum Container {
    Unit,
    Newtype(Format),
    Tuple(Vec<Format>),
    Struct(Vec<(&'static str, Format)>),
    /// Each variant, `None` until traced.
    Enum(Vec<(&'static str, Option<VariantFormat>)>),
}

#[derive(Debug, Clone, PartialEq)]
enum VariantFormat {
    Unit,
    Newtype(Format),
    Tuple(Vec<Format>),
    Struct(Vec<(&'static str, Format)>),
}

/// How deep one named type may nest in itself within one pass.
const MAX_NESTING: usize = 3;

/// How many passes one type may take.
const MAX_PASSES: usize = 10_000;

/// Texts offered in turn, one a pass, to a type that refuses `""` and `"a"` where it reads a
/// string, after the service's own ([`Tracer::with_texts`]): what the types of common crates
/// and validated newtypes that travel as text parse (a number, a date and time with and
/// without its offset, a date, a time, a UUID, an address with and without a port, a URL, a
/// version, a duration, a word, an email address, a domain, a network, a media type, a date
/// and time in a time zone, a ULID).
pub(super) const TEXTS: &[&str] = &[
    "0",
    "1970-01-01T00:00:00Z",
    "1970-01-01T00:00:00",
    "1970-01-01",
    "00:00:00",
    "00000000-0000-0000-0000-000000000000",
    "127.0.0.1",
    "127.0.0.1:1",
    "http://localhost/",
    "0.0.0",
    "1s",
    "name",
    "name@example.com",
    "example.com",
    "127.0.0.1/32",
    "text/plain",
    "1970-01-01T00:00:00+00:00[UTC]",
    "00000000000000000000000000",
];

/// The lengths of the byte strings of zeros offered in turn, one a pass, to a type that refuses
/// an empty one and `b"a"`: what fixed-size values read (a UUID's 16 bytes, a hash's 32...).
const BYTE_LENGTHS: &[usize] = &[16, 32, 4, 8, 12, 20, 24, 48, 64];

/// What a place is offered in turn when the type read there refuses what it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Offer {
    /// One of the service's texts, then of [`TEXTS`].
    Text,
    /// A byte string of one of [`BYTE_LENGTHS`].
    Bytes,
}

/// Where a text or a byte string is read: what is offered, in which named type being
/// deserialized (none at the root), and how many texts or byte strings were read in it before,
/// plus one. The type that reads it may be no named type of its own (a date parsed from a
/// `String` it read), so the place stands for it: the same from pass to pass where what comes
/// before it in its named type does.
type Site = (Offer, Option<Key>, u32);

/// How many variants of each enum the values made to be written and read back take in turn, at
/// the most ([`Tracer::trace_made`]): enums of more variants have their first ones made.
const MADE_CHOICES: usize = 16;

/// How many values of the passes that trace a type are kept, to be written and read back
/// ([`Tracer::trace_made`]).
const MADE_KEPT: usize = 64;

/// How many levels of options, sequences and maps the values made to be written and read back
/// hold something at, at the most ([`Tracer::trace_made`]): one value for each count from none
/// up to this.
const MADE_LEVELS: u8 = 4;

/// Why tracing stopped.
#[derive(Debug)]
pub(super) enum TraceError {
    /// The type nests in itself here; another pass takes another way.
    Recursion,
    /// The type's `Deserialize` refused a made-up value; the other made-up values may do.
    Refused(String),
    /// The type cannot be described.
    Unsupported(String),
    /// The type asks the format what comes next, which postcard cannot say: it cannot travel.
    NotCarried(String),
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceError::Recursion => f.write_str("the type contains itself at every turn"),
            TraceError::Refused(why)
            | TraceError::Unsupported(why)
            | TraceError::NotCarried(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for TraceError {}

impl de::Error for TraceError {
    fn custom<T: fmt::Display>(message: T) -> Self {
        TraceError::Refused(format!(
            "its Deserialize refused the made-up values (zeros and empty strings, then ones \
             and \"a\", and where it refused those, the service's own texts, common ones such \
             as a date, an address or an email address, and byte strings of zeros of common \
             lengths): {message}"
        ))
    }
}

/// Traces the types of one service, which share one table of named types.
#[derive(Debug, Default)]
pub(super) struct Tracer {
    /// Named types, by name and field or variant names (two types of one name differ there).
    types: BTreeMap<Key, Container>,
    /// The name each named type has in the schema, given when first seen.
    names: BTreeMap<Key, String>,
    /// The named types being deserialized, outermost first.
    stack: Vec<Key>,
    /// For each entry of `stack`, whether its type was entered before in this pass where
    /// nothing ended, and learned there: a value entered again ends as soon as it can.
    again: Vec<bool>,
    /// The named types entered in this pass where nothing ended.
    entered: std::collections::BTreeSet<Key>,
    /// Bumped whenever what is known of a named type changes, so that what is worked out from
    /// it is worked out again.
    generation: u64,
    /// How many times each named type, by its schema name, is in `stack`.
    stacked: BTreeMap<String, usize>,
    /// How many entries of `stack` are of a type already in it further out.
    nested: usize,
    /// Each named type's schema name's key: [`Tracer::names`] the other way round.
    by_name: BTreeMap<String, Key>,
    /// [`Tracer::known_whole`] of the named types asked about, in a generation.
    whole: std::cell::RefCell<(u64, BTreeMap<String, bool>)>,
    /// [`Tracer::heights`] of the generation it was worked out in.
    heights: std::cell::RefCell<Option<(u64, Rc<Heights>)>>,
    /// Whether the current pass has learned anything.
    learned: bool,
    /// Whether values are made up as ones (`1`, `"a"`, `true`) rather than zeros (`0`, `""`,
    /// `false`): for a type that refuses zeros, such as `NonZeroU32`.
    ones: bool,
    /// Once a type is traced, while making its values ([`Tracer::trace_made`]): how many levels
    /// of options, sequences and maps hold something (`Some`, an item, an entry); deeper ones,
    /// and those within a type nested in itself, hold nothing. `None` while tracing.
    holding: Option<u8>,
    /// How many levels of options, sequences and maps the value being made is within.
    level: u8,
    /// While making values: which variant each enum takes, outside any type nested in itself
    /// (this one, counted round its variants).
    choice: usize,
    /// Texts of the forms the service's own types parse, offered before [`TEXTS`].
    texts: &'static [&'static str],
    /// Whether a pass ended on a text refused after every text was offered: the service may
    /// name one its type accepts.
    texts_refused: bool,
    /// For each place where the type read refused the text or byte string it was offered:
    /// which of the texts or [`BYTE_LENGTHS`] it is offered now.
    offers: BTreeMap<Site, usize>,
    /// Where the last value of this pass was read, if it was a text or a byte string: where a
    /// refusal that ends the pass then comes from.
    last_offer: Option<Site>,
    /// For each entry of `stack`, and first for the root, how many texts and byte strings were
    /// read in it so far in this pass.
    offered_in: Vec<u32>,
}

/// A named type's key: its serde name, and its Rust type's name (which tells apart two types
/// of one name, and the instances of a generic type).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    name: &'static str,
    rust: &'static str,
}

impl Key {
    fn of<V>(name: &'static str) -> Key {
        Key {
            name,
            rust: std::any::type_name::<V>(),
        }
    }

    /// The name a schema gives the type: its serde name, or for an instance of a generic type,
    /// its Rust name without paths (`Result<i64, DivideByZero>`).
    fn display(&self) -> String {
        if self.rust.contains('<') {
            short(self.rust)
        } else {
            self.name.to_owned()
        }
    }
}

/// A Rust type's name without the paths of the types in it.
fn short(type_name: &str) -> String {
    let mut out = String::with_capacity(type_name.len());
    let mut segment_start = 0;
    let mut chars = type_name.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ':' && chars.peek() == Some(&':') {
            chars.next();
            out.truncate(segment_start);
        } else {
            out.push(c);
            if !(c.is_alphanumeric() || c == '_') {
                segment_start = out.len();
            }
        }
    }
    out
}

impl Tracer {
    /// A tracer that offers `texts` where a type refuses `""` and `"a"`, before [`TEXTS`].
    pub(super) fn with_texts(texts: &'static [&'static str]) -> Tracer {
        Tracer {
            texts,
            ..Tracer::default()
        }
    }

    /// The schema of `T`, tracing as many passes as it takes, and values of `T` made up on
    /// the way: those the first passes made, then, the type traced, one for each count of
    /// levels of options, sequences and maps that hold something, from none up to
    /// [`MADE_LEVELS`], and each enum's variants in turn (so that every field of every variant
    /// is made both empty and full at each level: a value that writes what it does not read
    /// back is found where a field is left out when empty).
    pub(super) fn trace_made<T: DeserializeOwned>(
        &mut self,
    ) -> Result<(Schema, Vec<T>), (String, SchemaProblem)> {
        let mut root = Format::Unknown;
        let mut made = Vec::new();
        self.ones = false;
        // A place is known by its named type, or none at the root: what another root type
        // accepted there says nothing of this one.
        self.offers.clear();
        for _ in 0..MAX_PASSES {
            let pass = self.pass::<T>(&mut root);
            match pass {
                // The first passes' values, each learning another part; a type that takes
                // thousands of passes is not kept in memory thousands of times.
                Ok(value) if made.len() < MADE_KEPT => made.push(value),
                Ok(_) => {}
                Err(TraceError::Recursion) => {}
                // Refused a text or byte string: the next pass offers it the next. Refused a
                // zero: the passes go on with ones. Either learns the same shapes.
                Err(TraceError::Refused(_)) if self.offer_next() => continue,
                Err(TraceError::Refused(_)) if !self.ones => {
                    self.ones = true;
                    continue;
                }
                Err(TraceError::Refused(why)) if self.texts_refused => {
                    return Err((self.located(why), SchemaProblem::TextRefused));
                }
                Err(TraceError::Refused(why) | TraceError::Unsupported(why)) => {
                    return Err((self.located(why), SchemaProblem::Undescribable));
                }
                Err(TraceError::NotCarried(why)) => {
                    return Err((self.located(why), SchemaProblem::NotCarried));
                }
            }
            // Complete, and some pass made a value: the type has values, all of them described.
            if !made.is_empty() && self.complete(&root) {
                let choices = self.most_variants();
                for levels in 0..=MADE_LEVELS {
                    for choice in 0..choices {
                        self.holding = Some(levels);
                        self.choice = choice;
                        let value = self.pass::<T>(&mut root);
                        made.extend(value.ok());
                    }
                }
                self.holding = None;
                return Ok((self.finish(&root), made));
            }
            if !self.learned {
                break;
            }
        }
        Err((
            self.located(
                "it contains itself with no way out (no `Option`, sequence, map or other enum \
                 variant ends the nesting)"
                    .to_owned(),
            ),
            SchemaProblem::Undescribable,
        ))
    }

    /// The most variants of any enum traced, up to [`MADE_CHOICES`], and at least one: how
    /// many values to make at each level, each with its enums' variants chosen in turn.
    fn most_variants(&self) -> usize {
        let variants = self.types.values().map(|container| match container {
            Container::Enum(variants) => variants.len(),
            _ => 1,
        });
        variants.max().unwrap_or(1).clamp(1, MADE_CHOICES)
    }

    /// Whether the pass just made ended on a text or a byte string, refused by the type that
    /// read it (no other value was read after it), and that place has more to be offered: it
    /// is, at the next pass. Notes whether it was a text with none left to offer.
    fn offer_next(&mut self) -> bool {
        self.texts_refused = false;
        let Some(site) = self.last_offer.take() else {
            return false;
        };
        let count = match site.0 {
            Offer::Text => self.texts.len() + TEXTS.len(),
            Offer::Bytes => BYTE_LENGTHS.len(),
        };
        match self.offers.get_mut(&site) {
            None => {
                self.offers.insert(site, 0);
                true
            }
            Some(offered) if *offered + 1 < count => {
                *offered += 1;
                true
            }
            Some(_) => {
                self.texts_refused = site.0 == Offer::Text;
                false
            }
        }
    }

    /// Where the next `offer` is read, noted as the last value read.
    fn site(&mut self, offer: Offer) -> Option<usize> {
        let read_before = self.offered_in.last_mut().map_or(0, |read| {
            *read += 1;
            *read
        });
        let site = (offer, self.stack.last().cloned(), read_before);
        let offered = self.offers.get(&site).copied();
        self.last_offer = Some(site);
        offered
    }

    /// The text offered where a string is read: `""`, or `"a"` with ones, unless the type read
    /// there refused those (then one of the service's texts, then of [`TEXTS`]).
    fn text(&mut self) -> &'static str {
        match self.site(Offer::Text) {
            Some(offered) => match self.texts.get(offered) {
                Some(text) => text,
                None => TEXTS[offered - self.texts.len()],
            },
            None if self.ones => "a",
            None => "",
        }
    }

    /// The byte string offered where one is read: empty, or `b"a"` with ones, unless the type
    /// read there refused those (then zeros of one of [`BYTE_LENGTHS`]).
    fn byte_string(&mut self) -> Vec<u8> {
        match self.site(Offer::Bytes) {
            Some(offered) => vec![0; BYTE_LENGTHS[offered]],
            None if self.ones => b"a".to_vec(),
            None => Vec::new(),
        }
    }

    /// One pass: deserializes a `T` into what is known of it as `root`.
    fn pass<T: DeserializeOwned>(&mut self, root: &mut Format) -> Result<T, TraceError> {
        self.learned = false;
        self.stack.clear();
        self.stacked.clear();
        self.nested = 0;
        self.again.clear();
        self.entered.clear();
        self.level = 0;
        self.last_offer = None;
        self.offered_in.clear();
        self.offered_in.push(0);
        T::deserialize(Tracing {
            tracer: self,
            slot: root,
        })
    }

    /// Runs `read` one level of options, sequences and maps further in if `holds`, as what an
    /// option, a sequence or a map holds is read.
    fn deeper<R>(&mut self, holds: bool, read: impl FnOnce(&mut Tracer) -> R) -> R {
        self.level += u8::from(holds);
        let read = read(self);
        self.level -= u8::from(holds);
        read
    }

    /// Whether an option, a sequence or a map whose contents are `settled` (nothing more to
    /// learn from them here) holds something: while tracing, where there is more to learn and
    /// nothing ends; while making values, at the levels that hold something, outside any type
    /// nested in itself.
    fn holds(&self, settled: bool) -> bool {
        let wanted = match self.holding {
            Some(levels) => self.level < levels,
            None => !settled,
        };
        wanted && !self.ending()
    }

    /// `why`, saying in which named type tracing stopped.
    fn located(&self, why: String) -> String {
        match self.stack.last() {
            Some(key) => format!("in `{}`: {why}", key.name),
            None => why,
        }
    }

    /// Every named type traced, as the schema names them.
    pub(super) fn types(&self) -> BTreeMap<String, TypeDef> {
        self.types
            .iter()
            .map(|(key, container)| (self.names[key].clone(), self.type_def(container)))
            .collect()
    }

    /// The name a schema gives `key`: its own, or with `#2`, `#3`... after it for the second,
    /// third... traced type of that name.
    fn name(&mut self, key: &Key) -> String {
        if let Some(name) = self.names.get(key) {
            return name.clone();
        }
        let base = key.display();
        let earlier = self
            .names
            .keys()
            .filter(|other| other.display() == base)
            .count();
        let name = if earlier == 0 {
            base
        } else {
            format!("{base}#{}", earlier + 1)
        };
        self.names.insert(key.clone(), name.clone());
        self.by_name.insert(name.clone(), key.clone());
        name
    }

    /// Whether nothing more is to be learned by deserializing a value of `format` here: every
    /// part of it is known, and every named type it holds is complete, or being deserialized
    /// further out (which learns it there).
    fn settled(&self, format: &Format) -> bool {
        if has_unknown(format) {
            return false;
        }
        let mut names = Vec::new();
        references(format, &mut names);
        names.into_iter().all(|name| {
            self.on_stack(name) || self.complete(&Format::Known(Schema::Named(name.to_owned())))
        })
    }

    /// Whether the named type the schema calls `name` is being deserialized, further out.
    fn on_stack(&self, name: &str) -> bool {
        self.stacked.get(name).is_some_and(|&count| count > 0)
    }

    /// For each named type known, how many named types a value of it nests inline at the
    /// least before every part is one that may be empty (an option, a sequence, a map), a
    /// primitive or not known yet, an enum's variant never traced counting as one that ends
    /// at once: 1 for a struct of primitives, [`UNENDING`] for a type with no way to end that
    /// is known. Worked out from what every pass has learned so far.
    fn heights(&self) -> Rc<Heights> {
        if let Some((generation, heights)) = &*self.heights.borrow()
            && *generation == self.generation
        {
            return Rc::clone(heights);
        }
        let heights = Rc::new(self.work_out_heights());
        *self.heights.borrow_mut() = Some((self.generation, Rc::clone(&heights)));
        heights
    }

    fn work_out_heights(&self) -> Heights {
        let mut heights: Heights = self
            .names
            .values()
            .map(|name| (name.clone(), UNENDING))
            .collect();
        loop {
            let mut changed = false;
            for (key, container) in &self.types {
                let Some(name) = self.names.get(key) else {
                    continue;
                };
                let most = |formats: &mut dyn Iterator<Item = &Format>| {
                    formats.map(|f| height_of(f, &heights)).max().unwrap_or(0)
                };
                let inner = match container {
                    Container::Unit => 0,
                    Container::Newtype(inner) => height_of(inner, &heights),
                    Container::Tuple(items) => most(&mut items.iter()),
                    Container::Struct(fields) => most(&mut fields.iter().map(|(_, f)| f)),
                    Container::Enum(variants) => variants
                        .iter()
                        .map(|(_, variant)| variant_height(variant, &heights))
                        .min()
                        .unwrap_or(UNENDING),
                };
                let height = inner.saturating_add(1);
                if height < heights[name.as_str()] {
                    heights.insert(name.clone(), height);
                    changed = true;
                }
            }
            if !changed {
                return heights;
            }
        }
    }

    /// Whether the value being deserialized here is to end as soon as it can: some named type
    /// is nested in itself (an item could nest deeper still), or was entered before in this
    /// pass (where it is learned), or the innermost is known whole (nothing below it is left to
    /// learn; a value of it could be as large as its type allows). There an option is `None`,
    /// a sequence or map empty, and an enum takes the variant that may end soonest: every type
    /// a value holds is learned where nothing nests, further out, and a pass explores only
    /// what is still to learn. While making values, where every type is known whole, only the
    /// first two hold: each type is made in full where first entered in a pass (options and
    /// sequences holding something at the levels that do, enums taking the variant chosen), and
    /// a pass over types that hold one another stays as small as tracing's.
    fn ending(&self) -> bool {
        self.nested > 0
            || self.again.contains(&true)
            || (self.holding.is_none()
                && self
                    .stack
                    .last()
                    .is_some_and(|innermost| self.known_whole(innermost)))
    }

    /// Whether every part of the named type `key`, and of every named type it reaches, is
    /// known: remembered for the generation of what is known.
    fn known_whole(&self, key: &Key) -> bool {
        let Some(name) = self.names.get(key) else {
            return false;
        };
        let mut whole = self.whole.borrow_mut();
        if whole.0 != self.generation {
            *whole = (self.generation, BTreeMap::new());
        }
        if let Some(&known) = whole.1.get(name) {
            return known;
        }
        let known = self.complete_from(&Format::Known(Schema::Named(name.clone())), false);
        whole.1.insert(name.clone(), known);
        known
    }

    /// Whether every part of `root`, and of every named type it reaches, is known; a named type
    /// being deserialized further out counts as known, for it is learned there (between passes
    /// none is).
    fn complete(&self, root: &Format) -> bool {
        self.complete_from(root, true)
    }

    /// [`Tracer::complete`], counting the named types being deserialized as known or not.
    fn complete_from(&self, root: &Format, outer_known: bool) -> bool {
        if has_unknown(root) {
            return false;
        }
        let mut pending = Vec::new();
        references(root, &mut pending);
        let mut seen = std::collections::BTreeSet::new();
        while let Some(name) = pending.pop() {
            if !seen.insert(name) || (outer_known && self.on_stack(name)) {
                continue;
            }
            let Some(container) = self.by_name.get(name).and_then(|key| self.types.get(key)) else {
                return false;
            };
            let formats: Vec<&Format> = match container {
                Container::Unit => Vec::new(),
                Container::Newtype(inner) => vec![inner],
                Container::Tuple(items) => items.iter().collect(),
                Container::Struct(fields) => fields.iter().map(|(_, f)| f).collect(),
                Container::Enum(variants) => {
                    if variants.iter().any(|(_, variant)| variant.is_none()) {
                        return false;
                    }
                    variants
                        .iter()
                        .flat_map(|(_, variant)| parts(variant))
                        .collect()
                }
            };
            for format in formats {
                if has_unknown(format) {
                    return false;
                }
                references(format, &mut pending);
            }
        }
        true
    }

    fn finish(&self, format: &Format) -> Schema {
        match format {
            // Complete formats hold no unknown part.
            Format::Unknown => Schema::Unit,
            Format::Known(schema) => schema.clone(),
            Format::Option(inner) => Schema::Option(Box::new(self.finish(inner))),
            Format::Seq(inner) => Schema::Seq(Box::new(self.finish(inner))),
            Format::Map(key, value) => {
                Schema::Map(Box::new(self.finish(key)), Box::new(self.finish(value)))
            }
            Format::Tuple(items) => Schema::Tuple(items.iter().map(|i| self.finish(i)).collect()),
        }
    }

    fn fields(&self, fields: &[(&'static str, Format)]) -> Vec<Field> {
        fields
            .iter()
            .map(|(name, format)| Field {
                name: (*name).to_owned(),
                schema: self.finish(format),
            })
            .collect()
    }

    fn type_def(&self, container: &Container) -> TypeDef {
        match container {
            Container::Unit => TypeDef::UnitStruct,
            Container::Newtype(inner) => TypeDef::NewtypeStruct(self.finish(inner)),
            Container::Tuple(items) => {
                TypeDef::TupleStruct(items.iter().map(|i| self.finish(i)).collect())
            }
            Container::Struct(fields) => TypeDef::Struct(self.fields(fields)),
            Container::Enum(variants) => TypeDef::Enum(
                variants
                    .iter()
                    .map(|(name, variant)| {
                        let variant = match variant {
                            None | Some(VariantFormat::Unit) => Variant::Unit,
                            Some(VariantFormat::Newtype(inner)) => {
                                Variant::Newtype(self.finish(inner))
                            }
                            Some(VariantFormat::Tuple(items)) => {
                                Variant::Tuple(items.iter().map(|i| self.finish(i)).collect())
                            }
                            Some(VariantFormat::Struct(fields)) => {
                                Variant::Struct(self.fields(fields))
                            }
                        };
                        ((*name).to_owned(), variant)
                    })
                    .collect(),
            ),
        }
    }

    /// Merges what a pass found at a place into what was known of it.
    fn learn(&mut self, slot: &mut Format, found: Format) -> Result<(), TraceError> {
        if *slot == found {
            return Ok(());
        }
        match (&mut *slot, found) {
            (Format::Unknown, found) => {
                *slot = found;
                self.learned = true;
                Ok(())
            }
            (_, Format::Unknown) => Ok(()),
            (Format::Option(known), Format::Option(found))
            | (Format::Seq(known), Format::Seq(found)) => self.learn(known, *found),
            (Format::Map(key, value), Format::Map(found_key, found_value)) => {
                self.learn(key, *found_key)?;
                self.learn(value, *found_value)
            }
            (Format::Tuple(known), Format::Tuple(found)) if known.len() == found.len() => {
                for (known, found) in known.iter_mut().zip(found) {
                    self.learn(known, found)?;
                }
                Ok(())
            }
            (known, found) => Err(TraceError::Unsupported(format!(
                "it deserializes differently from one value to the next ({known:?}, then \
                 {found:?}); two types share a name, or a Deserialize depends on more than \
                 the type"
            ))),
        }
    }

    /// Takes the entry of a named type out of the table, to fill while deserializing it.
    fn enter(
        &mut self,
        key: &Key,
        fresh: impl FnOnce() -> Container,
    ) -> Result<Container, TraceError> {
        let depth = self.stack.iter().filter(|on| *on == key).count();
        if depth >= MAX_NESTING {
            return Err(TraceError::Recursion);
        }
        // A type is learned, or made in full, where it is first entered outside an ending
        // value.
        let again = self.entered.contains(key);
        if !again && !self.ending() {
            self.entered.insert(key.clone());
        }
        if let Some(name) = self.names.get(key) {
            let count = self.stacked.entry(name.clone()).or_default();
            self.nested += usize::from(*count > 0);
            *count += 1;
        }
        self.stack.push(key.clone());
        self.again.push(again);
        self.offered_in.push(0);
        Ok(match self.types.get(key) {
            Some(known) => known.clone(),
            None => {
                self.learned = true;
                fresh()
            }
        })
    }

    /// Puts a named type's entry back, with what this pass learned of it.
    fn leave(&mut self, key: Key, filled: Container) -> Result<(), TraceError> {
        self.stack.pop();
        self.offered_in.pop();
        if let Some(count) = self
            .names
            .get(&key)
            .and_then(|name| self.stacked.get_mut(name))
        {
            *count -= 1;
            self.nested -= usize::from(*count > 0);
        }
        self.again.pop();
        let merged = match self.types.remove(&key) {
            None => {
                self.generation += 1;
                filled
            }
            Some(known) => {
                let before = known.clone();
                let merged = self.merge(known, filled)?;
                if merged != before {
                    self.generation += 1;
                }
                merged
            }
        };
        self.types.insert(key, merged);
        Ok(())
    }

    fn merge(&mut self, known: Container, found: Container) -> Result<Container, TraceError> {
        Ok(match (known, found) {
            (Container::Newtype(mut known), Container::Newtype(found)) => {
                self.learn(&mut known, found)?;
                Container::Newtype(known)
            }
            (Container::Tuple(mut known), Container::Tuple(found)) => {
                self.learn_all(&mut known, found)?;
                Container::Tuple(known)
            }
            (Container::Struct(mut known), Container::Struct(found)) => {
                for ((_, known), (_, found)) in known.iter_mut().zip(found) {
                    self.learn(known, found)?;
                }
                Container::Struct(known)
            }
            (Container::Enum(mut known), Container::Enum(found)) => {
                for ((_, known), (_, found)) in known.iter_mut().zip(found) {
                    match (known.as_mut(), found) {
                        (_, None) => {}
                        (None, Some(found)) => *known = Some(found),
                        (Some(known), Some(found)) => self.learn_variant(known, found)?,
                    }
                }
                Container::Enum(known)
            }
            (known, _) => known,
        })
    }

    fn learn_all(&mut self, known: &mut [Format], found: Vec<Format>) -> Result<(), TraceError> {
        for (known, found) in known.iter_mut().zip(found) {
            self.learn(known, found)?;
        }
        Ok(())
    }

    fn learn_variant(
        &mut self,
        known: &mut VariantFormat,
        found: VariantFormat,
    ) -> Result<(), TraceError> {
        match (known, found) {
            (VariantFormat::Newtype(known), VariantFormat::Newtype(found)) => {
                self.learn(known, found)
            }
            (VariantFormat::Tuple(known), VariantFormat::Tuple(found)) => {
                self.learn_all(known, found)
            }
            (VariantFormat::Struct(known), VariantFormat::Struct(found)) => {
                for ((_, known), (_, found)) in known.iter_mut().zip(found) {
                    self.learn(known, found)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Which of an enum's `variants` to take: where nothing nests, one never traced, else one
    /// with more to learn (a variant traced but unsettled may wait on the others:
    /// `Let(Box<Binding>)`, whose `Binding` holds the enum again, is complete only once every
    /// variant is known; taking it again, first in order, would never reach the variants after
    /// it); where some type is nested in itself, the one that may end soonest, so that the
    /// nesting stops: what a value holds is learned where nothing nests.
    fn pick_variant(&self, variants: &[(&'static str, Option<VariantFormat>)]) -> usize {
        // Making values, where nothing ends: the variant chosen for this value.
        if self.holding.is_some() && !self.ending() && !variants.is_empty() {
            return self.choice % variants.len();
        }
        let nested = self.ending();
        let settled = |variant: &Option<VariantFormat>| {
            variant.is_some() && parts(variant).all(|part| self.settled(part))
        };
        let untraced = variants.iter().position(|(_, variant)| variant.is_none());
        let unsettled = variants.iter().position(|(_, variant)| !settled(variant));
        let done = variants.iter().position(|(_, variant)| settled(variant));
        let pick = if nested {
            // The variant that may end soonest, nesting the fewest named types inline before
            // every part is one that may be empty or a primitive (one never traced may end at
            // once: a `Nil`); else as outermost. A variant that holds the enum again inline is
            // settled too (it is being learned further out), but taking it would nest deeper.
            let heights = self.heights();
            let soonest = variants
                .iter()
                .enumerate()
                .map(|(at, (_, variant))| (variant_height(variant, &heights), at))
                .filter(|(height, _)| *height < UNENDING)
                .min()
                .map(|(_, at)| at);
            soonest.or(unsettled).or(done)
        } else {
            untraced.or(unsettled).or(done)
        };
        pick.unwrap_or(0)
    }
}

/// Each named type's height, by its schema name ([`Tracer::heights`]).
type Heights = BTreeMap<String, usize>;

/// The height of a type with no known way to end ([`Tracer::heights`]).
const UNENDING: usize = usize::MAX;

/// How many named types a value of `format` nests inline at the least before it ends
/// ([`Tracer::heights`]).
fn height_of(format: &Format, heights: &Heights) -> usize {
    match format {
        Format::Known(Schema::Named(name)) => heights.get(name.as_str()).copied().unwrap_or(0),
        Format::Tuple(items) => items
            .iter()
            .map(|item| height_of(item, heights))
            .max()
            .unwrap_or(0),
        // May be empty, a primitive, or not known yet.
        _ => 0,
    }
}

/// How many named types a value of `variant` nests inline at the least before it ends; 0 for
/// one never traced, which may end at once ([`Tracer::heights`]).
fn variant_height(variant: &Option<VariantFormat>, heights: &Heights) -> usize {
    parts(variant)
        .map(|part| height_of(part, heights))
        .max()
        .unwrap_or(0)
}

/// The places of a variant's fields (none for a unit variant, or one not traced yet).
fn parts(variant: &Option<VariantFormat>) -> Box<dyn Iterator<Item = &Format> + '_> {
    match variant {
        None | Some(VariantFormat::Unit) => Box::new(std::iter::empty()),
        Some(VariantFormat::Newtype(inner)) => Box::new(std::iter::once(inner)),
        Some(VariantFormat::Tuple(items)) => Box::new(items.iter()),
        Some(VariantFormat::Struct(fields)) => Box::new(fields.iter().map(|(_, f)| f)),
    }
}

/// The names `format` refers to directly.
fn references<'a>(format: &'a Format, names: &mut Vec<&'a str>) {
    match format {
        // A known part is a primitive or a named type: what holds others is a `Format`.
        Format::Known(Schema::Named(name)) => names.push(name),
        Format::Known(_) | Format::Unknown => {}
        Format::Option(inner) | Format::Seq(inner) => references(inner, names),
        Format::Map(key, value) => {
            references(key, names);
            references(value, names);
        }
        Format::Tuple(items) => items.iter().for_each(|item| references(item, names)),
    }
}

fn has_unknown(format: &Format) -> bool {
    match format {
        Format::Unknown => true,
        Format::Known(_) => false,
        Format::Option(inner) | Format::Seq(inner) => has_unknown(inner),
        Format::Map(key, value) => has_unknown(key) || has_unknown(value),
        Format::Tuple(items) => items.iter().any(has_unknown),
    }
}

/// The deserializer of one place in a type: it writes what the type asks for into `slot`.
struct Tracing<'t> {
    tracer: &'t mut Tracer,
    slot: &'t mut Format,
}

impl Tracing<'_> {
    fn primitive(self, schema: Schema) -> Result<(), TraceError> {
        self.tracer.last_offer = None;
        self.tracer.learn(self.slot, Format::Known(schema))
    }

    /// Records that this place holds the named type `key`, and the name its schema gives it.
    fn named(&mut self, key: &Key) -> Result<(), TraceError> {
        let name = self.tracer.name(key);
        self.tracer
            .learn(self.slot, Format::Known(Schema::Named(name)))
    }
}

macro_rules! primitives {
    ($($method:ident => $schema:ident, $visit:ident($zero:expr, $one:expr);)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
                let ones = self.tracer.ones;
                self.primitive(Schema::$schema)?;
                visitor.$visit(if ones { $one } else { $zero })
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for Tracing<'_> {
    type Error = TraceError;

    primitives! {
        deserialize_bool => Bool, visit_bool(false, true);
        deserialize_i8 => I8, visit_i8(0, 1);
        deserialize_i16 => I16, visit_i16(0, 1);
        deserialize_i32 => I32, visit_i32(0, 1);
        deserialize_i64 => I64, visit_i64(0, 1);
        deserialize_i128 => I128, visit_i128(0, 1);
        deserialize_u8 => U8, visit_u8(0, 1);
        deserialize_u16 => U16, visit_u16(0, 1);
        deserialize_u32 => U32, visit_u32(0, 1);
        deserialize_u64 => U64, visit_u64(0, 1);
        deserialize_u128 => U128, visit_u128(0, 1);
        deserialize_f32 => F32, visit_f32(0.0, 1.0);
        deserialize_f64 => F64, visit_f64(0.0, 1.0);
        deserialize_char => Char, visit_char('\0', 'a');
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        let Tracing { tracer, slot } = self;
        tracer.learn(slot, Format::Known(Schema::Str))?;
        visitor.visit_str(tracer.text())
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        let Tracing { tracer, slot } = self;
        tracer.learn(slot, Format::Known(Schema::Str))?;
        visitor.visit_string(tracer.text().to_owned())
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        let Tracing { tracer, slot } = self;
        tracer.learn(slot, Format::Known(Schema::Bytes))?;
        visitor.visit_bytes(&tracer.byte_string())
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        let Tracing { tracer, slot } = self;
        tracer.learn(slot, Format::Known(Schema::Bytes))?;
        visitor.visit_byte_buf(tracer.byte_string())
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.primitive(Schema::Unit)?;
        visitor.visit_unit()
    }

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, TraceError> {
        Err(TraceError::NotCarried(
            "it asks the format what comes next (an untagged or internally tagged enum, \
             `#[serde(flatten)]`, or a self-describing value such as `serde_json::Value`), \
             which postcard, writing no field names nor kinds, cannot say"
                .to_owned(),
        ))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.deserialize_any(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.deserialize_any(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        let Tracing { tracer, slot } = self;
        tracer.learn(slot, Format::Option(Box::new(Format::Unknown)))?;
        let Format::Option(inner) = slot else {
            unreachable!("learned as an option");
        };
        if !tracer.holds(tracer.settled(inner)) {
            return visitor.visit_none();
        }
        tracer.deeper(true, |tracer| {
            visitor.visit_some(Tracing {
                tracer,
                slot: inner,
            })
        })
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        mut self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let key = Key::of::<V::Value>(name);
        self.named(&key)?;
        let container = self.tracer.enter(&key, || Container::Unit)?;
        self.tracer.leave(key, container)?;
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        mut self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let key = Key::of::<V::Value>(name);
        self.named(&key)?;
        let mut container = self
            .tracer
            .enter(&key, || Container::Newtype(Format::Unknown))?;
        let Container::Newtype(inner) = &mut container else {
            return Err(self.tracer_conflict(name));
        };
        let value = visitor.visit_newtype_struct(Tracing {
            tracer: self.tracer,
            slot: inner,
        });
        self.tracer.leave(key, container)?;
        value
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        let Tracing { tracer, slot } = self;
        tracer.learn(slot, Format::Seq(Box::new(Format::Unknown)))?;
        let Format::Seq(item) = slot else {
            unreachable!("learned as a sequence");
        };
        let mut slots = std::collections::VecDeque::new();
        let holds = tracer.holds(tracer.settled(item));
        if holds {
            slots.push_back(&mut **item);
        }
        tracer.deeper(holds, |tracer| visitor.visit_seq(Items { tracer, slots }))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let Tracing { tracer, slot } = self;
        tracer.learn(slot, Format::Tuple(vec![Format::Unknown; len]))?;
        let Format::Tuple(items) = slot else {
            unreachable!("learned as a tuple");
        };
        visitor.visit_seq(Items {
            tracer,
            slots: items.iter_mut().collect(),
        })
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        mut self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let key = Key::of::<V::Value>(name);
        self.named(&key)?;
        let mut container = self
            .tracer
            .enter(&key, || Container::Tuple(vec![Format::Unknown; len]))?;
        let Container::Tuple(items) = &mut container else {
            return Err(self.tracer_conflict(name));
        };
        let value = visitor.visit_seq(Items {
            tracer: self.tracer,
            slots: items.iter_mut().collect(),
        });
        self.tracer.leave(key, container)?;
        value
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        let Tracing { tracer, slot } = self;
        let unknown = || Box::new(Format::Unknown);
        tracer.learn(slot, Format::Map(unknown(), unknown()))?;
        let Format::Map(key, value) = slot else {
            unreachable!("learned as a map");
        };
        let settled = tracer.settled(key) && tracer.settled(value);
        let holds = tracer.holds(settled);
        let entry = holds.then_some((&mut **key, &mut **value));
        tracer.deeper(holds, |tracer| visitor.visit_map(Entries { tracer, entry }))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        mut self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let key = Key::of::<V::Value>(name);
        self.named(&key)?;
        let mut container = self.tracer.enter(&key, || {
            Container::Struct(fields.iter().map(|f| (*f, Format::Unknown)).collect())
        })?;
        let Container::Struct(slots) = &mut container else {
            return Err(self.tracer_conflict(name));
        };
        let value = visitor.visit_seq(Items {
            tracer: self.tracer,
            slots: slots.iter_mut().map(|(_, slot)| slot).collect(),
        });
        self.tracer.leave(key, container)?;
        value
    }

    fn deserialize_enum<V: Visitor<'de>>(
        mut self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        if variants.is_empty() {
            return Err(TraceError::Unsupported(format!(
                "the enum `{name}` has no variants, so no value of it can be sent"
            )));
        }
        let key = Key::of::<V::Value>(name);
        self.named(&key)?;
        let mut container = self.tracer.enter(&key, || {
            Container::Enum(variants.iter().map(|v| (*v, None)).collect())
        })?;
        let Container::Enum(known) = &mut container else {
            return Err(self.tracer_conflict(name));
        };
        let index = self.tracer.pick_variant(known);
        let value = visitor.visit_enum(Choice {
            tracer: self.tracer,
            index,
            slot: &mut known[index].1,
        });
        self.tracer.leave(key, container)?;
        value
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

impl Tracing<'_> {
    fn tracer_conflict(&self, name: &str) -> TraceError {
        TraceError::Unsupported(format!(
            "`{name}` asks to be deserialized as a different kind of type from one value to \
             the next"
        ))
    }
}

/// The elements of a sequence, tuple or struct: one slot each.
struct Items<'t> {
    tracer: &'t mut Tracer,
    slots: std::collections::VecDeque<&'t mut Format>,
}

impl<'de> de::SeqAccess<'de> for Items<'_> {
    type Error = TraceError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, TraceError> {
        let Some(slot) = self.slots.pop_front() else {
            return Ok(None);
        };
        seed.deserialize(Tracing {
            tracer: &mut *self.tracer,
            slot,
        })
        .map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.slots.len())
    }
}

/// The entries of a map: one, until its key and value are known.
struct Entries<'t> {
    tracer: &'t mut Tracer,
    entry: Option<(&'t mut Format, &'t mut Format)>,
}

impl<'de> de::MapAccess<'de> for Entries<'_> {
    type Error = TraceError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, TraceError> {
        let Some((key, _)) = self.entry.as_mut() else {
            return Ok(None);
        };
        seed.deserialize(Tracing {
            tracer: &mut *self.tracer,
            slot: key,
        })
        .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, TraceError> {
        let Some((_, value)) = self.entry.take() else {
            return Err(TraceError::Unsupported(
                "a map value without its key".to_owned(),
            ));
        };
        seed.deserialize(Tracing {
            tracer: &mut *self.tracer,
            slot: value,
        })
    }
}

/// One variant of an enum, chosen by its index.
struct Choice<'t> {
    tracer: &'t mut Tracer,
    index: usize,
    slot: &'t mut Option<VariantFormat>,
}

impl<'de, 't> de::EnumAccess<'de> for Choice<'t> {
    type Error = TraceError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self), TraceError> {
        let index = u32::try_from(self.index).unwrap_or(u32::MAX);
        let variant = seed.deserialize(IntoDeserializer::<TraceError>::into_deserializer(index))?;
        Ok((variant, self))
    }
}

impl Choice<'_> {
    /// Records the variant's shape, unless it is known already.
    fn shape(&mut self, fresh: VariantFormat) {
        if self.slot.is_none() {
            *self.slot = Some(fresh);
            self.tracer.learned = true;
        }
    }
}

impl<'de> de::VariantAccess<'de> for Choice<'_> {
    type Error = TraceError;

    fn unit_variant(mut self) -> Result<(), TraceError> {
        self.shape(VariantFormat::Unit);
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        mut self,
        seed: T,
    ) -> Result<T::Value, TraceError> {
        self.shape(VariantFormat::Newtype(Format::Unknown));
        let Some(VariantFormat::Newtype(inner)) = self.slot.as_mut() else {
            return Err(TraceError::Unsupported(
                "a variant changed its shape".to_owned(),
            ));
        };
        seed.deserialize(Tracing {
            tracer: self.tracer,
            slot: inner,
        })
    }

    fn tuple_variant<V: Visitor<'de>>(
        mut self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.shape(VariantFormat::Tuple(vec![Format::Unknown; len]));
        let Some(VariantFormat::Tuple(items)) = self.slot.as_mut() else {
            return Err(TraceError::Unsupported(
                "a variant changed its shape".to_owned(),
            ));
        };
        visitor.visit_seq(Items {
            tracer: self.tracer,
            slots: items.iter_mut().collect(),
        })
    }

    fn struct_variant<V: Visitor<'de>>(
        mut self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let fresh = fields.iter().map(|f| (*f, Format::Unknown)).collect();
        self.shape(VariantFormat::Struct(fresh));
        let Some(VariantFormat::Struct(slots)) = self.slot.as_mut() else {
            return Err(TraceError::Unsupported(
                "a variant changed its shape".to_owned(),
            ));
        };
        visitor.visit_seq(Items {
            tracer: self.tracer,
            slots: slots.iter_mut().map(|(_, slot)| slot).collect(),
        })
    }
}
