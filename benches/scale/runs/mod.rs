//! The runs the benchmark compares: Tender's, the floor's, and the agents'
//! alone.

pub mod agents;
pub mod floor;
pub mod tender;
