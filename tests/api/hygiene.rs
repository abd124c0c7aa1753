//! Source hygiene the README's "Security" section promises: SQL takes
//! values only as bound parameters. Every statement assembled with
//! `format!` is listed here with why its interpolation is safe; a new one
//! fails this test until it is reviewed and added.

use std::collections::BTreeMap;
use std::path::Path;

/// (file under src/, statements built with format!, what they interpolate)
const REVIEWED: &[(&str, usize, &str)] = &[
    ("event_store/mod.rs", 1, "a compile-time constant column list"),
    ("pg/cluster.rs", 1, "the configured database name, through quote_ident"),
    (
        "projections/rebuild.rs",
        11,
        "a generated schema name (rebuild_<uuid>), the schema events lives in (quote_ident), \
         registered projection and table names, and the shadow tables' own constraint, index and \
         column names and definitions, the live tables' extra index definitions, owner and grants, \
         read back from pg_catalog (pg_get_indexdef, quote_ident), quoted",
    ),
];

fn scan(dir: &Path, found: &mut BTreeMap<String, usize>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            scan(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text: String = std::fs::read_to_string(&path)
                .unwrap()
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            let count = [
                "raw_sql(&format!",
                "query(&format!",
                "query_as(&format!",
                "query_scalar(&format!",
            ]
            .iter()
            .map(|pattern| text.matches(pattern).count())
            .sum::<usize>();
            if count > 0 {
                let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
                let name = path.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
                found.insert(name, count);
            }
        }
    }
}

#[test]
fn sql_is_built_with_format_only_where_reviewed() {
    let mut found = BTreeMap::new();
    scan(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut found);
    let reviewed: BTreeMap<String, usize> = REVIEWED.iter().map(|(f, n, _)| ((*f).to_owned(), *n)).collect();
    assert_eq!(
        found, reviewed,
        "SQL assembled with format! changed: bind values as parameters, or review the interpolation and list it"
    );
}
