//! keyward: an egress proxy that holds the payments API's secret key so services do not.
//!
//! Request path: `server` (TLS, HTTP) → `proxy` (phases, access record) → `policy::decide`
//! (pure: `identity`, `canonical`, `catalog`, scope) → `upstream` (header rewrite, pooled TLS).

pub mod app;
pub mod audit;
pub mod control;
pub mod policy;
pub mod secrets;
pub mod serve;
pub mod text;
pub mod upstream;
