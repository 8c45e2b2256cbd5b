//! Plain-text tables and human-readable figures for the CLI's listings.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::client::read;

/// `text` as a terminal may show it: control characters (ESC, BEL, CR…; also line breaks and
/// tabs unless `lines`) and bidi overrides become visible escapes such as `\u{1b}`. What
/// plugins, agents and other operators chose (topics, log lines, labels, audit paths) passes
/// through here before it reaches a terminal, so it cannot clear the screen, set the title,
/// move the cursor or fake a row.
pub fn terminal_safe(text: &str, lines: bool) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        (c.is_control() && !(lines && (c == '\n' || c == '\t')))
            || ferry_api::names::is_bidi_control(c)
    };
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Prints rows under a header, each column as wide as its widest cell; cells are
/// [`terminal_safe`].
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            row.iter()
                .map(|cell| terminal_safe(cell, false).into_owned())
                .collect()
        })
        .collect();
    let rows = rows.as_slice();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

/// Prints what the API answered: with `--json` as the server sent it, else `text` of it read
/// as a `T`.
pub fn print_answer<T: DeserializeOwned>(
    answer: Value,
    json: bool,
    text: impl FnOnce(T) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        println!("{}", terminal_safe(&text(read(answer)?), true));
    }
    Ok(())
}

/// Prints a list the API answered: with `--json` as the server sent it, else a table of one
/// `row` per element read as a `T`.
pub fn print_listing<T: DeserializeOwned>(
    list: Value,
    json: bool,
    header: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        let list: Vec<T> = read(list)?;
        let rows: Vec<Vec<String>> = list.iter().map(row).collect();
        print_table(header, &rows);
    }
    Ok(())
}

/// Bytes as KiB/MiB/GiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Microseconds as µs, ms or s.
pub fn micros(us: u64) -> String {
    match us {
        0..1_000 => format!("{us} µs"),
        1_000..1_000_000 => format!("{:.1} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_reach_the_terminal_only_as_visible_text() {
        assert_eq!(terminal_safe("runtime.create", false), "runtime.create");
        assert_eq!(
            terminal_safe("a\u{1b}[2Jb\u{7}", false),
            "a\\u{1b}[2Jb\\u{7}"
        );
        assert_eq!(terminal_safe("row\nfake", false), "row\\u{a}fake");
        assert_eq!(
            terminal_safe("two\nlines\tok\r", true),
            "two\nlines\tok\\u{d}"
        );
        assert_eq!(terminal_safe("abc\u{202e}def", true), "abc\\u{202e}def");
    }

    #[test]
    fn figures_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(micros(250), "250 µs");
        assert_eq!(micros(1_500), "1.5 ms");
        assert_eq!(micros(2_500_000), "2.50 s");
    }
}
