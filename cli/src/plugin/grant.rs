//! `--grant` for `ferry plugin test`: on your own machine you are the policy, so you grant a
//! plugin what it needs to be tested, one capability per flag.

use std::path::PathBuf;

use ferry_manifest::{Access, Capabilities, FsEntry};

/// Parses one `--grant`: `fs=PATH` (read-only), `fs=PATH:rw`, `env=NAME`, `net=HOST:PORT`,
/// `program=PATH`, `metrics`, `kv`, `request_data`, `runtimes` or `decommission`.
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
        None if text == "metrics" => caps.metrics = true,
        None if text == "kv" => caps.kv = true,
        None if text == "request_data" || text == "request-data" => caps.request_data = true,
        None if text == "runtimes" => caps.runtimes = true,
        None if text == "decommission" => caps.decommission = true,
        _ => {
            return Err(format!(
                "'{text}' is not a grant: use fs=PATH[:rw], env=NAME, net=HOST:PORT, program=PATH, metrics, kv, request_data, runtimes or decommission"
            ));
        }
    }
    caps.validate("--grant").map_err(|e| e.to_string())?;
    Ok(caps)
}

/// All `--grant`s together.
pub fn merge(grants: &[Capabilities]) -> Capabilities {
    let mut all = Capabilities::default();
    for g in grants {
        all.filesystem.extend(g.filesystem.iter().cloned());
        all.env.extend(g.env.iter().cloned());
        all.network.extend(g.network.iter().cloned());
        all.programs.extend(g.programs.iter().cloned());
        all.metrics |= g.metrics;
        all.kv |= g.kv;
        all.request_data |= g.request_data;
        all.runtimes |= g.runtimes;
        all.decommission |= g.decommission;
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
    }
}
