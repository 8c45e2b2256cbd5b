//! End-to-end tests: a real server and real agents over QUIC on loopback, one module per concern.

mod api;
mod commands;
mod data;
mod enroll;
mod faults;
mod fleet;
mod handshake;
mod plugins;
mod reconnect;
mod runtimes;
mod sdk;
mod tls;
