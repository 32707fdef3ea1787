//! What every provider adapter shares: [`store`], the `SecretStore` trait in
//! the clouds' own terms, and [`names`], the reversible, collision-free
//! mapping of gateway paths to each cloud's secret names, with the clouds'
//! name and value limits. [`limits`] and [`cache`] wrap any store with
//! client-side rate limits and retries, and a read-through cache.

pub mod cache;
pub mod capabilities;
pub mod endpoints;
pub mod keys;
pub mod limits;
pub mod messages;
pub mod names;
pub mod settings;
pub mod store;
// The provider contract suite every adapter's tests run.
#[cfg(feature = "testing")]
pub mod testing;

pub use keys::{KeyService, SealSettings};
pub use names::{Cloud, NameCodec, NameError};
pub use store::{
    CloudValue, Deletion, Error, Listed, Page, Precondition, Result, SecretInfo, SecretRead, SecretStore, Selector,
    VersionChange, VersionInfo, VersionState,
};
