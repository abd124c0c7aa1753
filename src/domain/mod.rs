//! The rules of money, with no IO: no database, no clock, no async.
//!
//! Everything a decision needs — the time, fresh ids — arrives inside the
//! command, so the same inputs always give the same events. This is where
//! the unit and property tests of the ledger's invariants live.

pub mod account;
pub mod iban;
pub mod money;

pub use account::{
    Account, Command, DepositCommand, Event, FoldError, OpenAccountCommand, Posting, Refusal, ReturnReason,
    TransferBooked, TransferBulkCommand, TransferLine, apply, decide, decide_credit, decide_return, evolve, replay,
};
pub use iban::{Bic, BicError, Iban, IbanCheck, IbanError};
pub use money::{AMOUNT_UNITS_MAX, Amount, AmountError, Currency, CurrencyError, format_amount, parse_amount};
