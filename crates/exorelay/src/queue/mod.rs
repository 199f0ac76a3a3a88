//! The queue: the schedule of due messages, the manager task that owns every state change, and
//! the bounces it queues.

pub mod bounce;
pub mod manager;
pub mod schedule;
