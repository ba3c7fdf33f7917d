//! The managed API key (PRODUCT.md, "The control plane and the data plane: a managed API
//! key"): a least-privilege project API key that the proxy mints through the Admin API,
//! holds in memory only, rotates on a lease of its own and deletes when done.
//!
//! - [`admin`]: the Admin API calls of a key's life (create, list, delete), bounded, and
//!   their failures told apart: refused or passing.
//! - [`lease`]: the pure decisions of a key's life: its name (which carries its lease end),
//!   when it is rotated, when an old one is deleted, which keys the janitor may delete, and
//!   how soon a refused creation is tried again.
//!
//! The engine that runs them (creation, rotation by overlap, replacement after a 401, the
//! janitor, deletion on shutdown) is built on these; issue 24 is under way.

pub mod admin;
pub mod lease;
