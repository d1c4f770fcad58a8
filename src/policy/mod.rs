//! The policy: who is calling, may they make this call, and where does it go. Pure: no
//! sockets, clocks, files or async runtime; everything it needs is in its arguments, so it is
//! table-tested, benchmarked and used as it is by `keyward explain`.

mod caller;
pub mod canonical;
pub mod catalog;
mod decide;
pub mod expand;
pub mod exposure;
pub mod facts;
pub mod failure;
pub mod forward;
pub mod identity;
mod model;
pub mod multipart;
pub mod params;
pub mod spend;
pub mod token_format;

pub use caller::{ProxyRefusal, proxy_identify};
pub use decide::{
    Decision, Route, Ruling, Verdict, authorize, check_form, decide, expansion_failure, exposed_in,
    secret_mode,
};
pub use facts::RequestFacts;
pub use failure::Failure;
pub use model::{Accounts, Level, MAIN_UPSTREAM, Mode, Policy, Quarantine, Service, Token, TokenRef};
