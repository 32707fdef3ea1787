//! What every provider adapter shares. So far: [`names`], the reversible,
//! collision-free mapping of gateway paths to each cloud's secret names,
//! and the clouds' name and value limits. (The `SecretStore` trait and the
//! adapters come with issue 4's next steps.)

pub mod names;

pub use names::{Cloud, NameCodec, NameError};
