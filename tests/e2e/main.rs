//! End-to-end tests: a real server and real agents over QUIC on loopback, one module per concern.

mod commands;
mod data;
mod faults;
mod handshake;
mod plugins;
mod reconnect;
mod runtimes;
mod sdk;
mod tls;
