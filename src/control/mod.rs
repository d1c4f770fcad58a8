//! The control plane: the configuration (read, checked, compiled into a snapshot), reloads and
//! what triggers them, the admin port and its metrics, the listener's TLS.

pub mod admin;
pub mod config;
pub mod instance;
pub mod intercept;
pub mod limits;
pub mod metrics;
pub mod quarantine;
pub mod reload;
pub mod snapshot;
pub mod spend;
pub mod state;
pub mod suspensions;
pub mod telemetry;
pub mod tls;
pub mod watch;
