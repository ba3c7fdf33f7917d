//! Integration tests over real sockets against the in-process fake Pinecone. One test
//! binary; each module is one area of behaviour.

#[path = "tests/support.rs"]
mod support;

#[path = "tests/binary.rs"]
mod binary;
#[path = "tests/config_files.rs"]
mod config_files;
#[path = "tests/control_plane.rs"]
mod control_plane;
#[path = "tests/data_plane.rs"]
mod data_plane;
#[path = "tests/errors.rs"]
mod errors;
#[path = "tests/fake_api.rs"]
mod fake_api;
#[path = "tests/faults.rs"]
mod faults;
#[path = "tests/forwarding.rs"]
mod forwarding;
#[path = "tests/key_fleet.rs"]
mod key_fleet;
#[path = "tests/lifecycle.rs"]
mod lifecycle;
#[path = "tests/limits.rs"]
mod limits;
#[path = "tests/managed_key.rs"]
mod managed_key;
#[path = "tests/monitoring.rs"]
mod monitoring;
#[path = "tests/ops.rs"]
mod ops;
#[path = "tests/policy.rs"]
mod policy;
#[path = "tests/pool.rs"]
mod pool;
#[path = "tests/quota.rs"]
mod quota;
#[path = "tests/replay.rs"]
mod replay;
#[path = "tests/rotation.rs"]
mod rotation;
#[path = "tests/shared_cache.rs"]
mod shared_cache;
#[path = "tests/soak.rs"]
mod soak;
#[path = "tests/tls.rs"]
mod tls;
#[path = "tests/tokens.rs"]
mod tokens;
