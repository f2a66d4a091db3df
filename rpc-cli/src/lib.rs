//! The `rpc` command-line tool, and what it is built of: JSON to postcard and back through a
//! service's schema ([`json`]), and lock files that keep a service's wire format from changing
//! by accident ([`lockfile`]).
//!
//! ```text
//! rpc describe 127.0.0.1:7000                        # the service, as a Rust trait
//! rpc call 127.0.0.1:7000 add 2 3                    # prints 5; or '{"a": 2, "b": 3}'
//! rpc lock 127.0.0.1:7000 calc.lock.json             # writes the service's schema down
//! rpc check 127.0.0.1:7000 calc.lock.json            # fails on an incompatible change
//! ```

pub mod json;
pub mod lockfile;
