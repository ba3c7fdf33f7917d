//! The managed API key (PRODUCT.md, "The control plane and the data plane: a managed API
//! key"): a least-privilege project API key that the proxy mints through the Admin API,
//! holds in memory only, rotates on a lease of its own and deletes when done.
//!
//! - [`admin`]: the Admin API calls of a key's life (create, list, delete), bounded, and
//!   their failures told apart: refused or passing.
//! - [`source`]: [`source::KeySource`], what requests, `/readyz`, `/status` and `/metrics`
//!   read.
//! - [`engine`]: [`engine::Keeper`], the loop that creates, rotates and deletes keys.
//! - [`lease`]: the pure rules of a key's name (which carries its lease end), which keys the
//!   janitor may delete and how soon a refused creation is tried again.
//!   (When a key is rotated and when a replaced one is deleted are [`engine::next_create`]'s and
//!   the keeper's, on the monotonic clock.)
//! - [`fleet`]: one key for a fleet through the shared cache (`token.shared_cache`).
//!
//! The request path reads [`source::KeySource`] (`crate::proxy`); `crate::app` wires the
//! keeper from `[api_key]`.

pub mod admin;
pub mod engine;
pub mod fleet;
pub mod lease;
pub mod source;
