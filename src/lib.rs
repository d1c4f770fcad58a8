//! keyward: an egress proxy that holds the payments API's secret key so services do not.
//!
//! Request path: `server` (TLS, HTTP) → `proxy` (phases, access record) → `policy::decide`
//! (pure: `identity`, `canonical`, `catalog`, scope) → `upstream` (header rewrite, pooled TLS).

pub mod admin;
pub mod admission;
pub mod app;
pub mod audit;
pub mod body;
pub mod canonical;
pub mod catalog;
pub mod config;
pub mod error;
pub mod expand;
pub mod identity;
pub mod metrics;
pub mod multipart;
pub mod params;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod secret;
pub mod server;
pub mod snapshot;
pub mod stall;
pub mod tls;
pub mod token;
pub mod upstream;
pub mod vault;
pub mod watch;
