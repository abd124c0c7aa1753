//! Exact money: integer minor units of an ISO 4217 currency.
//!
//! Amounts arrive as decimal text (`"14.5"`, `"61238"`, `"0.29"`) and are
//! turned into minor units by reading their digits — never through binary
//! floating point — so `0.29` is 29 cents.

use std::fmt;
use std::str::FromStr;

/// The largest amount a single command may carry, in whole currency units.
/// Anything above it is a client mistake, not a payment.
pub const AMOUNT_UNITS_MAX: i64 = 1_000_000_000_000;

/// An ISO 4217 currency with its number of minor-unit digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency(iso_currency::Currency);

impl Currency {
    pub const EUR: Currency = Currency(iso_currency::Currency::EUR);

    /// Parses a three-letter ISO 4217 code (upper case, as the standard writes it).
    pub fn parse(code: &str) -> Result<Currency, CurrencyError> {
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(CurrencyError::Shape);
        }
        let currency = iso_currency::Currency::from_code(code).ok_or(CurrencyError::Unknown)?;
        // Funds, precious metals and testing codes have no minor unit and are
        // not money an account can hold.
        if currency.exponent().is_none() {
            return Err(CurrencyError::Unknown);
        }
        Ok(Currency(currency))
    }

    pub fn code(&self) -> &'static str {
        self.0.code()
    }

    /// Digits after the decimal point (2 for EUR, 0 for JPY, 3 for KWD).
    pub fn minor_digits(&self) -> u32 {
        u32::from(self.0.exponent().unwrap_or(0))
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Currency {
    type Err = CurrencyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Currency::parse(s)
    }
}

impl serde::Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code())
    }
}

impl<'de> serde::Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Currency::parse(&code).map_err(|e| serde::de::Error::custom(format!("currency {code:?} {e}")))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CurrencyError {
    #[error("must be a three-letter upper-case ISO 4217 code such as EUR")]
    Shape,
    #[error("is not a known ISO 4217 currency code")]
    Unknown,
}

/// Why an amount was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("must be a decimal number such as \"14.50\"")]
    NotDecimal,
    #[error("has more than {0} digits after the decimal point")]
    TooPrecise(u32),
    #[error("must be greater than zero")]
    NotPositive,
    #[error("must not exceed {AMOUNT_UNITS_MAX} units")]
    TooLarge,
}

/// A positive decimal amount read exactly from its text, before it is tied
/// to a currency: `mantissa / 10^scale` units, trailing zeros removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Amount {
    mantissa: i64,
    scale: u32,
}

/// No currency has more than 4 minor digits; 6 leaves room and keeps
/// `mantissa` within i64 for amounts up to [`AMOUNT_UNITS_MAX`].
const AMOUNT_SCALE_MAX: u32 = 6;

impl Amount {
    /// Grammar: `digits [ "." digits ]`, greater than zero and at most
    /// [`AMOUNT_UNITS_MAX`] units. Signs, exponents, spaces and other
    /// decorations are refused: a payment amount has one spelling.
    pub fn parse(text: &str) -> Result<Amount, AmountError> {
        if let Some(unsigned) = text.strip_prefix('-') {
            // A negative amount is refused as such, not as a typo.
            return match Amount::parse(unsigned) {
                Ok(_) | Err(AmountError::NotPositive) => Err(AmountError::NotPositive),
                Err(other) => Err(other),
            };
        }
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty()
            || !all_digits(whole)
            || !all_digits(fraction)
            || (text.contains('.') && fraction.is_empty())
        {
            return Err(AmountError::NotDecimal);
        }
        let whole = whole.trim_start_matches('0');
        let fraction = fraction.trim_end_matches('0');
        // More than 13 integer digits is certainly above the limit; checking
        // the length first keeps the arithmetic below from overflowing.
        if whole.len() > 13 {
            return Err(AmountError::TooLarge);
        }
        if fraction.len() > AMOUNT_SCALE_MAX as usize {
            return Err(AmountError::TooPrecise(AMOUNT_SCALE_MAX));
        }
        let units: i64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| AmountError::NotDecimal)?
        };
        let fraction_value: i64 = if fraction.is_empty() {
            0
        } else {
            fraction.parse().map_err(|_| AmountError::NotDecimal)?
        };
        let scale = fraction.len() as u32;
        if units > AMOUNT_UNITS_MAX || (units == AMOUNT_UNITS_MAX && fraction_value > 0) {
            return Err(AmountError::TooLarge);
        }
        let mantissa = units * 10_i64.pow(scale) + fraction_value;
        if mantissa == 0 {
            return Err(AmountError::NotPositive);
        }
        Ok(Amount { mantissa, scale })
    }

    /// The amount in minor units of `currency`, refused when it has more
    /// fractional digits than the currency allows.
    pub fn to_minor(self, currency: Currency) -> Result<i64, AmountError> {
        let digits = currency.minor_digits();
        if self.scale > digits {
            return Err(AmountError::TooPrecise(digits));
        }
        Ok(self.mantissa * 10_i64.pow(digits - self.scale))
    }
}

/// The amount's exact value in its shortest spelling: `1.50` is `1.5`.
impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per_unit = 10_i64.pow(self.scale);
        let (units, fraction) = (self.mantissa / per_unit, self.mantissa % per_unit);
        if self.scale == 0 {
            write!(f, "{units}")
        } else {
            write!(f, "{units}.{fraction:0width$}", width = self.scale as usize)
        }
    }
}

/// Parses a positive decimal amount into minor units of `currency`.
pub fn parse_amount(text: &str, currency: Currency) -> Result<i64, AmountError> {
    Amount::parse(text)?.to_minor(currency)
}

/// Formats minor units with exactly the currency's digits: `3774850` EUR is
/// `"37748.50"`, `-150` is `"-1.50"`.
pub fn format_amount(minor: i64, currency: Currency) -> String {
    let digits = currency.minor_digits();
    let sign = if minor < 0 { "-" } else { "" };
    let magnitude = minor.unsigned_abs();
    if digits == 0 {
        return format!("{sign}{magnitude}");
    }
    let per_unit = 10_u64.pow(digits);
    format!(
        "{sign}{}.{:0width$}",
        magnitude / per_unit,
        magnitude % per_unit,
        width = digits as usize
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn amounts_are_read_exactly_from_their_digits() {
        let eur = Currency::EUR;
        assert_eq!(parse_amount("0.29", eur), Ok(29));
        assert_eq!(parse_amount("14.5", eur), Ok(1450));
        assert_eq!(parse_amount("61238", eur), Ok(6_123_800));
        assert_eq!(parse_amount("999", eur), Ok(99_900));
        assert_eq!(parse_amount("0.01", eur), Ok(1));
        assert_eq!(parse_amount("1.50", eur), Ok(150));
        assert_eq!(parse_amount("1.500", eur), Ok(150), "trailing zeros add no precision");
        assert_eq!(parse_amount("007.10", eur), Ok(710));
        assert_eq!(parse_amount("1000000000000", eur), Ok(100_000_000_000_000));
    }

    #[test]
    fn malformed_amounts_are_refused_with_their_reason() {
        let eur = Currency::EUR;
        assert_eq!(parse_amount("1.005", eur), Err(AmountError::TooPrecise(2)));
        assert_eq!(parse_amount("-1", eur), Err(AmountError::NotPositive));
        assert_eq!(parse_amount("0", eur), Err(AmountError::NotPositive));
        assert_eq!(parse_amount("0.00", eur), Err(AmountError::NotPositive));
        assert_eq!(parse_amount("abc", eur), Err(AmountError::NotDecimal));
        assert_eq!(parse_amount("1e309", eur), Err(AmountError::NotDecimal));
        assert_eq!(parse_amount("1e2", eur), Err(AmountError::NotDecimal));
        assert_eq!(parse_amount("", eur), Err(AmountError::NotDecimal));
        assert_eq!(parse_amount(".5", eur), Err(AmountError::NotDecimal));
        assert_eq!(parse_amount("5.", eur), Err(AmountError::NotDecimal));
        assert_eq!(parse_amount("+5", eur), Err(AmountError::NotDecimal));
        assert_eq!(parse_amount(" 5", eur), Err(AmountError::NotDecimal));
        assert_eq!(parse_amount("1,50", eur), Err(AmountError::NotDecimal));
        assert_eq!(parse_amount("1000000000000.01", eur), Err(AmountError::TooLarge));
        assert_eq!(parse_amount("99999999999999999999999", eur), Err(AmountError::TooLarge));
    }

    #[test]
    fn amounts_print_in_their_shortest_exact_spelling() {
        for (text, shortest) in [
            ("1.50", "1.5"),
            ("0014.500", "14.5"),
            ("7", "7"),
            ("0.05", "0.05"),
            ("3.", ""),
        ] {
            match Amount::parse(text) {
                Ok(amount) => assert_eq!(amount.to_string(), shortest, "{text}"),
                Err(_) => assert_eq!(shortest, "", "{text}"),
            }
        }
    }

    #[test]
    fn currencies_know_their_minor_digits() {
        assert_eq!(Currency::parse("EUR").unwrap().minor_digits(), 2);
        assert_eq!(Currency::parse("JPY").unwrap().minor_digits(), 0);
        assert_eq!(Currency::parse("KWD").unwrap().minor_digits(), 3);
        assert_eq!(Currency::parse("eur"), Err(CurrencyError::Shape));
        assert_eq!(Currency::parse("EURO"), Err(CurrencyError::Shape));
        assert_eq!(Currency::parse("ZZZ"), Err(CurrencyError::Unknown));
        assert_eq!(
            parse_amount("1.5", Currency::parse("JPY").unwrap()),
            Err(AmountError::TooPrecise(0))
        );
    }

    #[test]
    fn formatting_prints_exactly_the_currency_digits() {
        assert_eq!(format_amount(3_774_850, Currency::EUR), "37748.50");
        assert_eq!(format_amount(5, Currency::EUR), "0.05");
        assert_eq!(format_amount(-150, Currency::EUR), "-1.50");
        assert_eq!(format_amount(0, Currency::EUR), "0.00");
        assert_eq!(format_amount(1234, Currency::parse("KWD").unwrap()), "1.234");
        assert_eq!(format_amount(1234, Currency::parse("JPY").unwrap()), "1234");
    }

    proptest! {
        /// Parsing then printing any amount with at most two decimals loses nothing.
        #[test]
        fn parse_then_print_round_trips(minor in 1_i64..=100_000_000_000_000) {
            let text = format_amount(minor, Currency::EUR);
            prop_assert_eq!(parse_amount(&text, Currency::EUR), Ok(minor));
        }

        /// Any spelling with one or two decimals is read as exactly units*100+cents.
        #[test]
        fn short_spellings_are_exact(units in 0_i64..1_000_000_000, cents in 1_i64..100) {
            let text = if cents % 10 == 0 { format!("{units}.{}", cents / 10) } else { format!("{units}.{cents:02}") };
            prop_assert_eq!(parse_amount(&text, Currency::EUR), Ok(units * 100 + cents));
        }

        /// No input string makes the parser panic.
        #[test]
        fn parser_never_panics(text in "\\PC{0,40}") {
            let _ = parse_amount(&text, Currency::EUR);
        }
    }
}
