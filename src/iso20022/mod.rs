//! ISO 20022 at the edge (SPEC §10): pain.001 payment files in, pain.002
//! status reports and camt.053 statements out.
//!
//! Nothing here decides anything. A pain.001 document is read
//! ([`xml::read`]: UTF-8, no DTD, bounded size, depth and nodes), validated
//! against its version's official XSD ([`xsd`], the schemas compiled in
//! from `xsd/`), and mapped into the same typed bulk commands the JSON API
//! builds ([`pain001`]); the answers are rendered from the recorded
//! outcomes ([`pain002`]) and from the account's history ([`camt053`]).

pub mod camt053;
pub mod pain001;
pub mod pain002;
pub mod xml;
pub mod xsd;

use std::sync::LazyLock;

use xsd::Schema;

/// The official schemas, as published by the ISO 20022 registration
/// authority (sources in `xsd/README.md`).
pub mod schemas {
    pub const PAIN_001_001_03: &str = include_str!("xsd/pain.001.001.03.xsd");
    pub const PAIN_001_001_09: &str = include_str!("xsd/pain.001.001.09.xsd");
    pub const PAIN_002_001_10: &str = include_str!("xsd/pain.002.001.10.xsd");
    pub const CAMT_053_001_08: &str = include_str!("xsd/camt.053.001.08.xsd");
    pub const ALL: [&str; 4] = [PAIN_001_001_03, PAIN_001_001_09, PAIN_002_001_10, CAMT_053_001_08];
}

pub static PAIN_001_001_03: LazyLock<Schema> =
    LazyLock::new(|| Schema::compile(schemas::PAIN_001_001_03).expect("the vendored XSD compiles (tested)"));
pub static PAIN_001_001_09: LazyLock<Schema> =
    LazyLock::new(|| Schema::compile(schemas::PAIN_001_001_09).expect("the vendored XSD compiles (tested)"));
pub static PAIN_002_001_10: LazyLock<Schema> =
    LazyLock::new(|| Schema::compile(schemas::PAIN_002_001_10).expect("the vendored XSD compiles (tested)"));
pub static CAMT_053_001_08: LazyLock<Schema> =
    LazyLock::new(|| Schema::compile(schemas::CAMT_053_001_08).expect("the vendored XSD compiles (tested)"));
