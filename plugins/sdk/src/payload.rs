//! Typed payloads: decoding a command's payload into a serde type by its content type, and
//! encoding a result the same way.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Command, Error};

/// The formats a payload can be decoded from, for messages about unsupported content types.
const READS: &str = match (cfg!(feature = "json"), cfg!(feature = "cbor")) {
    (true, true) => "JSON (application/json) or CBOR (application/cbor)",
    (true, false) => "JSON (application/json)",
    _ => "CBOR (application/cbor)",
};

impl Command {
    /// Decodes the payload by its content type: JSON for `application/json`, any `+json` type
    /// or no content type at all; CBOR for `application/cbor` or any `+cbor` type. Any other
    /// content type is an `invalid-input` error naming it.
    ///
    /// A payload that does not fit `T` is an `invalid-input` error carrying serde's message:
    /// which field is missing, or where a value has the wrong type and what was expected,
    /// e.g. ``at `items[2].count`: invalid type: string "x", expected u32``.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, Error> {
        match Format::of(self) {
            #[cfg(feature = "json")]
            Some(Format::Json) => self.json(),
            #[cfg(feature = "cbor")]
            Some(Format::Cbor) => self.cbor(),
            None => Err(Error::invalid_input(format!(
                "the payload's content type is `{}`, but this plugin reads {READS}; send one of those",
                self.content_type
            ))),
        }
    }

    /// Decodes the payload as JSON, whatever its declared content type. Errors as for
    /// [`decode`](Command::decode).
    #[cfg(feature = "json")]
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        from_json(&self.payload)
    }

    /// Decodes the payload as CBOR, whatever its declared content type. Errors as for
    /// [`decode`](Command::decode).
    #[cfg(feature = "cbor")]
    pub fn cbor<T: DeserializeOwned>(&self) -> Result<T, Error> {
        from_cbor(&self.payload)
    }
}

/// Encodes `value` as the result of `cmd`, in the format its payload came in: CBOR when the
/// payload was declared as CBOR, JSON otherwise. An encoding failure (a map with non-string
/// keys in JSON, a `Serialize` impl that fails) is a `failed` error.
pub fn respond<T: Serialize + ?Sized>(cmd: &Command, value: &T) -> Result<Vec<u8>, Error> {
    match Format::of(cmd).unwrap_or(Format::DEFAULT) {
        #[cfg(feature = "json")]
        Format::Json => to_json(value),
        #[cfg(feature = "cbor")]
        Format::Cbor => to_cbor(value),
    }
}

/// A payload format this build of the crate reads and writes.
enum Format {
    #[cfg(feature = "json")]
    Json,
    #[cfg(feature = "cbor")]
    Cbor,
}

impl Format {
    /// What a payload without a content type is taken to be.
    #[cfg(feature = "json")]
    const DEFAULT: Format = Format::Json;
    #[cfg(not(feature = "json"))]
    const DEFAULT: Format = Format::Cbor;

    /// The format of `cmd`'s payload by its content type, if this build reads it.
    fn of(cmd: &Command) -> Option<Format> {
        #[cfg(feature = "cbor")]
        if cmd.is_cbor() {
            return Some(Format::Cbor);
        }
        #[cfg(feature = "json")]
        if cmd.is_json() {
            return Some(Format::Json);
        }
        cmd.content_type
            .trim()
            .is_empty()
            .then_some(Format::DEFAULT)
    }
}

/// Encodes `value` as JSON. An encoding failure is a `failed` error.
#[cfg(feature = "json")]
pub fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value)
        .map_err(|e| Error::failed(format!("cannot encode the result as JSON: {e}")))
}

/// Encodes `value` as CBOR. An encoding failure is a `failed` error.
#[cfg(feature = "cbor")]
pub fn to_cbor<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out)
        .map_err(|e| Error::failed(format!("cannot encode the result as CBOR: {e:?}")))?;
    Ok(out)
}

/// `at `path`: ` before a message about a value inside the payload; nothing for the payload
/// itself, whose path serde_path_to_error writes as `.`.
fn at(path: &serde_path_to_error::Path) -> String {
    let path = path.to_string();
    if path == "." {
        String::new()
    } else {
        format!("at `{path}`: ")
    }
}

#[cfg(feature = "json")]
fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    use serde_json::error::Category;

    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let inner = e.inner();
        Error::invalid_input(match inner.classify() {
            Category::Data => format!(
                "the payload does not match what this plugin expects: {}{inner}",
                at(e.path())
            ),
            Category::Syntax | Category::Eof | Category::Io => {
                format!("the payload is not valid JSON: {inner}")
            }
        })
    })?;
    de.end()
        .map_err(|e| Error::invalid_input(format!("the payload is not valid JSON: {e}")))?;
    Ok(value)
}

#[cfg(feature = "cbor")]
fn from_cbor<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    use ciborium::de::Error as CborError;

    let mut rest = bytes;
    let decoded = ciborium::de::from_reader::<tracked::Tracked<T>, _>(&mut rest);
    let path = tracked::take_path();
    let tracked::Tracked(value) = decoded.map_err(|e| {
        Error::invalid_input(match e {
            CborError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                "the payload is not valid CBOR: it ends in the middle of a value".to_string()
            }
            CborError::Io(e) => format!("the payload is not valid CBOR: {e}"),
            CborError::Syntax(offset) => {
                format!("the payload is not valid CBOR: malformed at byte {offset}")
            }
            CborError::Semantic(offset, message) => format!(
                "the payload does not match what this plugin expects: {}{message}{}",
                path.as_ref().map(at).unwrap_or_default(),
                offset.map(|o| format!(" at byte {o}")).unwrap_or_default()
            ),
            CborError::RecursionLimitExceeded => {
                "the payload is nested too deeply to decode".to_string()
            }
        })
    })?;
    if !rest.is_empty() {
        return Err(Error::invalid_input(format!(
            "the payload is not valid CBOR: {} more bytes after the value",
            rest.len()
        )));
    }
    Ok(value)
}

/// Where in a CBOR payload decoding failed.
///
/// ciborium's deserializer type is private, so serde_path_to_error cannot wrap it from the
/// outside. Instead ciborium decodes a [`Tracked<T>`], whose `Deserialize` receives the
/// deserializer and wraps it; since an error must stay ciborium's own type, the path travels
/// beside it, in a thread-local that the caller takes right after decoding.
#[cfg(feature = "cbor")]
mod tracked {
    use std::cell::RefCell;

    use serde::{Deserialize, Deserializer};

    thread_local! {
        static PATH: RefCell<Option<serde_path_to_error::Path>> = const { RefCell::new(None) };
    }

    pub(super) struct Tracked<T>(pub T);

    impl<'de, T: Deserialize<'de>> Deserialize<'de> for Tracked<T> {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            serde_path_to_error::deserialize(deserializer)
                .map(Tracked)
                .map_err(|e| {
                    PATH.with(|p| *p.borrow_mut() = Some(e.path().clone()));
                    e.into_inner()
                })
        }
    }

    /// The path of the last failure, if decoding failed inside the value.
    pub(super) fn take_path() -> Option<serde_path_to_error::Path> {
        PATH.with(|p| p.borrow_mut().take())
    }
}

#[cfg(all(test, feature = "json", feature = "cbor"))]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, PartialEq, Deserialize, Serialize)]
    struct Order {
        name: String,
        items: Vec<Item>,
    }

    #[derive(Debug, PartialEq, Deserialize, Serialize)]
    struct Item {
        count: u32,
    }

    fn command(content_type: &str, payload: &[u8]) -> Command {
        Command {
            id: "1".into(),
            topic: "t".into(),
            payload: payload.to_vec(),
            content_type: content_type.into(),
        }
    }

    fn invalid_input<T: std::fmt::Debug>(result: Result<T, Error>) -> String {
        match result {
            Err(Error::InvalidInput(message)) => message,
            other => panic!("expected invalid-input, got {other:?}"),
        }
    }

    fn order() -> Order {
        Order {
            name: "a".into(),
            items: vec![Item { count: 1 }, Item { count: 2 }],
        }
    }

    #[test]
    fn decodes_json_by_content_type() {
        let json = br#"{"name": "a", "items": [{"count": 1}, {"count": 2}]}"#;
        for ct in ["application/json", "application/json; charset=utf-8", ""] {
            assert_eq!(
                command(ct, json).decode::<Order>().unwrap(),
                order(),
                "{ct}"
            );
        }
    }

    #[test]
    fn decodes_cbor_by_content_type() {
        let cbor = to_cbor(&order()).unwrap();
        for ct in ["application/cbor", "application/vnd.x+cbor"] {
            assert_eq!(
                command(ct, &cbor).decode::<Order>().unwrap(),
                order(),
                "{ct}"
            );
        }
    }

    #[test]
    fn refuses_other_content_types() {
        let message = invalid_input(command("text/plain", b"a").decode::<Order>());
        assert!(message.contains("`text/plain`"), "{message}");
        assert!(message.contains("application/json"), "{message}");
    }

    #[test]
    fn json_errors_name_the_field_and_the_expected_type() {
        let message = invalid_input(
            command(
                "application/json",
                br#"{"name": "a", "items": [{"count": 1}, {"count": "x"}]}"#,
            )
            .decode::<Order>(),
        );
        assert!(message.contains("at `items[1].count`"), "{message}");
        assert!(message.contains("expected u32"), "{message}");

        let message =
            invalid_input(command("application/json", br#"{"items": []}"#).decode::<Order>());
        assert!(message.contains("missing field `name`"), "{message}");
        assert!(!message.contains("at `"), "{message}");

        let message = invalid_input(command("application/json", b"{nope").decode::<Order>());
        assert!(message.contains("not valid JSON"), "{message}");

        let message = invalid_input(
            command("application/json", br#"{"name": "a", "items": []} 1"#).decode::<Order>(),
        );
        assert!(message.contains("not valid JSON"), "{message}");
    }

    #[test]
    fn cbor_errors_name_the_field_and_the_expected_type() {
        #[derive(Serialize)]
        struct BadItem {
            count: &'static str,
        }
        #[derive(Serialize)]
        struct BadOrder {
            name: &'static str,
            items: Vec<BadItem>,
        }
        let bad = to_cbor(&BadOrder {
            name: "a",
            items: vec![BadItem { count: "x" }],
        })
        .unwrap();
        let message = invalid_input(command("application/cbor", &bad).decode::<Order>());
        assert!(message.contains("at `items[0].count`"), "{message}");
        assert!(message.contains("expected integer"), "{message}");

        let good = to_cbor(&order()).unwrap();
        let message =
            invalid_input(command("application/cbor", &good[..good.len() - 1]).decode::<Order>());
        assert!(message.contains("ends in the middle"), "{message}");

        let mut trailing = good.clone();
        trailing.push(0);
        let message = invalid_input(command("application/cbor", &trailing).decode::<Order>());
        assert!(message.contains("1 more bytes"), "{message}");

        // A failure's path must not leak into the next decode's message.
        let message = invalid_input(command("application/cbor", &[0x01]).decode::<Order>());
        assert!(!message.contains("at `"), "{message}");
    }

    #[test]
    fn responds_in_the_payloads_format() {
        let json = respond(&command("application/json", b""), &order()).unwrap();
        assert_eq!(serde_json::from_slice::<Order>(&json).unwrap(), order());
        let json = respond(&command("", b""), &order()).unwrap();
        assert_eq!(serde_json::from_slice::<Order>(&json).unwrap(), order());
        let cbor = respond(&command("application/cbor", b""), &order()).unwrap();
        assert_eq!(
            command("application/cbor", &cbor).cbor::<Order>().unwrap(),
            order()
        );
    }

    #[test]
    fn encoding_failures_are_failed_errors() {
        let map = std::collections::BTreeMap::from([((1, 2), 3)]);
        assert!(matches!(to_json(&map), Err(Error::Failed(m)) if m.contains("JSON")));
    }
}
