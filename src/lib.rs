//! keyward: an egress proxy that holds the payments API's secret key so services do not.
//!
//! Request path: `serve::accept` and `serve::listener` (TLS, HTTP) → `serve::proxy` (phases,
//! the access record) → `policy::decide` (pure: the caller, the canonical request, the catalog,
//! the scope) → `upstream` (header rewrite, pooled TLS). `control` builds and swaps what they
//! run on; `audit` writes and reads the log. docs/architecture.md has the whole map.

pub mod app;
pub mod audit;
pub mod control;
pub mod policy;
pub mod secrets;
pub mod serve;
pub mod text;
pub mod upstream;
