//! The managed API key (PRODUCT.md, "The control plane and the data plane: a managed API
//! key"): a least-privilege project API key that the proxy mints through the Admin API,
//! holds in memory only, rotates on a lease of its own and deletes when done.
//!
//! - [`admin`]: the Admin API calls of a key's life (create, list, delete), bounded, and
//!   their failures told apart: refused or passing.
//! - [`engine`]: [`engine::KeySource`], what requests read, and [`engine::Keeper`], the loop
//!   that creates, rotates and deletes keys.
//! - [`lease`]: the pure decisions of a key's life: its name (which carries its lease end),
//!   when it is rotated, when an old one is deleted, which keys the janitor may delete, and
//!   how soon a refused creation is tried again.
//!
//! Still to come (issue 24, under way): the janitor, fleets through Redis, `[api_key]`, and
//! the wiring into the request path, `/status` and the metrics.

pub mod admin;
pub mod engine;
pub mod lease;
