//! Tender: a Kubernetes operator that runs short-lived EC2 worker instances
//! for backup and restore of AWS resources.

pub mod api;
pub mod aws;
pub mod controller;
pub mod doctor;
pub mod faults;
pub mod messages;
pub mod mover;
pub mod names;
pub mod placement;
pub mod policy;
pub mod reachability;
pub mod reasons;
pub mod telemetry;
pub mod user_data;
pub mod worker;
