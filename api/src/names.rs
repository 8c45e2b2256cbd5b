//! What a name may be: topics, data keys, labels, token names and other strings that operators
//! and plugins choose and that later appear in listings, logs and terminals. One rule for all
//! (the server refuses such names; the CLI escapes the same characters in what it prints),
//! so that no caller can put a terminal escape, a line break or a bidi override into another
//! operator's screen (`ferry audit`, `ferry commands`) or a log line, nor make a name so long
//! that holding it costs the server real memory.

/// Why `text` cannot be a name of at most `max` bytes, if it cannot: empty, too long, or
/// holding a control character (ESC, BEL, CR, LF…), a bidi override or isolate (which reorder
/// what a terminal shows), or — unless `spaces` — whitespace.
pub fn check(text: &str, max: usize, spaces: bool) -> Result<(), String> {
    if text.is_empty() {
        return Err("it is empty".into());
    }
    if text.len() > max {
        return Err(format!(
            "it has {} bytes; at most {max} are allowed",
            text.len()
        ));
    }
    if let Some(c) = text
        .chars()
        .find(|&c| c.is_control() || is_bidi_control(c) || (!spaces && c.is_whitespace()))
    {
        return Err(format!(
            "it holds {}, which a name may not",
            match c {
                c if c.is_whitespace() && !c.is_control() => "a space".to_string(),
                c => format!("the character U+{:04X}", c as u32),
            }
        ));
    }
    Ok(())
}

/// The Unicode bidi formatting characters: embeddings, overrides and isolates, and the marks.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn names_refuse_escapes_line_breaks_bidi_and_length() {
        assert!(check("runtime.create", 128, false).is_ok());
        assert!(check("ferry/échéance-1", 128, false).is_ok());
        for bad in [
            "",
            "a\u{1b}[2J",
            "a\u{7}",
            "a\rb",
            "a\nb",
            "a\u{202E}b",
            "a\u{2066}b",
        ] {
            assert!(check(bad, 128, true).is_err(), "{bad:?}");
        }
        assert!(check("two words", 128, false).is_err());
        assert!(check("two words", 128, true).is_ok());
        let err = check(&"x".repeat(129), 128, false).unwrap_err();
        assert!(err.contains("129 bytes") && err.contains("128"), "{err}");
        assert!(check(&"é".repeat(64), 128, false).is_ok());
    }
}
