//! A plugin that misbehaves on purpose: a test fixture for the agent's plugin host.
//!
//! Each topic is one way a plugin can go wrong, so the host's tests can check that every one
//! ends only the command, with the right error, and that the agent goes on serving:
//!
//! | topic | what the plugin does | what the host should report |
//! |---|---|---|
//! | `fault.trap` | executes the wasm `unreachable` instruction | crashed (trap) |
//! | `fault.panic` | panics (with `panic = "abort"`, a trap after the message on stderr) | crashed |
//! | `fault.loop` | spins forever and never checks `cancelled()` | timed out at the deadline |
//! | `fault.sleep` | sleeps for an hour inside a host call | timed out at the deadline |
//! | `fault.fail` | returns `error.failed` | failed, with the message |
//! | `fault.memory` | allocates until allocation fails | crashed, naming the memory limit |
//! | `fault.cancel` | loops, checking `cancelled()`, and returns `error.cancelled` | cancelled |
//! | `fault.print` | writes 100 000 lines to stdout and some to stderr | success; a bounded log |
//! | `fault.nap` | sleeps for the milliseconds its payload names (text), then succeeds | success, late |
//!
//! It is built with the other plugins and embedded in `ferry-builtins` as a fixture; no agent
//! serves it unless a test loads it.

use std::hint::black_box;
use std::time::Duration;

use ferry_plugin::{Command, Error, Plugin};

struct Faulty;

impl Plugin for Faulty {
    fn handle(cmd: Command) -> Result<Vec<u8>, Error> {
        match cmd.topic.as_str() {
            "fault.trap" => trap(),
            "fault.panic" => panic!("faulty plugin panicked on purpose (command {})", cmd.id),
            "fault.loop" => spin(),
            "fault.sleep" => {
                std::thread::sleep(Duration::from_secs(3600));
                Err(Error::failed(
                    "woke up after an hour; the host should have ended this long ago",
                ))
            }
            "fault.nap" => {
                let text = String::from_utf8_lossy(&cmd.payload);
                let ms: u64 = text.trim().parse().map_err(|_| {
                    Error::invalid_input(format!(
                        "fault.nap takes a number of milliseconds, not '{text}'"
                    ))
                })?;
                std::thread::sleep(Duration::from_millis(ms));
                Ok(format!("napped {ms} ms").into_bytes())
            }
            "fault.fail" => Err(Error::failed("faulty plugin failed on purpose")),
            "fault.memory" => exhaust_memory(),
            "fault.cancel" => wait_for_cancel(),
            "fault.print" => {
                for i in 0..100_000 {
                    println!("stdout line {i}");
                }
                for i in 0..3 {
                    eprintln!("stderr line {i}");
                }
                Ok(b"printed".to_vec())
            }
            other => Err(Error::invalid_input(format!(
                "faulty has no topic '{other}'"
            ))),
        }
    }
}

fn trap() -> ! {
    #[cfg(target_arch = "wasm32")]
    core::arch::wasm32::unreachable();
    #[cfg(not(target_arch = "wasm32"))]
    std::process::abort();
}

fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        // black_box keeps the loop doing work the optimiser cannot remove.
        n = black_box(n.wrapping_add(1));
    }
}

fn exhaust_memory() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(black_box(vec![1u8; 1 << 20]));
    }
}

fn wait_for_cancel() -> Result<Vec<u8>, Error> {
    ferry_plugin::progress(0, "waiting to be cancelled");
    let mut checks: u64 = 0;
    loop {
        checks += 1;
        if ferry_plugin::cancelled() {
            ferry_plugin::info!("cancelled after {checks} checks");
            return Err(Error::Cancelled);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

ferry_plugin::export!(Faulty);
