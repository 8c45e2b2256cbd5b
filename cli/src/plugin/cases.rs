//! The cases file of `ferry plugin test`: many commands to run through one plugin, each with
//! what it should produce. The format is described in [`FORMAT`], which the command's help
//! shows.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use ferry_protocol::message::Outcome;
use ferry_server::RunStatus;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use toml::Spanned;

use super::run::{Ran, content_type_is, json_eq, output_as_json};

/// The cases file format, for `ferry plugin test --help`.
pub const FORMAT: &str = r#"CASES FILE
  A TOML file of [[case]] tables, run in order, each in a fresh instance of the plugin:

    [defaults]                     # optional: applies to every case that does not say
    topic = "greet"
    timeout = "5s"                 # default: --timeout, else 30s

    [[case]]
    name = "greets by name"        # required, unique
    topic = "greet"                # required here or in [defaults]
    payload = { name = "ferry" }   # a TOML value, sent as JSON (as CBOR when content_type
                                   # is application/cbor; as the text itself for other types)
    # payload_text = '{"name": null}'  # or: text sent as it is (JSON with null, malformed JSON)
    # payload_file = "input.bin"       # or: a file's bytes, relative to the cases file
    # content_type = "application/json"  # default: application/json with payload or
                                         # payload_text, none otherwise
    # cancel_after = "100ms"       # cancel the command this long after it starts
    outcome = "succeeded"          # default; or invalid-input, denied, failed, cancelled,
                                   # timed-out, crashed, unknown-topic, rejected
    output = { greeting = "hello, ferry!" }  # the output equals this, as JSON (a CBOR
                                   # output is compared as JSON; numbers compare by value)
    # output_json = '{"a": null}'  # or: equal to this JSON text
    # output_text = "hello"        # or: equal to this text exactly
    # output_contains = "hello"    # the output, as text, contains this
    # error_contains = "missing field `name`"  # the error message contains this
    # logs_contain = ["greeting"]  # each string is in some log line (or stdout/stderr)
    # progress_reaches = 100       # the highest progress reported is at least this

  Output: one line per case, "ok" or "FAIL" with what differed, then the line
  "N passed, N failed"; the exit status is 0 only when every case passed."#;

/// How long a case may run when neither the case, `[defaults]` nor `--timeout` says.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// One case, ready to run.
#[derive(Debug, Clone)]
pub struct Case {
    /// Its name, unique in the file.
    pub name: String,
    /// The line of its `[[case]]` header.
    pub line: usize,
    /// The topic to send the command on.
    pub topic: String,
    /// The payload bytes, encoded.
    pub payload: Vec<u8>,
    /// The payload's content type; may be empty.
    pub content_type: String,
    /// How long it may run; `None` for the command line's timeout.
    pub timeout: Option<Duration>,
    /// Cancel the command this long after it starts.
    pub cancel_after: Option<Duration>,
    /// What it should produce.
    pub expect: Expect,
}

/// What a case should produce.
#[derive(Debug, Clone, PartialEq)]
pub struct Expect {
    /// How the command should end.
    pub outcome: RunStatus,
    /// What the output should equal.
    pub output: Option<ExpectedOutput>,
    /// Text the output should contain.
    pub output_contains: Option<String>,
    /// Text the error message should contain.
    pub error_contains: Option<String>,
    /// Texts that should each appear in some log line.
    pub logs_contain: Vec<String>,
    /// The least highest progress the plugin should report.
    pub progress_reaches: Option<u8>,
}

/// An exact expected output.
#[derive(Debug, Clone, PartialEq)]
pub enum ExpectedOutput {
    /// Equal as JSON values.
    Json(Value),
    /// Equal as text.
    Text(String),
}

/// How a case should end: a run's status, as `ferry run` prints it, among those a plugin's
/// run can end in ([`RunStatus::is_outcome`]); the one list is `RunStatus::ALL`.
fn outcome<'de, D: Deserializer<'de>>(d: D) -> Result<Option<RunStatus>, D::Error> {
    let Some(name) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    let outcomes = || RunStatus::ALL.iter().filter(|s| s.is_outcome());
    match outcomes().find(|s| s.name() == name) {
        Some(status) => Ok(Some(*status)),
        None => {
            let names: Vec<&str> = outcomes().map(|s| s.name()).collect();
            Err(serde::de::Error::custom(format!(
                "unknown outcome `{name}`; expected one of {}",
                names.join(", ")
            )))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    defaults: Defaults,
    #[serde(default, rename = "case")]
    cases: Vec<Spanned<CaseDef>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Defaults {
    topic: Option<String>,
    content_type: Option<String>,
    #[serde(default, deserialize_with = "duration")]
    timeout: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseDef {
    name: String,
    topic: Option<String>,
    payload: Option<toml::Value>,
    payload_text: Option<String>,
    payload_file: Option<String>,
    content_type: Option<String>,
    #[serde(default, deserialize_with = "duration")]
    timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    cancel_after: Option<Duration>,
    #[serde(default, deserialize_with = "outcome")]
    outcome: Option<RunStatus>,
    output: Option<toml::Value>,
    output_json: Option<String>,
    output_text: Option<String>,
    output_contains: Option<String>,
    error_contains: Option<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    logs_contain: Vec<String>,
    progress_reaches: Option<u8>,
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    humantime::parse_duration(&text).map(Some).map_err(|e| {
        serde::de::Error::custom(format!(
            "{text:?} is not a duration ({e}); write e.g. \"5s\" or \"250ms\""
        ))
    })
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    match toml::Value::deserialize(d)? {
        toml::Value::String(s) => Ok(vec![s]),
        toml::Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                toml::Value::String(s) => Ok(s),
                other => Err(serde::de::Error::custom(format!(
                    "expected strings, found {}",
                    other.type_str()
                ))),
            })
            .collect(),
        other => Err(serde::de::Error::custom(format!(
            "expected a string or an array of strings, found {}",
            other.type_str()
        ))),
    }
}

/// Reads and checks the cases file at `path`.
pub fn load(path: &Path) -> Result<Vec<Case>> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the cases file {}; give the path of a TOML file of [[case]] tables \
             (see `ferry plugin test --help`)",
            path.display()
        )
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    parse(&text, dir, &path.display().to_string())
}

/// Parses a cases file's `text`; `dir` is where `payload_file` paths start, `file` names the
/// file in messages.
pub fn parse(text: &str, dir: &Path, file: &str) -> Result<Vec<Case>> {
    let parsed: File = toml::from_str(text).map_err(|e| {
        anyhow!(
            "{file} is not a valid cases file (see `ferry plugin test --help` for the format):\n{}",
            e.to_string().trim_end()
        )
    })?;
    if parsed.cases.is_empty() {
        bail!(
            "{file} has no cases; add at least one [[case]] table with a name and a topic \
             (see `ferry plugin test --help`)"
        );
    }
    let mut names = HashSet::new();
    let mut cases = Vec::with_capacity(parsed.cases.len());
    for spanned in parsed.cases {
        let line = text[..spanned.span().start.min(text.len())]
            .matches('\n')
            .count()
            + 1;
        let def = spanned.into_inner();
        let at = format!("{file}:{line}: case {:?}", def.name);
        if def.name.trim().is_empty() {
            bail!("{file}:{line}: a case has an empty name; give each case a unique name");
        }
        if !names.insert(def.name.clone()) {
            bail!("{at}: another case has the same name; give each case a unique name");
        }
        cases.push(case(def, &parsed.defaults, dir, line).map_err(|e| anyhow!("{at}: {e}"))?);
    }
    Ok(cases)
}

/// Resolves one case against the defaults, or says what is wrong with it.
fn case(def: CaseDef, defaults: &Defaults, dir: &Path, line: usize) -> Result<Case> {
    let Some(topic) = def.topic.or_else(|| defaults.topic.clone()) else {
        bail!("no topic; set `topic` in the case, or in a [defaults] table");
    };
    let given = [
        def.payload.is_some(),
        def.payload_text.is_some(),
        def.payload_file.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        bail!("give only one of `payload`, `payload_text` and `payload_file`");
    }
    let content_type = def
        .content_type
        .or_else(|| defaults.content_type.clone())
        .unwrap_or_else(|| {
            if def.payload.is_some() || def.payload_text.is_some() {
                "application/json".to_string()
            } else {
                String::new()
            }
        });
    let payload = if let Some(value) = &def.payload {
        encode_payload(value, &content_type)?
    } else if let Some(text) = def.payload_text {
        text.into_bytes()
    } else if let Some(file) = &def.payload_file {
        let path = dir.join(file);
        std::fs::read(&path).with_context(|| {
            format!(
                "cannot read `payload_file` {} (relative paths start at the cases file's folder)",
                path.display()
            )
        })?
    } else {
        Vec::new()
    };

    let outcome = def.outcome.unwrap_or(RunStatus::Succeeded);
    let exact = [
        def.output.is_some(),
        def.output_json.is_some(),
        def.output_text.is_some(),
    ];
    if exact.iter().filter(|g| **g).count() > 1 {
        bail!("give only one of `output`, `output_json` and `output_text`");
    }
    let output = if let Some(value) = def.output {
        Some(ExpectedOutput::Json(toml_to_json(value)))
    } else if let Some(text) = def.output_json {
        Some(ExpectedOutput::Json(serde_json::from_str(&text).map_err(
            |e| anyhow!("`output_json` is not valid JSON: {e}"),
        )?))
    } else {
        def.output_text.map(ExpectedOutput::Text)
    };
    let expects_output = output.is_some() || def.output_contains.is_some();
    if expects_output && outcome != RunStatus::Succeeded {
        bail!(
            "expects an output but outcome = {:?}; only a command that succeeds has an output",
            outcome.name()
        );
    }
    if def.error_contains.is_some() && outcome == RunStatus::Succeeded {
        bail!(
            "has `error_contains` but expects to succeed; set `outcome` to the failure you \
             expect (invalid-input, failed, crashed, …)"
        );
    }
    if def.progress_reaches.is_some_and(|p| p > 100) {
        bail!("`progress_reaches` is a percentage, at most 100");
    }
    Ok(Case {
        name: def.name,
        line,
        topic,
        payload,
        content_type,
        timeout: def.timeout.or(defaults.timeout),
        cancel_after: def.cancel_after,
        expect: Expect {
            outcome,
            output,
            output_contains: def.output_contains,
            error_contains: def.error_contains,
            logs_contain: def.logs_contain,
            progress_reaches: def.progress_reaches,
        },
    })
}

/// Encodes a `payload` value for its content type: JSON, CBOR, or the string itself.
fn encode_payload(value: &toml::Value, content_type: &str) -> Result<Vec<u8>> {
    let json = toml_to_json(value.clone());
    if content_type.trim().is_empty() || content_type_is(content_type, "application/json", "+json")
    {
        return Ok(serde_json::to_vec(&json)?);
    }
    if content_type_is(content_type, "application/cbor", "+cbor") {
        let mut out = Vec::new();
        ciborium::into_writer(&json, &mut out)
            .map_err(|e| anyhow!("cannot encode `payload` as CBOR: {e}"))?;
        return Ok(out);
    }
    match value {
        toml::Value::String(s) => Ok(s.clone().into_bytes()),
        other => bail!(
            "`payload` is {} {}, which cannot be sent as {content_type}; give a string, \
             or use payload_text or payload_file",
            if other.type_str().starts_with(['a', 'i']) {
                "an"
            } else {
                "a"
            },
            other.type_str()
        ),
    }
}

/// A TOML value as JSON; dates and times become their TOML text.
fn toml_to_json(value: toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Array(items.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(table) => Value::Object(
            table
                .into_iter()
                .map(|(k, v)| (k, toml_to_json(v)))
                .collect(),
        ),
    }
}

/// What differs between what `case` expects and how it ran; empty when it passed.
pub fn check(case: &Case, ran: &Ran) -> Vec<String> {
    let expect = &case.expect;
    let mut problems = Vec::new();
    if expect.outcome != RunStatus::from_outcome(&ran.outcome) {
        problems.push(format!(
            "expected {}, got {}",
            expect.outcome.name(),
            ran.outcome
        ));
    }
    if ran.outcome == Outcome::Succeeded {
        let text = String::from_utf8_lossy(&ran.output);
        match &expect.output {
            Some(ExpectedOutput::Json(want)) => {
                match output_as_json(&ran.output, &case.content_type) {
                    Some(got) if json_eq(&got, want) => {}
                    Some(got) => problems.push(format!(
                        "output is {}, expected {}",
                        brief(&got.to_string()),
                        brief(&want.to_string())
                    )),
                    None => problems.push(format!(
                        "output is not JSON ({}), expected {}",
                        brief(&text),
                        brief(&want.to_string())
                    )),
                }
            }
            Some(ExpectedOutput::Text(want)) if *text != **want => problems.push(format!(
                "output is {:?}, expected {:?}",
                brief(&text),
                brief(want)
            )),
            _ => {}
        }
        if let Some(want) = &expect.output_contains
            && !text.contains(want.as_str())
        {
            problems.push(format!(
                "output {:?} does not contain {want:?}",
                brief(&text)
            ));
        }
    }
    if let Some(want) = &expect.error_contains {
        let error = ran.outcome.to_string();
        if ran.outcome == Outcome::Succeeded || !error.contains(want.as_str()) {
            problems.push(format!(
                "error {:?} does not contain {want:?}",
                brief(&error)
            ));
        }
    }
    for want in &expect.logs_contain {
        if !ran
            .logs
            .iter()
            .any(|(_, line)| line.contains(want.as_str()))
        {
            problems.push(format!("no log line contains {want:?}"));
        }
    }
    if let Some(want) = expect.progress_reaches {
        let highest = ran.progress.iter().map(|(p, _)| *p).max();
        if highest.is_none_or(|h| h < want) {
            problems.push(match highest {
                Some(h) => format!("progress reached {h}%, expected at least {want}%"),
                None => format!("no progress reported, expected at least {want}%"),
            });
        }
    }
    problems
}

/// Shortens `text` for a one-line message.
fn brief(text: &str) -> String {
    const MAX: usize = 120;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use ferry_host::{InvokeStats, LogLevel};
    use serde_json::json;

    use super::*;

    fn parse_ok(text: &str) -> Vec<Case> {
        parse(text, Path::new("."), "cases.toml").unwrap_or_else(|e| panic!("{e:#}"))
    }

    fn parse_err(text: &str) -> String {
        format!(
            "{:#}",
            parse(text, Path::new("."), "cases.toml").expect_err("should not parse")
        )
    }

    fn ran(outcome: Outcome, output: &[u8]) -> Ran {
        Ran {
            outcome,
            output: output.to_vec(),
            logs: vec![(LogLevel::Info, "echo: 17 bytes".into())],
            progress: vec![(0, "received".into()), (100, "done".into())],
            stats: InvokeStats::default(),
        }
    }

    #[test]
    fn parses_a_full_file() {
        let cases = parse_ok(
            r#"
[defaults]
topic = "echo"
timeout = "5s"

[[case]]
name = "json"
payload = { hello = "ferry", n = [1, 2.5, true] }
output = { hello = "ferry", n = [1, 2.5, true] }
logs_contain = "bytes"
progress_reaches = 100

[[case]]
name = "text"
topic = "other"
payload = "hi"
content_type = "text/plain"
timeout = "250ms"
output_text = "hi"

[[case]]
name = "raw"
payload_text = '{"a": null}'
output_json = '{"a": null}'
output_contains = "null"

[[case]]
name = "bad"
payload_text = "{"
outcome = "invalid-input"
error_contains = "not JSON"
logs_contain = ["a", "b"]
cancel_after = "1s"
"#,
        );
        assert_eq!(cases.len(), 4);
        let json_case = &cases[0];
        assert_eq!((json_case.name.as_str(), json_case.line), ("json", 6));
        assert_eq!(json_case.topic, "echo");
        assert_eq!(json_case.content_type, "application/json");
        assert_eq!(
            serde_json::from_slice::<Value>(&json_case.payload).unwrap(),
            json!({"hello": "ferry", "n": [1, 2.5, true]})
        );
        assert_eq!(json_case.timeout, Some(Duration::from_secs(5)));
        assert_eq!(json_case.expect.outcome, RunStatus::Succeeded);
        assert_eq!(json_case.expect.logs_contain, ["bytes"]);
        assert_eq!(json_case.expect.progress_reaches, Some(100));

        let text = &cases[1];
        assert_eq!(text.topic, "other");
        assert_eq!(text.payload, b"hi");
        assert_eq!(text.timeout, Some(Duration::from_millis(250)));
        assert_eq!(text.expect.output, Some(ExpectedOutput::Text("hi".into())));

        assert_eq!(cases[2].payload, br#"{"a": null}"#);
        assert_eq!(
            cases[2].expect.output,
            Some(ExpectedOutput::Json(json!({"a": null})))
        );

        let bad = &cases[3];
        assert_eq!(bad.expect.outcome, RunStatus::InvalidInput);
        assert_eq!(bad.expect.logs_contain, ["a", "b"]);
        assert_eq!(bad.cancel_after, Some(Duration::from_secs(1)));
    }

    #[test]
    fn encodes_cbor_payloads() {
        let cases = parse_ok(
            r#"
[[case]]
name = "cbor"
topic = "t"
content_type = "application/cbor"
payload = { name = "ferry" }
"#,
        );
        let value: Value = ciborium::from_reader(cases[0].payload.as_slice()).unwrap();
        assert_eq!(value, json!({"name": "ferry"}));
    }

    #[test]
    fn content_type_defaults_to_none_without_a_payload() {
        let cases = parse_ok("[[case]]\nname = \"a\"\ntopic = \"t\"\n");
        assert_eq!(cases[0].content_type, "");
        assert!(cases[0].payload.is_empty());
    }

    #[test]
    fn reads_payload_files_next_to_the_cases_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("in.bin"), [0xff, 0x00]).unwrap();
        let text = "[[case]]\nname = \"a\"\ntopic = \"t\"\npayload_file = \"in.bin\"\n";
        let cases = parse(text, dir.path(), "cases.toml").unwrap();
        assert_eq!(cases[0].payload, [0xff, 0x00]);
        let err = format!(
            "{:#}",
            parse(
                &text.replace("in.bin", "missing.bin"),
                dir.path(),
                "cases.toml"
            )
            .unwrap_err()
        );
        assert!(err.contains("cases.toml:1: case \"a\""), "{err}");
        assert!(err.contains("missing.bin"), "{err}");
    }

    #[test]
    fn syntax_and_field_errors_name_the_line_and_the_field() {
        let err = parse_err("[[case]]\nname = \"a\"\ntopic = \"t\"\noutcom = \"failed\"\n");
        assert!(err.contains("line 4"), "{err}");
        assert!(err.contains("unknown field `outcom`"), "{err}");

        let err = parse_err("[[case]]\nname = \"a\"\ntopic = \"t\"\noutcome = \"sucess\"\n");
        assert!(err.contains("line 4"), "{err}");
        assert!(err.contains("unknown outcome `sucess`"), "{err}");
        assert!(err.contains("invalid-input"), "{err}");

        let err = parse_err("[[case]]\nname = \"a\"\ntopic = \"t\"\ntimeout = \"soon\"\n");
        assert!(err.contains("line 4"), "{err}");
        assert!(err.contains("not a duration"), "{err}");

        let err = parse_err("[[case]]\ntopic = \"t\"\n");
        assert!(err.contains("missing field `name`"), "{err}");

        let err = parse_err("[[case]\nname = 1");
        assert!(err.contains("line 1"), "{err}");

        let err = parse_err("[[case]]\nname = \"a\"\ntopic = \"t\"\nlogs_contain = [1]\n");
        assert!(err.contains("expected strings"), "{err}");
    }

    #[test]
    fn inconsistent_cases_are_refused_with_their_line() {
        for (text, expected) in [
            ("", "has no cases"),
            (
                "[[case]]\nname = \"a\"\n",
                "cases.toml:1: case \"a\": no topic",
            ),
            (
                "[[case]]\nname = \"a\"\ntopic = \"t\"\n\n[[case]]\nname = \"a\"\ntopic = \"t\"\n",
                "cases.toml:5: case \"a\": another case has the same name",
            ),
            (
                "[[case]]\nname = \"a\"\ntopic = \"t\"\npayload = 1\npayload_text = \"1\"\n",
                "only one of `payload`",
            ),
            (
                "[[case]]\nname = \"a\"\ntopic = \"t\"\noutput = 1\noutput_text = \"1\"\n",
                "only one of `output`",
            ),
            (
                "[[case]]\nname = \"a\"\ntopic = \"t\"\nerror_contains = \"x\"\n",
                "expects to succeed",
            ),
            (
                "[[case]]\nname = \"a\"\ntopic = \"t\"\noutcome = \"failed\"\noutput = 1\n",
                "expects an output",
            ),
            (
                "[[case]]\nname = \"a\"\ntopic = \"t\"\noutput_json = \"{\"\n",
                "`output_json` is not valid JSON",
            ),
            (
                "[[case]]\nname = \"a\"\ntopic = \"t\"\ncontent_type = \"text/plain\"\npayload = [1]\n",
                "`payload` is an array",
            ),
            (
                "[[case]]\nname = \"a\"\ntopic = \"t\"\nprogress_reaches = 101\n",
                "at most 100",
            ),
        ] {
            let err = parse_err(text);
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn checks_outcome_output_logs_and_progress() {
        let cases = parse_ok(
            r#"
[defaults]
topic = "t"

[[case]]
name = "ok"
output = { n = 1 }
logs_contain = "17 bytes"
progress_reaches = 100

[[case]]
name = "fails"
outcome = "failed"
error_contains = "disk full"
"#,
        );
        assert_eq!(
            check(&cases[0], &ran(Outcome::Succeeded, br#"{"n": 1.0}"#)),
            Vec::<String>::new()
        );
        let problems = check(&cases[0], &ran(Outcome::Succeeded, br#"{"n": 2}"#));
        assert_eq!(problems, [r#"output is {"n":2}, expected {"n":1}"#]);
        let mut quiet = ran(Outcome::Succeeded, br#"{"n": 1}"#);
        quiet.logs.clear();
        quiet.progress.truncate(1);
        assert_eq!(
            check(&cases[0], &quiet),
            [
                r#"no log line contains "17 bytes""#,
                "progress reached 0%, expected at least 100%"
            ]
        );
        let problems = check(&cases[0], &ran(Outcome::Crashed("trap".into()), b""));
        assert_eq!(problems, ["expected succeeded, got crashed: trap"]);

        assert!(
            check(
                &cases[1],
                &ran(Outcome::Failed("the disk full, sorry".into()), b"")
            )
            .is_empty()
        );
        let problems = check(&cases[1], &ran(Outcome::Failed("no route".into()), b""));
        assert_eq!(
            problems,
            [r#"error "failed: no route" does not contain "disk full""#]
        );
    }

    #[test]
    fn compares_cbor_output_as_json() {
        let cases = parse_ok(
            "[[case]]\nname = \"a\"\ntopic = \"t\"\ncontent_type = \"application/cbor\"\npayload = 1\noutput = { ok = true }\n",
        );
        let mut cbor = Vec::new();
        ciborium::into_writer(&json!({"ok": true}), &mut cbor).unwrap();
        assert!(check(&cases[0], &ran(Outcome::Succeeded, &cbor)).is_empty());
    }
}
