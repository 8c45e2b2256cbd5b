//! End-to-end tests: a real server and real agents over QUIC on loopback, one module per concern.

mod api;
mod bounds;
mod commands;
mod data;
mod enroll;
mod faults;
mod files;
mod fleet;
mod fuzz;
mod handshake;
mod hostile;
mod layering;
mod plugins;
mod reconnect;
mod recovery;
mod runtimes;
mod sdk;
mod tls;
