//! A `wasi:cli` program, a test fixture for component runtimes.
//!
//! `ticker [MILLIS]`: prints `tick N $GREETING` every MILLIS (default 100) forever.
//! `ticker exit CODE`: prints `exiting CODE` and exits with CODE.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("exit") {
        let code: i32 = args.get(2).and_then(|c| c.parse().ok()).unwrap_or(1);
        println!("exiting {code}");
        std::process::exit(code);
    }
    let every: u64 = args.get(1).and_then(|m| m.parse().ok()).unwrap_or(100);
    let greeting = std::env::var("GREETING").unwrap_or_default();
    for n in 0u64.. {
        println!("tick {n} {greeting}");
        std::thread::sleep(std::time::Duration::from_millis(every));
    }
}
