//! Pure domain logic: what a status is and how it ranks, which observation of
//! a job wins, and how an undocumented webhook body is read. Nothing in here
//! does I/O, so every rule is unit-tested directly.

pub mod confirm;
pub mod event;
pub mod finetune_request;
pub mod job;
pub mod payload;
pub mod retry;
pub mod rules;
pub mod status;

pub use job::{Effect, Job, JobFields, Observation, observe};
pub use payload::{Payload, PayloadError};
pub use rules::{Decision, Source, decide};
pub use status::Status;
