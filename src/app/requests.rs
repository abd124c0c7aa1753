//! Request bodies, parsed into commands. Every invalid field is reported at
//! once, by its JSON path, so a client fixes a payroll file in one go.
//!
//! About 550 lines, a fifth of them tests: the parsers, their fingerprints
//! and the tests that pin both (the bulk fingerprint's proptest keeps the
//! `Value`-built digest it replaced as its reference) belong together.

use serde_json::{Map, Value, json};

use crate::canonical_json;
use crate::domain::{Amount, Bic, Currency, Iban, IbanCheck};
use crate::problem::FieldError;
use sha2::{Digest, Sha256};

/// Longest free text accepted: a SEPA name is at most 70 characters and
/// unstructured remittance information at most 140.
pub const NAME_CHARS_MAX: usize = 140;
pub const TEXT_CHARS_MAX: usize = 140;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenAccountRequest {
    pub organization_name: String,
    pub iban: Iban,
    pub bic: Bic,
    pub currency: Currency,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepositRequest {
    pub amount: Amount,
    /// When absent, the account's currency.
    pub currency: Option<Currency>,
    pub reference: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkTransferRequest {
    pub organization_name: String,
    /// Required in the JSON body; a pain.001 may leave the debtor's agent
    /// out or say `NOTPROVIDED`.
    pub organization_bic: Option<Bic>,
    pub organization_iban: Iban,
    pub credit_transfers: Vec<CreditTransferRequest>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditTransferRequest {
    pub amount_cents: i64,
    pub currency: Currency,
    pub counterparty_name: String,
    /// Required in the JSON body (the seed's contract); a pain.001 may
    /// leave the creditor's agent out, as SEPA allows.
    pub counterparty_bic: Option<Bic>,
    pub counterparty_iban: Iban,
    pub description: String,
    /// ISO 20022 `EndToEndId`: the payer's own reference, kept with the
    /// transfer everywhere. Optional in JSON, always there in a pain.001.
    pub end_to_end_id: Option<String>,
}

/// The longest end-to-end reference (ISO 20022 `Max35Text`).
pub const END_TO_END_ID_CHARS_MAX: usize = 35;

// Fingerprints (SPEC §2.4): a digest of the parsed command, its kind and
// every field, canonical (IBANs as stored, amounts in minor units or as
// their exact decimal value), so that how a request was spelled, and which
// API it came through, never matter. Two requests with equal fingerprints
// are the same request for their idempotency key.

impl OpenAccountRequest {
    pub fn fingerprint(&self) -> [u8; 32] {
        canonical_json::digest(&json!({
            "command": "open_account",
            "organization_name": self.organization_name,
            "iban": self.iban.as_str(),
            "bic": self.bic.to_string(),
            "currency": self.currency.code(),
        }))
    }
}

impl DepositRequest {
    /// The account is part of the command: it comes from the path.
    pub fn fingerprint(&self, iban: &Iban) -> [u8; 32] {
        canonical_json::digest(&json!({
            "command": "deposit",
            "iban": iban.as_str(),
            // Exact, whatever the spelling: `1.5`, `1.50` and `"1.50"` are
            // one amount (minor units need the account's currency, which
            // the request may leave out).
            "amount": self.amount.to_string(),
            "currency": self.currency.map(|c| c.code()),
            "reference": self.reference,
        }))
    }
}

impl BulkTransferRequest {
    /// Written straight into canonical JSON, keys in byte order (a bulk
    /// may carry thousands of transfers): the same document, and digest,
    /// as the `json!` spelling kept in the tests.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut out = Vec::with_capacity(192 + 256 * self.credit_transfers.len());
        let mut bulk = canonical_json::ObjectWriter::begin(&mut out);
        bulk.str("command", "transfer_bulk");
        bulk.nested("credit_transfers", |out| {
            canonical_json::array(out, &self.credit_transfers, |out, t| {
                let bic = t.counterparty_bic.as_ref().map(ToString::to_string);
                let mut transfer = canonical_json::ObjectWriter::begin(out);
                transfer.int("amount_cents", t.amount_cents);
                transfer.opt_str("counterparty_bic", bic.as_deref());
                transfer.str("counterparty_iban", t.counterparty_iban.as_str());
                transfer.str("counterparty_name", &t.counterparty_name);
                transfer.str("currency", t.currency.code());
                transfer.str("description", &t.description);
                // Only when given: fingerprints recorded before the field
                // existed stay the same.
                if let Some(end_to_end_id) = &t.end_to_end_id {
                    transfer.str("end_to_end_id", end_to_end_id);
                }
                transfer.end();
            });
        });
        let bic = self.organization_bic.as_ref().map(ToString::to_string);
        bulk.opt_str("organization_bic", bic.as_deref());
        bulk.str("organization_iban", self.organization_iban.as_str());
        bulk.str("organization_name", &self.organization_name);
        bulk.end();
        Sha256::digest(&out).into()
    }
}

/// Collects field errors while reading a JSON document.
#[derive(Default)]
struct Reader {
    errors: Vec<FieldError>,
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

impl Reader {
    fn fail(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError::new(field, message));
    }

    fn object<'v>(&mut self, value: &'v Value, path: &str) -> Option<&'v Map<String, Value>> {
        match value {
            Value::Object(map) => Some(map),
            _ => {
                let field = if path.is_empty() { "body" } else { path };
                self.fail(field, "must be a JSON object");
                None
            }
        }
    }

    /// A string field: trimmed, non-empty, at most `max_chars` characters.
    fn text<'v>(
        &mut self,
        obj: &'v Map<String, Value>,
        prefix: &str,
        name: &str,
        required: bool,
        max_chars: usize,
    ) -> Option<&'v str> {
        // The field's path is spelled only for an error.
        let path = || join(prefix, name);
        match obj.get(name) {
            None | Some(Value::Null) => {
                if required {
                    self.fail(path(), "is required");
                }
                None
            }
            Some(Value::String(text)) => {
                let text = text.trim();
                if required && text.is_empty() {
                    self.fail(path(), "must not be empty");
                    None
                } else if text.chars().count() > max_chars {
                    self.fail(path(), format!("must be at most {max_chars} characters"));
                    None
                } else if text.chars().any(char::is_control) {
                    self.fail(path(), "must not contain control characters");
                    None
                } else {
                    Some(text)
                }
            }
            Some(_) => {
                self.fail(path(), "must be a string");
                None
            }
        }
    }

    fn iban(&mut self, obj: &Map<String, Value>, prefix: &str, name: &str, check: IbanCheck) -> Option<Iban> {
        let text = self.text(obj, prefix, name, true, 64)?;
        Iban::parse(text, check)
            .map_err(|e| self.fail(join(prefix, name), e.to_string()))
            .ok()
    }

    fn bic(&mut self, obj: &Map<String, Value>, prefix: &str, name: &str) -> Option<Bic> {
        let text = self.text(obj, prefix, name, true, 64)?;
        Bic::parse(text)
            .map_err(|e| self.fail(join(prefix, name), e.to_string()))
            .ok()
    }

    fn currency(&mut self, obj: &Map<String, Value>, prefix: &str, name: &str, required: bool) -> Option<Currency> {
        let text = self.text(obj, prefix, name, required, 16)?;
        Currency::parse(text)
            .map_err(|e| self.fail(join(prefix, name), e.to_string()))
            .ok()
    }

    /// An amount, as a decimal string or a JSON number read from its text
    /// (serde_json's `arbitrary_precision` keeps the digits: never binary floating point).
    fn amount(&mut self, obj: &Map<String, Value>, prefix: &str, name: &str) -> Option<Amount> {
        let path = || join(prefix, name);
        let text = match obj.get(name) {
            None | Some(Value::Null) => {
                self.fail(path(), "is required");
                return None;
            }
            Some(Value::String(text)) => text.as_str(),
            Some(Value::Number(number)) => number.as_str(),
            Some(_) => {
                self.fail(path(), "must be a decimal string such as \"14.50\"");
                return None;
            }
        };
        Amount::parse(text).map_err(|e| self.fail(path(), e.to_string())).ok()
    }

    fn finish<T>(self, value: Option<T>) -> Result<T, Vec<FieldError>> {
        match value {
            Some(value) if self.errors.is_empty() => Ok(value),
            _ => Err(self.errors),
        }
    }
}

pub fn parse_open_account(body: &Value, check: IbanCheck) -> Result<OpenAccountRequest, Vec<FieldError>> {
    let mut reader = Reader::default();
    let parsed = reader.object(body, "").and_then(|obj| {
        let organization_name = reader.text(obj, "", "organization_name", true, NAME_CHARS_MAX);
        let iban = reader.iban(obj, "", "iban", check);
        let bic = reader.bic(obj, "", "bic");
        let currency = match obj.get("currency") {
            None | Some(Value::Null) => Some(Currency::EUR),
            Some(_) => reader.currency(obj, "", "currency", true),
        };
        Some(OpenAccountRequest {
            organization_name: organization_name?.to_owned(),
            iban: iban?,
            bic: bic?,
            currency: currency?,
        })
    });
    reader.finish(parsed)
}

pub fn parse_deposit(body: &Value) -> Result<DepositRequest, Vec<FieldError>> {
    let mut reader = Reader::default();
    let parsed = reader.object(body, "").and_then(|obj| {
        let amount = reader.amount(obj, "", "amount");
        let currency_given = !matches!(obj.get("currency"), None | Some(Value::Null));
        let currency = reader.currency(obj, "", "currency", false);
        let reference = reader.text(obj, "", "reference", false, TEXT_CHARS_MAX);
        if currency_given && currency.is_none() {
            return None;
        }
        Some(DepositRequest {
            amount: amount?,
            currency,
            reference: reference.filter(|r| !r.is_empty()).map(str::to_owned),
        })
    });
    reader.finish(parsed)
}

pub fn parse_bulk_transfer(
    body: &Value,
    check: IbanCheck,
    transfers_max: usize,
) -> Result<BulkTransferRequest, Vec<FieldError>> {
    let mut reader = Reader::default();
    let parsed = reader.object(body, "").and_then(|obj| {
        let organization_name = reader.text(obj, "", "organization_name", true, NAME_CHARS_MAX);
        let organization_bic = reader.bic(obj, "", "organization_bic");
        let organization_iban = reader.iban(obj, "", "organization_iban", check);
        let transfers = match obj.get("credit_transfers") {
            None | Some(Value::Null) => {
                reader.fail("credit_transfers", "is required");
                None
            }
            Some(Value::Array(items)) if items.is_empty() => {
                reader.fail("credit_transfers", "must contain at least one transfer");
                None
            }
            Some(Value::Array(items)) if items.len() > transfers_max => {
                reader.fail(
                    "credit_transfers",
                    format!("must contain at most {transfers_max} transfers, got {}", items.len()),
                );
                None
            }
            Some(Value::Array(items)) => {
                let mut transfers = Vec::with_capacity(items.len());
                let mut all_ok = true;
                for (index, item) in items.iter().enumerate() {
                    let path = format!("credit_transfers[{index}]");
                    match parse_credit_transfer(&mut reader, item, &path, check) {
                        // Money paid to the ordering account itself would go
                        // nowhere (SPEC §9): refused like any invalid field.
                        Some(transfer) if organization_iban.as_ref() == Some(&transfer.counterparty_iban) => {
                            reader.fail(
                                join(&path, "counterparty_iban"),
                                "must not be the ordering account's own IBAN (organization_iban)",
                            );
                            all_ok = false;
                        }
                        Some(transfer) => transfers.push(transfer),
                        None => all_ok = false,
                    }
                }
                all_ok.then_some(transfers)
            }
            Some(_) => {
                reader.fail("credit_transfers", "must be an array of transfers");
                None
            }
        };
        Some(BulkTransferRequest {
            organization_name: organization_name?.to_owned(),
            organization_bic: Some(organization_bic?),
            organization_iban: organization_iban?,
            credit_transfers: transfers?,
        })
    });
    reader.finish(parsed)
}

fn parse_credit_transfer(
    reader: &mut Reader,
    item: &Value,
    path: &str,
    check: IbanCheck,
) -> Option<CreditTransferRequest> {
    let obj = reader.object(item, path)?;
    let amount = reader.amount(obj, path, "amount");
    let currency = reader.currency(obj, path, "currency", true);
    let counterparty_name = reader.text(obj, path, "counterparty_name", true, NAME_CHARS_MAX);
    let counterparty_bic = reader.bic(obj, path, "counterparty_bic");
    let counterparty_iban = reader.iban(obj, path, "counterparty_iban", check);
    let description = reader.text(obj, path, "description", false, TEXT_CHARS_MAX);
    let described = !matches!(obj.get("description"), None | Some(Value::Null));
    if described && description.is_none() {
        return None;
    }
    let end_to_end_id = reader.text(obj, path, "end_to_end_id", false, END_TO_END_ID_CHARS_MAX);
    let referenced = !matches!(obj.get("end_to_end_id"), None | Some(Value::Null));
    if referenced && end_to_end_id.is_none_or(str::is_empty) {
        if end_to_end_id == Some("") {
            reader.fail(join(path, "end_to_end_id"), "must not be empty");
        }
        return None;
    }
    let (amount, currency) = (amount?, currency?);
    let amount_cents = amount
        .to_minor(currency)
        .map_err(|e| reader.fail(join(path, "amount"), e.to_string()))
        .ok()?;
    Some(CreditTransferRequest {
        amount_cents,
        currency,
        counterparty_name: counterparty_name?.to_owned(),
        counterparty_bic: Some(counterparty_bic?),
        counterparty_iban: counterparty_iban?,
        description: description.unwrap_or_default().to_owned(),
        end_to_end_id: end_to_end_id.map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(errors: Vec<FieldError>) -> Vec<String> {
        errors.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn every_bad_transfer_field_is_named_by_its_path() {
        let body: Value = serde_json::from_str(
            r#"{"organization_name": "ACME Corp", "organization_bic": "OIVUSCLQXXX",
                "organization_iban": "FR10474608000002006107XXXXX",
                "credit_transfers": [
                  {"amount": "1", "currency": "EUR", "counterparty_name": "A", "counterparty_bic": "CRLYFRPPTOU", "counterparty_iban": "EE383680981021245685"},
                  {"amount": "1.005", "currency": "EUR", "counterparty_name": "B", "counterparty_bic": "CRLYFRPPTOU", "counterparty_iban": "EE383680981021245685"},
                  {"amount": "2", "currency": "EURO", "counterparty_name": "", "counterparty_bic": "X", "counterparty_iban": "nope"}
                ]}"#,
        )
        .unwrap();
        let errors = parse_bulk_transfer(&body, IbanCheck::Structure, 10).unwrap_err();
        assert_eq!(
            fields(errors),
            vec![
                "credit_transfers[1].amount",
                "credit_transfers[2].currency",
                "credit_transfers[2].counterparty_name",
                "credit_transfers[2].counterparty_bic",
                "credit_transfers[2].counterparty_iban",
            ]
        );
    }

    #[test]
    fn a_transfer_to_the_ordering_account_itself_is_refused() {
        let transfer = |iban: &str| json!({"amount": "1", "currency": "EUR", "counterparty_name": "A", "counterparty_bic": "CRLYFRPPTOU", "counterparty_iban": iban});
        let body = json!({"organization_name": "A", "organization_bic": "OIVUSCLQXXX",
            "organization_iban": "FR10474608000002006107XXXXX",
            "credit_transfers": [transfer("EE383680981021245685"), transfer("fr10 4746 0800 0002 0061 07xx xxx")]});
        assert_eq!(
            fields(parse_bulk_transfer(&body, IbanCheck::Structure, 10).unwrap_err()),
            vec!["credit_transfers[1].counterparty_iban"]
        );
    }

    #[test]
    fn json_numbers_are_read_from_their_digits() {
        let body: Value = serde_json::from_str(r#"{"amount": 0.29}"#).unwrap();
        assert_eq!(parse_deposit(&body).unwrap().amount.to_minor(Currency::EUR), Ok(29));
        let body: Value = serde_json::from_str(r#"{"amount": 1e309}"#).unwrap();
        assert_eq!(fields(parse_deposit(&body).unwrap_err()), vec!["amount"]);
    }

    #[test]
    fn bulk_limits_are_enforced() {
        let transfer = json!({"amount": "1", "currency": "EUR", "counterparty_name": "A", "counterparty_bic": "CRLYFRPPTOU", "counterparty_iban": "EE383680981021245685"});
        let body = |n: usize| json!({"organization_name": "A", "organization_bic": "OIVUSCLQXXX", "organization_iban": "FR10474608000002006107XXXXX", "credit_transfers": vec![transfer.clone(); n]});
        assert!(parse_bulk_transfer(&body(3), IbanCheck::Structure, 3).is_ok());
        assert_eq!(
            fields(parse_bulk_transfer(&body(4), IbanCheck::Structure, 3).unwrap_err()),
            vec!["credit_transfers"]
        );
        assert_eq!(
            fields(parse_bulk_transfer(&body(0), IbanCheck::Structure, 3).unwrap_err()),
            vec!["credit_transfers"]
        );
    }

    /// The bulk fingerprint as first written, through a `Value`: the
    /// direct writer must give the same digest (recorded keys depend on it).
    fn fingerprint_through_a_value(bulk: &BulkTransferRequest) -> [u8; 32] {
        let transfers: Vec<Value> = bulk
            .credit_transfers
            .iter()
            .map(|t| {
                let mut transfer = json!({
                    "amount_cents": t.amount_cents,
                    "currency": t.currency.code(),
                    "counterparty_name": t.counterparty_name,
                    "counterparty_bic": t.counterparty_bic.as_ref().map(ToString::to_string),
                    "counterparty_iban": t.counterparty_iban.as_str(),
                    "description": t.description,
                });
                if let Some(end_to_end_id) = &t.end_to_end_id {
                    transfer["end_to_end_id"] = json!(end_to_end_id);
                }
                transfer
            })
            .collect();
        canonical_json::digest(&json!({
            "command": "transfer_bulk",
            "organization_name": bulk.organization_name,
            "organization_bic": bulk.organization_bic.as_ref().map(ToString::to_string),
            "organization_iban": bulk.organization_iban.as_str(),
            "credit_transfers": transfers,
        }))
    }

    #[test]
    fn the_bulk_fingerprint_is_pinned() {
        // Recorded idempotency keys hold this digest: a change to it turns
        // every retry across an upgrade into a 409. Two transfers, one
        // without a BIC and one with an end-to-end reference, quotes, a
        // backslash and a non-ASCII letter in the texts.
        let body = json!({"organization_name": "ACME \"Corp\"", "organization_bic": "OIVUSCLQXXX",
        "organization_iban": "FR10474608000002006107XXXXX",
        "credit_transfers": [
            {"amount": "14.50", "currency": "EUR", "counterparty_name": "Bob\\ é",
             "counterparty_bic": "CRLYFRPPTOU", "counterparty_iban": "EE38 3680 9810 2124 5685",
             "description": "line \"one\" / two", "end_to_end_id": "E2E-1"},
            {"amount": 1, "currency": "EUR", "counterparty_name": "Carol",
             "counterparty_bic": "CRLYFRPPTOU", "counterparty_iban": "GB82WEST12345698765432",
             "description": "x"}
        ]});
        let mut bulk = parse_bulk_transfer(&body, IbanCheck::Structure, 10).unwrap();
        bulk.credit_transfers[1].counterparty_bic = None;
        let hex: String = bulk.fingerprint().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "52d06c059bdd11f5786620db887cc2049bac890a03dacb8434790d610df44de2");
        assert_eq!(bulk.fingerprint(), fingerprint_through_a_value(&bulk));
    }

    proptest::proptest! {
        #[test]
        fn the_bulk_fingerprint_is_the_canonical_digest_of_its_document(
            name in "\\PC{0,12}",
            transfers in proptest::collection::vec(
                (-5i64..i64::MAX, "\\PC{0,12}", "[\"\\\\\\n\\t a-zé€😀]{0,12}", proptest::option::of("[ -~]{0,35}"), proptest::bool::ANY),
                1..5,
            ),
            organization_bic in proptest::bool::ANY,
        ) {
            let iban = |text: &str| Iban::parse(text, IbanCheck::Full).unwrap();
            let bic = Bic::parse("CRLYFRPPTOU").unwrap();
            let bulk = BulkTransferRequest {
                organization_name: name,
                organization_bic: organization_bic.then(|| Bic::parse("OIVUSCLQXXX").unwrap()),
                organization_iban: iban("DE89370400440532013000"),
                credit_transfers: transfers
                    .into_iter()
                    .map(|(amount_cents, counterparty_name, description, end_to_end_id, with_bic)| CreditTransferRequest {
                        amount_cents,
                        currency: Currency::parse("EUR").unwrap(),
                        counterparty_name,
                        counterparty_bic: with_bic.then(|| bic.clone()),
                        counterparty_iban: iban("GB82WEST12345698765432"),
                        description,
                        end_to_end_id,
                    })
                    .collect(),
            };
            proptest::prop_assert_eq!(bulk.fingerprint(), fingerprint_through_a_value(&bulk));
        }
    }

    #[test]
    fn fingerprints_cover_the_command_not_its_spelling() {
        let spelled = |amount: &str| -> [u8; 32] {
            let body: Value = serde_json::from_str(&format!(r#"{{"amount": {amount}, "reference": "x"}}"#)).unwrap();
            let iban = Iban::parse("DE89 3704 0044 0532 0130 00", IbanCheck::Full).unwrap();
            parse_deposit(&body).unwrap().fingerprint(&iban)
        };
        assert_eq!(spelled("1.5"), spelled("1.50"));
        assert_eq!(spelled("1.5"), spelled(r#""1.50""#));
        assert_ne!(spelled("1.5"), spelled("1.51"));
        let bulk = |amount: &str, description: &str| {
            let body = json!({"organization_name": "A", "organization_bic": "OIVUSCLQXXX",
                "organization_iban": "FR10474608000002006107XXXXX",
                "credit_transfers": [{"amount": amount, "currency": "EUR", "counterparty_name": "B",
                    "counterparty_bic": "CRLYFRPPTOU", "counterparty_iban": "EE38 3680 9810 2124 5685",
                    "description": description}]});
            parse_bulk_transfer(&body, IbanCheck::Structure, 10)
                .unwrap()
                .fingerprint()
        };
        assert_eq!(bulk("14.5", "x"), bulk("14.50", "x"));
        assert_ne!(bulk("14.5", "x"), bulk("14.5", "y"));
    }

    #[test]
    fn a_body_that_is_not_an_object_is_named_body() {
        assert_eq!(
            fields(parse_open_account(&json!([1]), IbanCheck::Full).unwrap_err()),
            vec!["body"]
        );
    }
}
