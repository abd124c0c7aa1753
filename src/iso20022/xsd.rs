//! Validation against an official ISO 20022 XSD, compiled in.
//!
//! The message schemas the ISO 20022 registration authority publishes use
//! a small, regular part of XML Schema 1.0: named complex types whose
//! content is a `sequence` or `choice` of elements (with `minOccurs` and
//! `maxOccurs`), `simpleContent` extensions carrying attributes (the `Ccy`
//! of an amount), `xs:any` for supplementary data, and named simple types
//! restricting `xs:string`, `xs:decimal`, `xs:date`, `xs:dateTime`,
//! `xs:boolean` or `xs:gYearMonth` by length, pattern, enumeration, digits
//! and bounds. [`Schema::compile`] reads exactly that part from the schema
//! text and refuses anything else, so a schema is never half understood;
//! [`Schema::validate`] checks a document against it and names every
//! offending element by its path (`PmtInf[1]/CdtTrfTxInf[3]/Amt/InstdAmt`).
//!
//! The content models of these schemas are deterministic (XSD's "unique
//! particle attribution"), so elements are matched greedily, one name of
//! lookahead, and each element is validated once its place is known.
//!
//! About 900 lines, 80 of them tests: the compiler of the schema subset
//! and the validator of documents against it are one piece (the compiled
//! form exists for the validator), read together.

use std::collections::HashMap;
use std::str::FromStr;

use regex::Regex;
use roxmltree::Node;
use rust_decimal::Decimal;

const XS: &str = "http://www.w3.org/2001/XMLSchema";
const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// A compiled message schema.
#[derive(Debug)]
pub struct Schema {
    pub namespace: String,
    /// The type of the root element, `Document`.
    root_type: String,
    complex: HashMap<String, Complex>,
    simple: HashMap<String, Simple>,
}

#[derive(Debug)]
enum Complex {
    /// Element content: a sequence or choice of elements.
    Elements(Particle),
    /// Text of a simple type, with attributes (an amount and its `Ccy`).
    Text { base: String, attributes: Vec<Attribute> },
    /// No content at all.
    Empty,
}

#[derive(Debug)]
struct Attribute {
    name: String,
    type_name: String,
    required: bool,
}

#[derive(Debug)]
struct Particle {
    min: u32,
    /// `None`: unbounded.
    max: Option<u32>,
    term: Term,
}

#[derive(Debug)]
enum Term {
    Element {
        name: String,
        type_name: String,
    },
    Sequence(Vec<Particle>),
    Choice(Vec<Particle>),
    /// `xs:any processContents="lax"`: any element, not validated.
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Builtin {
    String,
    Decimal,
    Date,
    DateTime,
    Boolean,
    GYearMonth,
}

#[derive(Debug, Clone)]
struct Simple {
    builtin: Builtin,
    min_length: Option<usize>,
    max_length: Option<usize>,
    /// Every pattern of every derivation step must match.
    patterns: Vec<Regex>,
    enumeration: Vec<String>,
    total_digits: Option<u32>,
    fraction_digits: Option<u32>,
    min_inclusive: Option<Decimal>,
    max_inclusive: Option<Decimal>,
}

/// A schema the compiler does not understand: a programming error in what
/// we vendored, never a client's.
#[derive(Debug, thiserror::Error)]
#[error("XSD: {0}")]
pub struct SchemaError(String);

fn schema_error(message: impl Into<String>) -> SchemaError {
    SchemaError(message.into())
}

/// One offending element (or attribute) of a document: its path below the
/// message element and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub path: String,
    pub message: String,
}

impl Schema {
    /// Compiles an XSD of the subset described in the module's comment.
    pub fn compile(xsd: &str) -> Result<Schema, SchemaError> {
        let doc = roxmltree::Document::parse(xsd).map_err(|e| schema_error(e.to_string()))?;
        let root = doc.root_element();
        if !is_xs(root, "schema") {
            return Err(schema_error("the root is not xs:schema"));
        }
        let namespace = root
            .attribute("targetNamespace")
            .ok_or_else(|| schema_error("no targetNamespace"))?
            .to_owned();
        let mut schema = Schema {
            namespace,
            root_type: String::new(),
            complex: HashMap::new(),
            simple: HashMap::new(),
        };
        let mut raw_simple = HashMap::new();
        for child in root.children().filter(Node::is_element) {
            let name = child
                .attribute("name")
                .ok_or_else(|| schema_error("a top-level declaration has no name"))?;
            match child.tag_name().name() {
                "element" if name == "Document" => {
                    schema.root_type = required(child, "type")?.to_owned();
                }
                "complexType" => {
                    schema.complex.insert(name.to_owned(), compile_complex(child)?);
                }
                "simpleType" => {
                    raw_simple.insert(name.to_owned(), child);
                }
                other => return Err(schema_error(format!("unsupported top-level xs:{other}"))),
            }
        }
        for name in raw_simple.keys() {
            let simple = resolve_simple(name, &raw_simple, 0)?;
            schema.simple.insert(name.clone(), simple);
        }
        if schema.root_type.is_empty() {
            return Err(schema_error("no Document element"));
        }
        schema.check_references()?;
        Ok(schema)
    }

    /// Every type a declaration names exists.
    fn check_references(&self) -> Result<(), SchemaError> {
        fn walk(schema: &Schema, particle: &Particle) -> Result<(), SchemaError> {
            match &particle.term {
                Term::Element { type_name, .. } => schema.known(type_name),
                Term::Sequence(items) | Term::Choice(items) => items.iter().try_for_each(|p| walk(schema, p)),
                Term::Any => Ok(()),
            }
        }
        self.known(&self.root_type)?;
        for complex in self.complex.values() {
            match complex {
                Complex::Elements(particle) => walk(self, particle)?,
                Complex::Text { base, attributes } => {
                    self.simple_type(base)?;
                    for attribute in attributes {
                        self.simple_type(&attribute.type_name)?;
                    }
                }
                Complex::Empty => {}
            }
        }
        Ok(())
    }

    fn known(&self, type_name: &str) -> Result<(), SchemaError> {
        if self.complex.contains_key(type_name) || self.simple.contains_key(type_name) {
            Ok(())
        } else {
            Err(schema_error(format!("unknown type {type_name}")))
        }
    }

    fn simple_type(&self, type_name: &str) -> Result<&Simple, SchemaError> {
        self.simple
            .get(type_name)
            .ok_or_else(|| schema_error(format!("unknown simple type {type_name}")))
    }

    /// Validates a whole document: its root must be this schema's
    /// `Document`. Paths start below the message element (the root's
    /// child), as a payment file's users read them.
    pub fn validate(&self, doc: &roxmltree::Document) -> Vec<Invalid> {
        let mut errors = Vec::new();
        let root = doc.root_element();
        if root.tag_name().name() != "Document" || root.tag_name().namespace() != Some(self.namespace.as_str()) {
            errors.push(Invalid {
                path: root.tag_name().name().to_owned(),
                message: format!(
                    "the root element must be Document in namespace {} (got {} in {})",
                    self.namespace,
                    root.tag_name().name(),
                    root.tag_name().namespace().unwrap_or("no namespace")
                ),
            });
            return errors;
        }
        let mut validator = Validator {
            schema: self,
            errors: &mut errors,
        };
        validator.element(root, &self.root_type, &Path::Root);
        errors
    }
}

fn is_xs(node: Node, name: &str) -> bool {
    node.is_element() && node.tag_name().namespace() == Some(XS) && node.tag_name().name() == name
}

fn required<'a>(node: Node<'a, '_>, attribute: &str) -> Result<&'a str, SchemaError> {
    node.attribute(attribute)
        .ok_or_else(|| schema_error(format!("xs:{} without {attribute}", node.tag_name().name())))
}

fn occurs(node: Node) -> Result<(u32, Option<u32>), SchemaError> {
    let parse = |text: &str| {
        text.parse::<u32>()
            .map_err(|_| schema_error(format!("bad occurrence {text:?}")))
    };
    let min = node.attribute("minOccurs").map(parse).transpose()?.unwrap_or(1);
    let max = match node.attribute("maxOccurs") {
        None => Some(1),
        Some("unbounded") => None,
        Some(text) => Some(parse(text)?),
    };
    Ok((min, max))
}

fn compile_complex(node: Node) -> Result<Complex, SchemaError> {
    let mut children = node.children().filter(Node::is_element);
    let Some(content) = children.next() else {
        return Ok(Complex::Empty);
    };
    if children.next().is_some() {
        return Err(schema_error("a complex type with more than one content declaration"));
    }
    match content.tag_name().name() {
        "sequence" | "choice" => Ok(Complex::Elements(compile_particle(content)?)),
        "simpleContent" => {
            let extension = content
                .children()
                .find(|n| is_xs(*n, "extension"))
                .ok_or_else(|| schema_error("simpleContent without xs:extension"))?;
            let mut attributes = Vec::new();
            for attribute in extension.children().filter(Node::is_element) {
                if !is_xs(attribute, "attribute") {
                    return Err(schema_error("an extension with something else than attributes"));
                }
                attributes.push(Attribute {
                    name: required(attribute, "name")?.to_owned(),
                    type_name: required(attribute, "type")?.to_owned(),
                    required: attribute.attribute("use") == Some("required"),
                });
            }
            Ok(Complex::Text {
                base: required(extension, "base")?.to_owned(),
                attributes,
            })
        }
        other => Err(schema_error(format!("unsupported content xs:{other}"))),
    }
}

fn compile_particle(node: Node) -> Result<Particle, SchemaError> {
    let (min, max) = occurs(node)?;
    let term = match node.tag_name().name() {
        "element" => Term::Element {
            name: required(node, "name")?.to_owned(),
            type_name: required(node, "type")?.to_owned(),
        },
        "sequence" => Term::Sequence(
            node.children()
                .filter(Node::is_element)
                .map(compile_particle)
                .collect::<Result<_, _>>()?,
        ),
        "choice" => Term::Choice(
            node.children()
                .filter(Node::is_element)
                .map(compile_particle)
                .collect::<Result<_, _>>()?,
        ),
        "any" if node.attribute("processContents") == Some("lax") => Term::Any,
        other => return Err(schema_error(format!("unsupported particle xs:{other}"))),
    };
    Ok(Particle { min, max, term })
}

/// A named simple type with every facet of its derivation chain.
fn resolve_simple(name: &str, raw: &HashMap<String, Node>, depth: usize) -> Result<Simple, SchemaError> {
    if depth > 16 {
        return Err(schema_error(format!("simple type {name} derives from itself")));
    }
    let node = raw
        .get(name)
        .ok_or_else(|| schema_error(format!("unknown simple type {name}")))?;
    let restriction = node
        .children()
        .find(|n| is_xs(*n, "restriction"))
        .ok_or_else(|| schema_error(format!("simple type {name} is not a restriction")))?;
    let base = required(restriction, "base")?;
    let mut simple = match base.strip_prefix("xs:") {
        Some(builtin) => Simple {
            builtin: match builtin {
                "string" => Builtin::String,
                "decimal" => Builtin::Decimal,
                "date" => Builtin::Date,
                "dateTime" => Builtin::DateTime,
                "boolean" => Builtin::Boolean,
                "gYearMonth" => Builtin::GYearMonth,
                other => return Err(schema_error(format!("unsupported built-in type xs:{other}"))),
            },
            min_length: None,
            max_length: None,
            patterns: Vec::new(),
            enumeration: Vec::new(),
            total_digits: None,
            fraction_digits: None,
            min_inclusive: None,
            max_inclusive: None,
        },
        None => resolve_simple(base, raw, depth + 1)?,
    };
    let mut enumeration = Vec::new();
    for facet in restriction.children().filter(Node::is_element) {
        let value = required(facet, "value")?;
        let number = |v: &str| {
            v.parse::<u32>()
                .map_err(|_| schema_error(format!("bad facet value {v:?}")))
        };
        let decimal = |v: &str| Decimal::from_str(v).map_err(|_| schema_error(format!("bad facet value {v:?}")));
        match facet.tag_name().name() {
            "minLength" => simple.min_length = Some(number(value)? as usize),
            "maxLength" => simple.max_length = Some(number(value)? as usize),
            "length" => {
                simple.min_length = Some(number(value)? as usize);
                simple.max_length = simple.min_length;
            }
            "pattern" => simple.patterns.push(
                // XSD patterns match the whole value, with no anchors.
                Regex::new(&format!("^(?:{value})$")).map_err(|e| schema_error(format!("pattern {value:?}: {e}")))?,
            ),
            "enumeration" => enumeration.push(value.to_owned()),
            "totalDigits" => simple.total_digits = Some(number(value)?),
            "fractionDigits" => simple.fraction_digits = Some(number(value)?),
            "minInclusive" => simple.min_inclusive = Some(decimal(value)?),
            "maxInclusive" => simple.max_inclusive = Some(decimal(value)?),
            other => return Err(schema_error(format!("unsupported facet xs:{other}"))),
        }
    }
    if !enumeration.is_empty() {
        simple.enumeration = enumeration;
    }
    Ok(simple)
}

/// Where an element is, for messages: its parent's path, its name and, when
/// its declaration repeats, its 1-based index among its namesakes.
enum Path<'p> {
    Root,
    Child {
        parent: &'p Path<'p>,
        name: &'p str,
        index: Option<usize>,
    },
}

impl Path<'_> {
    fn render(&self) -> String {
        // The root (`Document`) and the message element under it are the
        // same in every file: paths start below them.
        let mut parts = Vec::new();
        let mut at = self;
        while let Path::Child { parent, name, index } = at {
            parts.push(match index {
                Some(index) => format!("{name}[{index}]"),
                None => (*name).to_owned(),
            });
            at = parent;
        }
        parts.reverse();
        match parts.len() {
            0 => "Document".to_owned(),
            1 => parts.remove(0),
            _ => parts[1..].join("/"),
        }
    }
}

struct Validator<'s, 'e> {
    schema: &'s Schema,
    errors: &'e mut Vec<Invalid>,
}

/// Where matching stopped: at which child, and which element names would
/// have been accepted there.
struct Mismatch {
    at: usize,
    expected: Vec<String>,
}

/// A child element matched to its declaration.
struct Matched<'s> {
    index: usize,
    name: &'s str,
    type_name: &'s str,
    repeats: bool,
}

impl<'s> Validator<'s, '_> {
    fn fail(&mut self, path: &Path, message: impl Into<String>) {
        self.errors.push(Invalid {
            path: path.render(),
            message: message.into(),
        });
    }

    fn element(&mut self, node: Node, type_name: &str, path: &Path) {
        if let Some(simple) = self.schema.simple.get(type_name) {
            self.no_attributes(node, path);
            if node.children().any(|n| n.is_element()) {
                self.fail(path, "must contain text, not elements");
                return;
            }
            let text = text_of(node);
            if let Err(message) = check_simple(simple, &text) {
                self.fail(path, message);
            }
            return;
        }
        let Some(complex) = self.schema.complex.get(type_name) else {
            // check_references ran at compile time.
            self.fail(path, format!("no declaration for type {type_name}"));
            return;
        };
        match complex {
            Complex::Text { base, attributes } => {
                if node.children().any(|n| n.is_element()) {
                    self.fail(path, "must contain text, not elements");
                    return;
                }
                for attribute in node.attributes() {
                    let known =
                        attribute.namespace().is_none() && attributes.iter().any(|a| a.name == attribute.name());
                    if !known && attribute.namespace() != Some(XSI) {
                        self.fail(path, format!("attribute {} is not allowed here", attribute.name()));
                    }
                }
                for declared in attributes {
                    match node.attribute(declared.name.as_str()) {
                        None if declared.required => {
                            self.fail(path, format!("attribute {} is required", declared.name))
                        }
                        None => {}
                        Some(value) => {
                            if let Some(simple) = self.schema.simple.get(&declared.type_name)
                                && let Err(message) = check_simple(simple, value)
                            {
                                self.fail(path, format!("attribute {}: {message}", declared.name));
                            }
                        }
                    }
                }
                if let Some(simple) = self.schema.simple.get(base)
                    && let Err(message) = check_simple(simple, &text_of(node))
                {
                    self.fail(path, message);
                }
            }
            Complex::Empty => {
                self.no_attributes(node, path);
                if node
                    .children()
                    .any(|n| n.is_element() || (n.is_text() && !n.text().unwrap_or("").trim().is_empty()))
                {
                    self.fail(path, "must be empty");
                }
            }
            Complex::Elements(particle) => {
                self.no_attributes(node, path);
                if node
                    .children()
                    .any(|n| n.is_text() && !n.text().unwrap_or("").trim().is_empty())
                {
                    self.fail(path, "must contain elements, not text");
                }
                let children: Vec<Node> = node.children().filter(Node::is_element).collect();
                let mut matched = Vec::new();
                let end = match self.consume(particle, &children, 0, &mut matched) {
                    Ok(end) => end,
                    Err(mismatch) => {
                        self.mismatch(path, &children, &mismatch);
                        return;
                    }
                };
                if end < children.len() {
                    let stray = children[end].tag_name().name();
                    self.fail(
                        &Path::Child {
                            parent: path,
                            name: stray,
                            index: None,
                        },
                        format!("element {stray} is not expected here"),
                    );
                    return;
                }
                let mut counts: HashMap<&str, usize> = HashMap::new();
                for found in matched {
                    let child = children[found.index];
                    if child.tag_name().namespace() != Some(self.schema.namespace.as_str()) {
                        self.fail(
                            &Path::Child {
                                parent: path,
                                name: found.name,
                                index: None,
                            },
                            format!("element {} must be in namespace {}", found.name, self.schema.namespace),
                        );
                        continue;
                    }
                    let count = counts.entry(found.name).or_default();
                    *count += 1;
                    let child_path = Path::Child {
                        parent: path,
                        name: found.name,
                        index: found.repeats.then_some(*count),
                    };
                    if !found.type_name.is_empty() {
                        self.element(child, found.type_name, &child_path);
                    }
                }
            }
        }
    }

    fn no_attributes(&mut self, node: Node, path: &Path) {
        for attribute in node.attributes() {
            if attribute.namespace() != Some(XSI) {
                self.fail(path, format!("attribute {} is not allowed here", attribute.name()));
            }
        }
    }

    fn mismatch(&mut self, path: &Path, children: &[Node], mismatch: &Mismatch) {
        let expected = mismatch.expected.join(" or ");
        match children.get(mismatch.at) {
            Some(child) => {
                let name = child.tag_name().name();
                self.fail(
                    &Path::Child {
                        parent: path,
                        name,
                        index: None,
                    },
                    format!("element {name} is not expected here; expected {expected}"),
                )
            }
            None => self.fail(path, format!("element {expected} is missing")),
        }
    }

    /// Matches `particle` against `children[start..]`, greedily; returns
    /// the index after the last child it took.
    fn consume(
        &self,
        particle: &'s Particle,
        children: &[Node],
        start: usize,
        matched: &mut Vec<Matched<'s>>,
    ) -> Result<usize, Mismatch> {
        let mut at = start;
        let mut times = 0u32;
        while particle.max.is_none_or(|max| times < max) {
            let mark = matched.len();
            match self.once(&particle.term, particle.max != Some(1), children, at, matched) {
                Ok(next) => {
                    let progressed = next > at;
                    at = next;
                    times += 1;
                    // A repetition that took nothing: more would take
                    // nothing too, and fill any minimum.
                    if !progressed {
                        break;
                    }
                }
                Err(mismatch) => {
                    matched.truncate(mark);
                    if times < particle.min {
                        return Err(mismatch);
                    }
                    break;
                }
            }
        }
        Ok(at)
    }

    fn once(
        &self,
        term: &'s Term,
        repeats: bool,
        children: &[Node],
        at: usize,
        matched: &mut Vec<Matched<'s>>,
    ) -> Result<usize, Mismatch> {
        match term {
            Term::Element { name, type_name } => match children.get(at) {
                Some(child) if child.tag_name().name() == name => {
                    matched.push(Matched {
                        index: at,
                        name,
                        type_name,
                        repeats,
                    });
                    Ok(at + 1)
                }
                _ => Err(Mismatch {
                    at,
                    expected: vec![name.clone()],
                }),
            },
            Term::Any => match children.get(at) {
                Some(_) => Ok(at + 1),
                None => Err(Mismatch {
                    at,
                    expected: vec!["any element".to_owned()],
                }),
            },
            Term::Sequence(items) => {
                let mut next = at;
                for item in items {
                    next = self.consume(item, children, next, matched)?;
                }
                Ok(next)
            }
            Term::Choice(items) => {
                let mut expected = Vec::new();
                let mut empty_allowed = false;
                for item in items {
                    let mark = matched.len();
                    match self.consume(item, children, at, matched) {
                        Ok(next) if next > at => return Ok(next),
                        Ok(_) => {
                            matched.truncate(mark);
                            empty_allowed = true;
                        }
                        Err(mismatch) => {
                            matched.truncate(mark);
                            if mismatch.at > at {
                                // Went in, then failed: that alternative was meant.
                                return Err(mismatch);
                            }
                            expected.extend(mismatch.expected);
                        }
                    }
                }
                if empty_allowed {
                    Ok(at)
                } else {
                    Err(Mismatch { at, expected })
                }
            }
        }
    }
}

/// An element's text, its text and CDATA children joined.
fn text_of(node: Node) -> String {
    node.children().filter(Node::is_text).filter_map(|n| n.text()).collect()
}

fn check_simple(simple: &Simple, raw: &str) -> Result<(), String> {
    // xs:string keeps white space; the other built-ins collapse it.
    let value = if simple.builtin == Builtin::String {
        raw
    } else {
        raw.trim()
    };
    match simple.builtin {
        Builtin::String => {}
        Builtin::Decimal => check_decimal(simple, value)?,
        Builtin::Date => {
            let (date, _) = split_zone(value);
            chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d")
                .map_err(|_| format!("{value:?} is not a date (YYYY-MM-DD)"))?;
            check_zone(value)?;
        }
        Builtin::DateTime => {
            let (date_time, _) = split_zone(value);
            chrono::NaiveDateTime::parse_from_str(date_time, "%Y-%m-%dT%H:%M:%S%.f")
                .map_err(|_| format!("{value:?} is not a date and time (YYYY-MM-DDThh:mm:ss)"))?;
            check_zone(value)?;
        }
        Builtin::Boolean => {
            if !matches!(value, "true" | "false" | "1" | "0") {
                return Err(format!("{value:?} is not true or false"));
            }
        }
        Builtin::GYearMonth => {
            let (month, _) = split_zone(value);
            chrono::NaiveDate::parse_from_str(&format!("{month}-01"), "%Y-%m-%d")
                .map_err(|_| format!("{value:?} is not a year and month (YYYY-MM)"))?;
        }
    }
    let chars = value.chars().count();
    if let Some(min) = simple.min_length
        && chars < min
    {
        return Err(if min == 1 {
            "must not be empty".to_owned()
        } else {
            format!("must be at least {min} characters")
        });
    }
    if let Some(max) = simple.max_length
        && chars > max
    {
        return Err(format!("must be at most {max} characters"));
    }
    if !simple.enumeration.is_empty() && !simple.enumeration.iter().any(|e| e == value) {
        return Err(format!("{value:?} is not one of {}", simple.enumeration.join(", ")));
    }
    if let Some(pattern) = simple.patterns.iter().find(|p| !p.is_match(value)) {
        let shown = pattern.as_str().trim_start_matches("^(?:").trim_end_matches(")$");
        return Err(format!("{value:?} does not match the pattern {shown}"));
    }
    Ok(())
}

/// The lexical form of xs:decimal: an optional sign, digits, an optional
/// point and digits; no exponent.
fn check_decimal(simple: &Simple, value: &str) -> Result<(), String> {
    let digits = value.strip_prefix(['+', '-']).unwrap_or(value);
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let lexical = !(int.is_empty() && frac.is_empty())
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit());
    if !lexical {
        return Err(format!("{value:?} is not a decimal number"));
    }
    // Digits of the value: leading zeros of the integer part and trailing
    // zeros of the fraction do not count.
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    if let Some(max) = simple.fraction_digits
        && frac.len() > max as usize
    {
        return Err(format!("{value:?} has more than {max} digits after the decimal point"));
    }
    if let Some(max) = simple.total_digits
        && int.len() + frac.len() > max as usize
    {
        return Err(format!("{value:?} has more than {max} digits"));
    }
    if simple.min_inclusive.is_some() || simple.max_inclusive.is_some() {
        // At most 18 digits when bounded (every ISO 20022 amount): exact.
        let number =
            Decimal::from_str_exact(value.trim_start_matches('+')).map_err(|_| format!("{value:?} is out of range"))?;
        if let Some(min) = simple.min_inclusive
            && number < min
        {
            return Err(format!("{value:?} must be at least {min}"));
        }
        if let Some(max) = simple.max_inclusive
            && number > max
        {
            return Err(format!("{value:?} must be at most {max}"));
        }
    }
    Ok(())
}

/// A value and its time zone suffix (`Z`, `+01:00`), if any.
fn split_zone(value: &str) -> (&str, &str) {
    if let Some(stripped) = value.strip_suffix('Z') {
        return (stripped, "Z");
    }
    let bytes = value.as_bytes();
    if bytes.len() > 6 {
        let split = bytes.len() - 6;
        if matches!(bytes[split], b'+' | b'-') && bytes[split + 3] == b':' {
            return (&value[..split], &value[split..]);
        }
    }
    (value, "")
}

fn check_zone(value: &str) -> Result<(), String> {
    let (_, zone) = split_zone(value);
    if zone.len() == 6 {
        let hours: u32 = zone[1..3]
            .parse()
            .map_err(|_| format!("{value:?} has a bad time zone"))?;
        let minutes: u32 = zone[4..6]
            .parse()
            .map_err(|_| format!("{value:?} has a bad time zone"))?;
        if hours > 14 || minutes > 59 {
            return Err(format!("{value:?} has a bad time zone"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const XSD: &str = r#"<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns="urn:t" targetNamespace="urn:t" elementFormDefault="qualified">
      <xs:element name="Document" type="Doc"/>
      <xs:complexType name="Doc"><xs:sequence>
        <xs:element name="Id" type="Max5"/>
        <xs:element name="Item" type="Item" maxOccurs="unbounded"/>
        <xs:element name="Note" type="Max5" minOccurs="0"/>
      </xs:sequence></xs:complexType>
      <xs:complexType name="Item"><xs:sequence>
        <xs:choice><xs:element name="A" type="Amt"/><xs:element name="B" type="Max5"/></xs:choice>
        <xs:element name="When" type="Date" minOccurs="0"/>
      </xs:sequence></xs:complexType>
      <xs:complexType name="Amt"><xs:simpleContent><xs:extension base="Dec">
        <xs:attribute name="Ccy" type="Ccy" use="required"/></xs:extension></xs:simpleContent></xs:complexType>
      <xs:simpleType name="Max5"><xs:restriction base="xs:string"><xs:minLength value="1"/><xs:maxLength value="5"/></xs:restriction></xs:simpleType>
      <xs:simpleType name="Dec"><xs:restriction base="xs:decimal"><xs:fractionDigits value="2"/><xs:totalDigits value="6"/><xs:minInclusive value="0"/></xs:restriction></xs:simpleType>
      <xs:simpleType name="Ccy"><xs:restriction base="xs:string"><xs:pattern value="[A-Z]{3,3}"/></xs:restriction></xs:simpleType>
      <xs:simpleType name="Date"><xs:restriction base="xs:date"/></xs:simpleType>
    </xs:schema>"#;

    fn check(body: &str) -> Vec<(String, String)> {
        let xml = format!(r#"<Document xmlns="urn:t"><Msg>{body}</Msg></Document>"#);
        // The test schema has no message element: wrap one for the paths.
        let xsd = XSD.replace(
            r#"<xs:element name="Document" type="Doc"/>"#,
            r#"<xs:element name="Document" type="Wrap"/><xs:complexType name="Wrap"><xs:sequence><xs:element name="Msg" type="Doc"/></xs:sequence></xs:complexType>"#,
        );
        let schema = Schema::compile(&xsd).unwrap();
        let doc = roxmltree::Document::parse(&xml).unwrap();
        schema.validate(&doc).into_iter().map(|i| (i.path, i.message)).collect()
    }

    fn paths(body: &str) -> Vec<String> {
        check(body).into_iter().map(|(path, _)| path).collect()
    }

    #[test]
    fn a_valid_document_passes() {
        assert_eq!(
            check(r#"<Id>x</Id><Item><A Ccy="EUR">10.50</A></Item><Item><B>y</B><When>2026-12-01</When></Item>"#),
            vec![]
        );
    }

    #[test]
    fn facets_are_checked_by_path() {
        assert_eq!(
            paths(
                r#"<Id>toolong</Id><Item><A Ccy="EUR">1.005</A></Item><Item><A Ccy="eur">-1</A></Item><Item><B>y</B><When>2026-13-01</When></Item>"#
            ),
            vec!["Id", "Item[1]/A", "Item[2]/A", "Item[2]/A", "Item[3]/When"]
        );
    }

    #[test]
    fn trailing_zeros_do_not_count_as_digits() {
        assert_eq!(
            paths(r#"<Id>x</Id><Item><A Ccy="EUR">0010.500000</A></Item>"#),
            Vec::<String>::new()
        );
        assert_eq!(
            paths(r#"<Id>x</Id><Item><A Ccy="EUR">1e3</A></Item>"#),
            vec!["Item[1]/A"]
        );
    }

    #[test]
    fn structure_is_checked() {
        // Missing required element, an unexpected one, a missing attribute.
        assert_eq!(paths(r#"<Item><B>y</B></Item>"#), vec!["Item"]);
        assert_eq!(paths(r#"<Id>x</Id>"#), vec!["Msg"]);
        assert_eq!(paths(r#"<Id>x</Id><Item><B>y</B></Item><Extra/>"#), vec!["Extra"]);
        assert_eq!(paths(r#"<Id>x</Id><Item><A>1</A></Item>"#), vec!["Item[1]/A"]);
        assert_eq!(paths(r#"<Id>x</Id><Item><C/></Item>"#), vec!["Item[1]/C"]);
    }

    #[test]
    fn the_vendored_schemas_compile() {
        for xsd in super::super::schemas::ALL {
            Schema::compile(xsd).unwrap();
        }
    }
}
