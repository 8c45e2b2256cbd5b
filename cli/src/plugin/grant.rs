//! `--grant` for `ferry plugin test`: on your own machine you are the policy, so you grant a
//! plugin what it needs to be tested, one capability per flag.

use std::path::PathBuf;

use ferry_manifest::{Access, CAPABILITIES, Capabilities, FsEntry, Kind};

/// Parses one `--grant`, as `ferry_manifest::CAPABILITIES` writes each capability's: `fs=PATH`
/// (read-only), `fs=PATH:rw`, `env=NAME`, `net=HOST:PORT`, `program=PATH`, or a switch's key
/// (`metrics`, `kv`…; `-` for `_` too).
pub fn parse_grant(text: &str) -> Result<Capabilities, String> {
    let mut caps = Capabilities::default();
    match text.split_once('=') {
        Some(("fs", spec)) => {
            let (path, access) = match spec.rsplit_once(':') {
                Some((path, "rw")) => (path, Access::ReadWrite),
                Some((path, "ro")) => (path, Access::ReadOnly),
                _ => (spec, Access::ReadOnly),
            };
            caps.filesystem.push(FsEntry {
                path: PathBuf::from(path),
                access,
            });
        }
        Some(("env", name)) => caps.env.push(name.to_string()),
        Some(("net", rule)) => caps.network.push(rule.parse()?),
        Some(("program", path)) => caps.programs.push(PathBuf::from(path)),
        None => match CAPABILITIES
            .iter()
            .find(|c| c.kind == Kind::Switch && c.flag == text.replace('-', "_"))
        {
            Some(switch) => *caps.switch_mut(switch.id).expect("a switch") = true,
            None => return Err(not_a_grant(text)),
        },
        _ => return Err(not_a_grant(text)),
    }
    caps.validate("--grant").map_err(|e| e.to_string())?;
    Ok(caps)
}

fn not_a_grant(text: &str) -> String {
    format!("'{text}' is not a grant: use {}", help())
}

/// Every `--grant` form, from the capability table.
pub fn help() -> String {
    let flags: Vec<&str> = CAPABILITIES.iter().map(|c| c.flag).collect();
    match flags.split_last() {
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// All `--grant`s together.
pub fn merge(grants: &[Capabilities]) -> Capabilities {
    let mut all = Capabilities::default();
    for g in grants {
        all.extend(g);
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_parse() {
        let all = merge(&[
            parse_grant("fs=/srv/data").unwrap(),
            parse_grant("fs=/tmp/x:rw").unwrap(),
            parse_grant("env=TZ").unwrap(),
            parse_grant("net=api.example.com:443").unwrap(),
            parse_grant("program=/bin/df").unwrap(),
            parse_grant("kv").unwrap(),
            parse_grant("request-data").unwrap(),
        ]);
        assert_eq!(all.filesystem[0].access, Access::ReadOnly);
        assert_eq!(all.filesystem[1].access, Access::ReadWrite);
        assert_eq!(all.filesystem[1].path, PathBuf::from("/tmp/x"));
        assert!(all.kv && all.request_data && !all.metrics);
        for bad in ["fs=data", "program=df", "net=nowhere", "sudo", "env="] {
            assert!(parse_grant(bad).is_err(), "{bad}");
        }
        let refused = parse_grant("sudo").unwrap_err();
        for capability in CAPABILITIES {
            assert!(refused.contains(capability.flag), "{refused}");
            if capability.kind == Kind::Switch {
                let granted = parse_grant(capability.flag).unwrap();
                assert_eq!(
                    granted.switch(capability.id),
                    Some(true),
                    "{}",
                    capability.key
                );
            }
        }
    }
}
