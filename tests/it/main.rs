//! The integration tests, one binary so that the suite links once: keyward in-process or as
//! a child process, real sockets, real TLS, real peers (OpenBao, Rack, the Stripe SDK).

mod common;

mod admin_records;
mod attack;
mod audit;
mod canary;
mod catalog;
mod cli;
mod config_errors;
mod connect_expand;
mod decide;
mod evidence;
mod fairness;
mod flood;
mod forward;
mod hostile;
mod identity;
mod kubernetes;
mod layers;
mod limits;
mod meter_events;
mod proxy;
mod rack;
mod ratelimit;
mod reload;
mod replicas;
mod revoke;
mod scrub;
mod shutdown;
mod spend;
mod stripe_sdk;
mod telemetry;
mod token_scan;
mod vault;
mod wrong_place;
