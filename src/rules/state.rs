//! The state file of `jvm_route_state`: the runtime marks and weights of server lines, as plain
//! text an operator can read and edit. One record per server line that has any, keyed as the
//! zone keys its records (upstream, server, srun_id, backup or not, rank among identical
//! lines), with what the configuration said of the line when the mark was set (so that a
//! changed configuration is followed as a reload follows it, [`marks::carried`]).
//!
//! ```text
//! # jvm_route runtime state: written by nginx at each control action (jvm_route_state).
//! # upstream  server  srun_id  primary|backup  rank  marks  weight  configured  configured_weight
//! jvm_route_state 1
//! tomcats <TAB> 10.0.0.2:8080 <TAB> tomcat02 <TAB> primary <TAB> 0 <TAB> drain <TAB> - <TAB> - <TAB> 1
//! tomcats <TAB> 10.0.0.3:8080 <TAB> tomcat03 <TAB> primary <TAB> 0 <TAB> - <TAB> 3 <TAB> - <TAB> 1
//! ```
//!
//! (`<TAB>`: a tab.) Fields are separated by tabs (names in nginx's configuration hold no whitespace); `marks` is
//! `-` or a comma-separated list of `drain`, `down`, `undrain`; `weight` is `-` or the runtime
//! weight; `configured` is `-` or a comma-separated list of `drain`, `down`.

use thiserror::Error;

use super::marks::{Configured, RT_DOWN, RT_DRAIN, RT_UNDRAIN};

/// The format this code writes and reads.
pub const FORMAT: u32 = 1;

/// One server line's runtime state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The upstream's name.
    pub upstream: String,
    /// The server as configured (`10.0.0.1:8080`, `a.example:8080`).
    pub server: String,
    /// Its srun_id (empty: none).
    pub srun_id: String,
    /// A `backup` server.
    pub backup: bool,
    /// Its rank among identical lines of the upstream.
    pub rank: u32,
    /// The runtime marks ([`marks`](super::marks)'s `RT_*` bits).
    pub marks: u64,
    /// The runtime weight, if one is set.
    pub weight: Option<u64>,
    /// What the configuration said of the line.
    pub configured: Configured,
    /// The configured weight the runtime weight was set against.
    pub configured_weight: u64,
}

/// Why a state file is not used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StateError {
    /// No `jvm_route_state N` line before the records.
    #[error("line {0}: no \"jvm_route_state {FORMAT}\" line before the records")]
    NoHeader(usize),
    /// A format this code does not know (a newer module wrote it).
    #[error("line {0}: format {1} is not known to this module (it reads format {FORMAT})")]
    Format(usize, String),
    /// A record that does not parse.
    #[error("line {0}: {1}")]
    Record(usize, &'static str),
    /// The file does not end with a newline: it was cut short.
    #[error("line {0}: the file is truncated (its last line has no end)")]
    Truncated(usize),
}

const HEADER: &str = "# jvm_route runtime state: written by nginx at each control action \
(jvm_route_state).\n# upstream  server  srun_id  primary|backup  rank  marks  weight  configured  \
configured_weight\n";

/// The file's text for `records`.
pub fn write(records: &[Record]) -> String {
    let mut out = String::from(HEADER);
    out.push_str(&format!("jvm_route_state {FORMAT}\n"));
    for r in records {
        let marks = list(&[
            (r.marks & RT_DRAIN != 0, "drain"),
            (r.marks & RT_DOWN != 0, "down"),
            (r.marks & RT_UNDRAIN != 0, "undrain"),
        ]);
        let configured = list(&[(r.configured.drain, "drain"), (r.configured.down, "down")]);
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            r.upstream,
            r.server,
            if r.srun_id.is_empty() { "-" } else { &r.srun_id },
            if r.backup { "backup" } else { "primary" },
            r.rank,
            marks,
            r.weight.map_or("-".to_string(), |w| w.to_string()),
            configured,
            r.configured_weight
        ));
    }
    out
}

fn list(flags: &[(bool, &str)]) -> String {
    let on: Vec<&str> = flags.iter().filter(|(on, _)| *on).map(|(_, name)| *name).collect();
    if on.is_empty() {
        "-".into()
    } else {
        on.join(",")
    }
}

/// The records of a state file's text; any error rejects the whole file.
pub fn read(text: &str) -> Result<Vec<Record>, StateError> {
    let mut records = Vec::new();
    let mut header = false;
    let lines: Vec<&str> = text.split('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        let n = i + 1;
        let last = i + 1 == lines.len();
        if last {
            if !line.is_empty() {
                return Err(StateError::Truncated(n));
            }
            break;
        }
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(version) = line.strip_prefix("jvm_route_state ") {
            if version.trim() != FORMAT.to_string() {
                return Err(StateError::Format(n, version.trim().chars().take(20).collect()));
            }
            header = true;
            continue;
        }
        if !header {
            return Err(StateError::NoHeader(n));
        }
        records.push(record(line).map_err(|why| StateError::Record(n, why))?);
    }
    if !header && !records.is_empty() {
        return Err(StateError::NoHeader(1));
    }
    Ok(records)
}

fn record(line: &str) -> Result<Record, &'static str> {
    let f: Vec<&str> = line.split('\t').collect();
    if f.len() != 9 {
        return Err("a record has 9 fields separated by tabs");
    }
    if f[..5].iter().any(|s| s.is_empty()) {
        return Err("an empty field");
    }
    let backup = match f[3] {
        "primary" => false,
        "backup" => true,
        _ => return Err("field 4 is \"primary\" or \"backup\""),
    };
    let rank = f[4].parse().map_err(|_| "field 5 (rank) is not a number")?;
    let mut marks = 0;
    if f[5] != "-" {
        for m in f[5].split(',') {
            marks |= match m {
                "drain" => RT_DRAIN,
                "down" => RT_DOWN,
                "undrain" => RT_UNDRAIN,
                _ => return Err("field 6 (marks) is \"-\" or drain, down, undrain"),
            };
        }
    }
    let weight = match f[6] {
        "-" => None,
        w => Some(
            w.parse::<u64>()
                .ok()
                .filter(|w| (1..=1000).contains(w))
                .ok_or("field 7 (weight) is \"-\" or 1 to 1000")?,
        ),
    };
    let mut configured = Configured::default();
    if f[7] != "-" {
        for m in f[7].split(',') {
            match m {
                "drain" => configured.drain = true,
                "down" => configured.down = true,
                _ => return Err("field 8 (configured) is \"-\" or drain, down"),
            }
        }
    }
    let configured_weight =
        f[8].parse().map_err(|_| "field 9 (configured weight) is not a number")?;
    Ok(Record {
        upstream: f[0].to_owned(),
        server: f[1].to_owned(),
        srun_id: if f[2] == "-" { String::new() } else { f[2].to_owned() },
        backup,
        rank,
        marks,
        weight,
        configured,
        configured_weight,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Vec<Record> {
        vec![
            Record {
                upstream: "tomcats".into(),
                server: "10.0.0.2:8080".into(),
                srun_id: "tomcat02".into(),
                backup: false,
                rank: 0,
                marks: RT_DRAIN,
                weight: None,
                configured: Configured::default(),
                configured_weight: 1,
            },
            Record {
                upstream: "tomcats".into(),
                server: "b.example:8080".into(),
                srun_id: String::new(),
                backup: true,
                rank: 1,
                marks: RT_DOWN | RT_UNDRAIN,
                weight: Some(3),
                configured: Configured { drain: true, down: false },
                configured_weight: 2,
            },
        ]
    }

    #[test]
    fn written_records_read_back() {
        let text = write(&sample());
        assert!(text.contains("tomcats\t10.0.0.2:8080\ttomcat02\tprimary\t0\tdrain\t-\t-\t1\n"));
        assert!(text.contains("tomcats\tb.example:8080\t-\tbackup\t1\tdown,undrain\t3\tdrain\t2\n"));
        assert_eq!(read(&text), Ok(sample()));
        assert_eq!(read(""), Ok(vec![]));
    }

    #[test]
    fn a_bad_file_is_refused_whole_with_its_line() {
        let good = write(&sample());
        let cut = &good[..good.len() - 5];
        assert!(matches!(read(cut), Err(StateError::Truncated(_))));
        let newer = good.replace("jvm_route_state 1", "jvm_route_state 2");
        assert_eq!(read(&newer), Err(StateError::Format(3, "2".into())));
        let bad = good.replace("\tdrain\t-\t-\t1", "\tdrained\t-\t-\t1");
        assert!(matches!(read(&bad), Err(StateError::Record(4, _))), "{:?}", read(&bad));
        let no_header = "tomcats\t10.0.0.2:8080\ttomcat02\tprimary\t0\tdrain\t-\t-\t1\n";
        assert_eq!(read(no_header), Err(StateError::NoHeader(1)));
        let weight = good.replace("\t3\tdrain\t2", "\t0\tdrain\t2");
        assert!(read(&weight).unwrap_err().to_string().contains("1 to 1000"));
        assert!(read("\u{0}\u{1}garbage\n").is_err());
    }

    proptest! {
        /// Any text: no panic; what reads back writes back to the same records.
        #[test]
        fn any_text_is_safe(text in "\\PC{0,300}") {
            if let Ok(records) = read(&text) {
                prop_assert_eq!(read(&write(&records)), Ok(records));
            }
        }

        #[test]
        fn records_round_trip(
            marks in 0u64..8,
            weight in proptest::option::of(1u64..=1000),
            rank in 0u32..5,
            backup: bool,
            drain: bool,
            down: bool,
        ) {
            let r = Record {
                upstream: "u".into(),
                server: "s:1".into(),
                srun_id: "t1".into(),
                backup,
                rank,
                marks,
                weight,
                configured: Configured { drain, down },
                configured_weight: 5,
            };
            prop_assert_eq!(read(&write(std::slice::from_ref(&r))), Ok(vec![r]));
        }
    }
}
