//! Serving callers: the listener and its limits, the request path (`proxy`), and the body
//! wrappers the request path streams through.

pub mod admission;
pub mod body;
pub mod listener;
pub mod proxy;
pub mod stall;
