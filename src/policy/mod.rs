//! Backup policies' pure decisions: when a policy runs (`schedule`) and
//! which restore points it keeps (`retention`). No I/O.

pub mod retention;
pub mod runs;
pub mod schedule;
