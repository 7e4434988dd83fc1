//! Fault injection: rules that make the device misbehave on command, precisely and
//! reproducibly. docs/faults.md describes every kind and what a correct driver does about it.
//!
//! A rule has a kind (what goes wrong), filters (which descriptors it applies to), a trigger
//! (which of the matching occurrences fire) and an optional predecessor (`after_rule`): a rule
//! with a predecessor is armed only once that rule has fired, and counts its occurrences afresh
//! every time the predecessor fires again, so "the second WRITE after each reset" can be said.
//! Probabilities draw from seeded generators, one stream per queue (and one for resets), so a
//! seed reproduces the injected sequence, and the faults one queue meets do not depend on how
//! its requests interleave with other queues'. [`Injector::begin_epoch`] restarts the counters
//! and streams for a campaign's unit (the `FAULT_EPOCH` register).
//!
//! [`rules`] holds what a rule is and how a rules file is checked (every field, limit and
//! name, with an error that names the rule); [`injector`] applies the rules in force to the
//! device's events at run time.

mod injector;
mod rules;
#[cfg(test)]
mod tests;

pub use injector::{Injection, Injector, Occurrence};
pub use rules::*;
