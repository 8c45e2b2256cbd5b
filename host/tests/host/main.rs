//! Integration tests of `ferry-host` as a crate of its own.

mod layering;
mod versions;
mod wit;
