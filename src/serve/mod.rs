//! Serving callers: the listener and its limits, the request path (`proxy`, over one
//! `exchange` per request), what keyward answers with itself (`refusal`: the policy's refusal or a fault of its own), the
//! one place it becomes a response (`respond`), and the
//! body wrappers the request path streams through.

pub mod accept;
pub mod admission;
pub mod body;
pub mod exchange;
pub mod forward;
pub mod listener;
pub mod meter;
pub mod outcome;
pub mod proxy;
pub mod refusal;
pub mod respond;
pub mod scrub;
pub mod spend;
pub mod stall;
