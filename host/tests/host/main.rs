//! Integration tests of `ferry-host` as a crate of its own.

mod versions;
mod wit;
