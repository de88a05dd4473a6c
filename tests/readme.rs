//! The README is the module's reference, and this keeps it true against the source: every
//! directive of the command table has its entry, every parameter, control action, variable,
//! status format, JSON field and Prometheus series that the code accepts or produces is named
//! where a user looks for it, every link of the README and of `docs/` leads somewhere, and the
//! file map of `docs/architecture.md` names the files that exist. What is documented is read
//! from the source files themselves (the byte strings the parsers match), so a parameter added
//! to a parser without documentation fails here. No nginx needed.
//!
//! Each test lists everything it found missing, one line each.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Fails with every problem found, one per line.
fn report(what: &str, problems: &[String]) {
    assert!(problems.is_empty(), "{what}:\n  {}", problems.join("\n  "));
}

// ---------------------------------------------------------------------------------------------
// Rust source: the code with comments and literals blanked out, and the literals it contains.

/// A string literal of a source file: `"..."` or `b"..."` (raw or not), its value unescaped.
struct Literal {
    start: usize,
    byte: bool,
    value: String,
}

/// A Rust source file: its code with comments, literals and `#[cfg(test)]` modules blanked
/// (byte offsets kept), and its string literals outside those modules.
struct Source {
    path: String,
    code: Vec<u8>,
    literals: Vec<Literal>,
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

impl Source {
    fn read(path: &str) -> Source {
        let text = read(path);
        let s = text.as_bytes();
        let n = s.len();
        let mut code = vec![b' '; n];
        let mut literals = Vec::new();
        let mut i = 0;
        while i < n {
            let c = s[i];
            let prev_ident = i > 0 && is_ident(s[i - 1]);
            if c == b'/' && s.get(i + 1) == Some(&b'/') {
                while i < n && s[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            if c == b'/' && s.get(i + 1) == Some(&b'*') {
                let mut depth = 0;
                while i < n {
                    if s[i..].starts_with(b"/*") {
                        depth += 1;
                        i += 2;
                    } else if s[i..].starts_with(b"*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                continue;
            }
            // String literals: "..", b"..", c"..", r"..", br#".."#, ...
            if !prev_ident && (c == b'"' || matches!(c, b'b' | b'c' | b'r')) {
                let mut j = i;
                let byte = s[j] == b'b';
                if matches!(s[j], b'b' | b'c') {
                    j += 1;
                }
                let raw = s.get(j) == Some(&b'r');
                if raw {
                    j += 1;
                }
                let mut hashes = 0;
                while raw && s.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if s.get(j) == Some(&b'"') {
                    let start = i;
                    let (value, end) = if raw {
                        let close: Vec<u8> = std::iter::once(b'"')
                            .chain(std::iter::repeat_n(b'#', hashes))
                            .collect();
                        let from = j + 1;
                        let at = s[from..]
                            .windows(close.len())
                            .position(|w| w == close.as_slice())
                            .unwrap_or_else(|| panic!("{path}: unterminated raw string"));
                        (text[from..from + at].to_string(), from + at + close.len())
                    } else {
                        unescape(&text, j + 1)
                    };
                    literals.push(Literal { start, byte, value });
                    i = end;
                    continue;
                }
            }
            if c == b'\'' || (c == b'b' && !prev_ident && s.get(i + 1) == Some(&b'\'')) {
                let q = if c == b'b' { i + 1 } else { i };
                if s.get(q + 1) == Some(&b'\\') {
                    // An escaped character: up to the next quote after the escape.
                    let mut j = q + 3;
                    while j < n && s[j] != b'\'' {
                        j += 1;
                    }
                    i = j + 1;
                    continue;
                }
                let width = text[q + 1..].chars().next().map_or(1, char::len_utf8);
                if s.get(q + 1 + width) == Some(&b'\'') {
                    i = q + 2 + width;
                    continue;
                }
                // A lifetime.
            }
            code[i] = c;
            i += 1;
        }
        let mut source = Source { path: path.to_string(), code, literals };
        source.drop_test_modules();
        source
    }

    /// Blanks `#[cfg(test)] mod name { ... }` and drops its literals.
    fn drop_test_modules(&mut self) {
        let mut from = 0;
        while let Some(at) = find(&self.code[from..], b"#[cfg(test)]").map(|p| p + from) {
            from = at + 1;
            let rest = &self.code[at..];
            let (Some(brace), semi) = (find(rest, b"{"), find(rest, b";")) else { continue };
            let is_mod = find(&rest[..brace], b"mod ").is_some();
            if !is_mod || semi.is_some_and(|s| s < brace) {
                continue;
            }
            let open = at + brace;
            let close = self.matching_brace(open);
            self.code[at..=close].fill(b' ');
            self.literals.retain(|l| l.start < at || l.start > close);
        }
    }

    fn matching_brace(&self, open: usize) -> usize {
        let mut depth = 0;
        for (i, &b) in self.code.iter().enumerate().skip(open) {
            match b {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        return i;
                    }
                }
                _ => {}
            }
        }
        panic!("{}: unbalanced braces", self.path)
    }

    /// The byte range of the body of `fn name`, if the file defines it.
    fn fn_body(&self, name: &str) -> Option<(usize, usize)> {
        let pattern = format!("fn {name}");
        let mut from = 0;
        while let Some(at) = find(&self.code[from..], pattern.as_bytes()).map(|p| p + from) {
            from = at + 1;
            let after = self.code.get(at + pattern.len()).copied();
            let before_ok = at == 0 || !is_ident(self.code[at - 1]);
            if !before_ok || !matches!(after, Some(b'(' | b'<')) {
                continue;
            }
            let mut parens = 0i32;
            for i in at..self.code.len() {
                match self.code[i] {
                    b'(' => parens += 1,
                    b')' => parens -= 1,
                    b'{' if parens == 0 => return Some((i, self.matching_brace(i))),
                    b';' if parens == 0 => break,
                    _ => {}
                }
            }
        }
        None
    }

    /// The names of the functions of this file that the code in `range` calls.
    fn calls_in(&self, (start, end): (usize, usize)) -> BTreeSet<String> {
        let code = &self.code[start..end];
        let mut names = BTreeSet::new();
        let mut i = 0;
        while i < code.len() {
            if is_ident(code[i]) && (i == 0 || !is_ident(code[i - 1])) {
                let mut j = i;
                while j < code.len() && is_ident(code[j]) {
                    j += 1;
                }
                let mut k = j;
                while k < code.len() && code[k].is_ascii_whitespace() {
                    k += 1;
                }
                let name = String::from_utf8_lossy(&code[i..j]).to_string();
                if code.get(k) == Some(&b'(') && self.fn_body(&name).is_some() {
                    names.insert(name);
                }
                i = j;
            } else {
                i += 1;
            }
        }
        names
    }

    /// The literals of `fn name` and of every function of this file that it calls, directly or
    /// not, each with the function it is in. Fails if the file has no `fn name`.
    fn literals_of(&self, name: &str) -> Vec<(&Literal, String)> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![name.to_string()];
        let mut out = Vec::new();
        while let Some(f) = todo.pop() {
            if !seen.insert(f.clone()) {
                continue;
            }
            let Some(range) = self.fn_body(&f) else {
                panic!(
                    "{} has no `fn {f}`: tests/readme.rs reads what the parser accepts from \
                     it; name the function that does now",
                    self.path
                )
            };
            for l in &self.literals {
                if l.start >= range.0 && l.start <= range.1 {
                    out.push((l, f.clone()));
                }
            }
            todo.extend(self.calls_in(range));
        }
        out
    }

    /// The byte-string literals (`b"..."`) of `fn name` and the functions it calls.
    fn byte_strings_of(&self, name: &str) -> Vec<(String, String)> {
        let mut seen = BTreeSet::new();
        let found: Vec<(String, String)> = self
            .literals_of(name)
            .into_iter()
            .filter(|(l, _)| l.byte && seen.insert(l.value.clone()))
            .map(|(l, f)| (l.value.clone(), f))
            .collect();
        assert!(
            !found.is_empty(),
            "{}: no byte-string literal in `fn {name}` or what it calls: tests/readme.rs reads \
             what it accepts from them",
            self.path
        );
        found
    }

    /// The code right before a literal, without spaces.
    fn before(&self, l: &Literal) -> String {
        let start = l.start.saturating_sub(16);
        String::from_utf8_lossy(&self.code[start..l.start]).split_whitespace().collect()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Unescapes a (non-raw) string literal whose contents start at `from`; returns the value and
/// the offset after the closing quote.
fn unescape(text: &str, from: usize) -> (String, usize) {
    let chars: Vec<(usize, char)> =
        text[from..].char_indices().map(|(i, c)| (from + i, c)).collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let (at, c) = chars[i];
        i += 1;
        if c == '"' {
            return (out, at + 1);
        }
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some(&(_, escape)) = chars.get(i) else { break };
        i += 1;
        match escape {
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            '0' => out.push('\0'),
            'x' => {
                let hex: String = chars.iter().skip(i).take(2).map(|&(_, c)| c).collect();
                i += 2;
                out.push(u8::from_str_radix(&hex, 16).map_or('?', char::from));
            }
            'u' => {
                let code: String = chars
                    .iter()
                    .skip(i)
                    .map(|&(_, c)| c)
                    .take_while(|&c| c != '}')
                    .filter(|&c| c != '{')
                    .collect();
                while i < chars.len() && chars[i].1 != '}' {
                    i += 1;
                }
                i += 1;
                out.push(
                    u32::from_str_radix(&code, 16).ok().and_then(char::from_u32).unwrap_or('?'),
                );
            }
            // A line continuation: the next line's leading whitespace is skipped.
            '\n' => {
                while i < chars.len() && chars[i].1.is_whitespace() {
                    i += 1;
                }
            }
            other => out.push(other),
        }
    }
    panic!("unterminated string literal")
}

// ---------------------------------------------------------------------------------------------
// Markdown.

/// Whether a line opens or closes a fenced code block.
fn is_fence(line: &str) -> bool {
    let t = line.trim_start();
    t.starts_with("```") || t.starts_with("~~~")
}

/// The lines of `md` outside fenced code blocks, with their line numbers (from 1).
fn prose_lines(md: &str) -> Vec<(usize, &str)> {
    let mut inside = false;
    let mut out = Vec::new();
    for (i, line) in md.lines().enumerate() {
        if is_fence(line) {
            inside = !inside;
            continue;
        }
        if !inside {
            out.push((i + 1, line));
        }
    }
    out
}

/// The fenced code blocks of `md`: their info string (`nginx`, `sh`, ...) and their text.
fn fenced_blocks(md: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in md.lines() {
        if is_fence(line) {
            match current.take() {
                Some(block) => blocks.push(block),
                None => {
                    let info = line.trim_start().trim_start_matches(['`', '~']).trim().to_string();
                    current = Some((info, String::new()));
                }
            }
            continue;
        }
        if let Some((_, text)) = current.as_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    blocks
}

/// The headings of `md` outside code blocks: level and text as written.
fn headings(md: &str) -> Vec<(usize, String)> {
    prose_lines(md)
        .into_iter()
        .filter_map(|(_, line)| {
            let level = line.bytes().take_while(|&b| b == b'#').count();
            let text = line.get(level..)?;
            (level > 0 && level <= 6 && text.starts_with(' ')).then(|| (level, text.trim().into()))
        })
        .collect()
}

/// A heading's text as rendered: no code marks, emphasis or link targets.
fn rendered(heading: &str) -> String {
    let mut out = String::new();
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match (after.find("]("), after.find(')')) {
            (Some(close), Some(end)) if close < end => {
                out.push_str(&after[..close]);
                rest = &after[end + 1..];
            }
            _ => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.replace(['`', '*'], "")
}

/// GitHub's anchor for a heading: lower case, spaces to `-`, punctuation other than `-` and
/// `_` dropped.
fn slug(heading: &str) -> String {
    rendered(heading)
        .trim()
        .to_lowercase()
        .chars()
        .filter(|&c| c.is_alphanumeric() || c == '-' || c == '_' || c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor of `md`, as GitHub numbers repeated headings (`name`, `name-1`, ...).
fn anchors(md: &str) -> BTreeSet<String> {
    let mut count: HashMap<String, usize> = HashMap::new();
    let mut out = BTreeSet::new();
    for (_, text) in headings(md) {
        let base = slug(&text);
        let n = count.entry(base.clone()).or_insert(0);
        out.insert(if *n == 0 { base.clone() } else { format!("{base}-{n}") });
        *n += 1;
    }
    out
}

/// The part of `md` under the first heading of `level` whose rendered text is `title` (or,
/// with `prefix`, begins with it), up to the next heading of that level or a higher one.
fn section<'a>(md: &'a str, level: usize, title: &str, prefix: bool) -> Option<&'a str> {
    let mut inside = false;
    let mut start = None;
    let mut offset = 0;
    for line in md.split_inclusive('\n') {
        let here = offset;
        offset += line.len();
        if is_fence(line) {
            inside = !inside;
            continue;
        }
        if inside {
            continue;
        }
        let hashes = line.bytes().take_while(|&b| b == b'#').count();
        if hashes == 0 || hashes > 6 || !line[hashes..].starts_with(' ') {
            continue;
        }
        match start {
            Some(s) if hashes <= level => return Some(&md[s..here]),
            Some(_) => {}
            None => {
                let text = rendered(line[hashes..].trim());
                let hit = if prefix { text.starts_with(title) } else { text == title };
                if hashes == level && hit {
                    start = Some(here);
                }
            }
        }
    }
    start.map(|s| &md[s..])
}

/// The inline code spans of the prose of `md` (fenced blocks left out), across line breaks.
fn code_spans(md: &str) -> Vec<String> {
    let prose: Vec<&str> = prose_lines(md).into_iter().map(|(_, l)| l).collect();
    let text = prose.join("\n");
    let b = text.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'`' {
            i += 1;
            continue;
        }
        let ticks = b[i..].iter().take_while(|&&c| c == b'`').count();
        let open = i + ticks;
        let mut j = open;
        let mut close = None;
        while j < b.len() {
            if b[j] == b'`' {
                let run = b[j..].iter().take_while(|&&c| c == b'`').count();
                if run == ticks {
                    close = Some(j);
                    break;
                }
                j += run;
            } else {
                j += 1;
            }
        }
        match close {
            Some(c) => {
                spans.push(text[open..c].replace('\n', " "));
                i = c + ticks;
            }
            None => i = open,
        }
    }
    spans
}

/// Whether `term` stands in one of `spans` as a whole: not glued to a word before it, nor, if
/// it ends in a letter or digit, to one after it (`up` is not found in `upstream`; `srun_id=`
/// is found in `srun_id=name`).
fn in_spans(spans: &[String], term: &str) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let open_end = term.chars().last().is_some_and(|c| !c.is_alphanumeric());
    spans.iter().any(|span| {
        span.match_indices(term).any(|(at, _)| {
            let before = span[..at].chars().last().is_none_or(|c| !word(c));
            let after = open_end || span[at + term.len()..].chars().next().is_none_or(|c| !word(c));
            before && after
        })
    })
}

fn readme() -> String {
    read("README.md")
}

fn required_section<'a>(md: &'a str, level: usize, title: &str, prefix: bool) -> &'a str {
    section(md, level, title, prefix).unwrap_or_else(|| {
        panic!(
            "README.md has no heading {} {title}{}",
            "#".repeat(level),
            if prefix { "..." } else { "" }
        )
    })
}

// ---------------------------------------------------------------------------------------------
// The command table.

/// nginx's own directives that the module sees first and passes on; only `server` takes
/// parameters of the module's.
const NGINX_DIRECTIVES: [&str; 6] =
    ["server", "keepalive", "least_conn", "hash", "ip_hash", "random"];

/// Each directive of `src/lib.rs`'s command table, with its handler (`file`, `fn`) where the
/// table names one.
fn commands() -> Vec<(String, Option<(String, String)>)> {
    let lib = read("src/lib.rs");
    let start = lib.find("static mut COMMANDS").expect("src/lib.rs: no COMMANDS table");
    let end = start + lib[start..].find("];").expect("src/lib.rs: COMMANDS table not closed");
    let table = &lib[start..end];
    let marker = "ngx_string!(\"";
    let mut out = Vec::new();
    let parts: Vec<&str> = table.split(marker).skip(1).collect();
    for part in parts {
        let name = part[..part.find('"').expect("directive name")].to_string();
        // The handler: the first `conf::...::cmd_...` path before the next directive.
        let handler = part.find("conf::").map(|at| {
            let path: String = part[at..]
                .chars()
                .take_while(|&c| c.is_alphanumeric() || c == '_' || c == ':')
                .collect();
            let mut segments: Vec<&str> = path.split("::").collect();
            let function = segments.pop().expect("handler name").to_string();
            let module = segments.join("/");
            let file = if repo().join(format!("src/{module}.rs")).exists() {
                format!("src/{module}.rs")
            } else {
                format!("src/{module}/mod.rs")
            };
            (file, function)
        });
        out.push((name, handler));
    }
    assert!(out.len() >= 4, "src/lib.rs: too few directives read from COMMANDS: {out:?}");
    out
}

/// Whether a directive's handler (or what it calls in its file) matches any byte string: a
/// handler that matches none passes its arguments on untouched (`keepalive`).
fn takes_parameters(handler: &Option<(String, String)>) -> bool {
    handler.as_ref().is_some_and(|(file, function)| {
        Source::read(file).literals_of(function).iter().any(|(l, _)| l.byte)
    })
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[test]
fn every_directive_has_a_reference_entry() {
    let md = readme();
    let directives = required_section(&md, 2, "Directives", false);
    let mut problems = Vec::new();
    for (name, handler) in commands() {
        if NGINX_DIRECTIVES.contains(&name.as_str()) && !takes_parameters(&handler) {
            continue;
        }
        let Some(entry) = section(directives, 3, &name, false) else {
            problems.push(format!("no \"### {name}\" under \"## Directives\""));
            continue;
        };
        for field in ["**Syntax:**", "**Default:**", "**Context:**"] {
            if !entry.contains(field) {
                problems.push(format!("### {name}: no {field}"));
            }
        }
        let syntax = entry.lines().find(|l| l.starts_with("**Syntax:**")).unwrap_or_default();
        if !syntax.contains(&format!("`{name} ")) && !syntax.contains(&format!("`{name};")) {
            problems.push(format!("### {name}: the syntax line does not begin with `{name}`"));
        }
        let example = fenced_blocks(entry).into_iter().any(|(info, text)| {
            info == "nginx"
                && text.lines().any(|l| {
                    let l = l.trim_start();
                    l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name};"))
                })
        });
        if !example {
            problems.push(format!("### {name}: no ```nginx example with a `{name}` line"));
        }
    }
    report("README.md, Directives", &problems);
}

#[test]
fn every_parameter_the_parsers_accept_is_documented() {
    let md = readme();
    let directives = required_section(&md, 2, "Directives", false);
    let mut problems = Vec::new();
    for (name, handler) in commands() {
        if !takes_parameters(&handler) {
            continue;
        }
        let Some((file, function)) = handler else { continue };
        let Some(entry) = section(directives, 3, &name, false) else {
            problems.push(format!("no \"### {name}\" under \"## Directives\""));
            continue;
        };
        let spans = code_spans(entry);
        for (term, parser) in Source::read(&file).byte_strings_of(&function) {
            if !in_spans(&spans, &term) {
                problems.push(format!(
                    "### {name}: `{term}` (accepted by fn {parser} in {file}) is not named in a \
                     code span"
                ));
            }
        }
    }
    report("README.md, parameters the parsers accept but the Directives section omits", &problems);
}

#[test]
fn every_control_action_and_argument_is_documented() {
    let md = readme();
    let actions = required_section(&md, 3, "Control actions", false);
    let spans = code_spans(actions);
    let mut problems = Vec::new();
    let control = Source::read("src/status/control.rs");
    for (term, function) in control.byte_strings_of("control") {
        if !in_spans(&spans, &term) {
            problems.push(format!(
                "`{term}` (matched by fn {function} in src/status/control.rs) is not named under \
                 \"### Control actions\""
            ));
        }
    }
    report("README.md, control actions", &problems);
}

#[test]
fn every_variable_is_in_the_variables_table() {
    let md = readme();
    let variables = Source::read("src/variables.rs").byte_strings_of("add_variables");
    let mut problems = Vec::new();
    for (name, _) in variables {
        let row = format!("| `${name}` |");
        if !md.lines().any(|l| l.starts_with(&row)) {
            problems.push(format!("${name} (registered in src/variables.rs) has no row `{row}`"));
        }
    }
    report("README.md, variables", &problems);
}

/// The counter names of the status page (`COUNTERS` in src/status/mod.rs).
fn counter_names() -> Vec<String> {
    let status = Source::read("src/status/mod.rs");
    let text = String::from_utf8_lossy(&status.code).to_string();
    let start = text.find("const COUNTERS").expect("src/status/mod.rs: no COUNTERS");
    let end = start + text[start..].find("];").expect("COUNTERS not closed");
    let names: Vec<String> = status
        .literals
        .iter()
        .filter(|l| l.start > start && l.start < end && !l.byte)
        .map(|l| l.value.clone())
        .filter(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .collect();
    assert!(!names.is_empty(), "src/status/mod.rs: no counter names in COUNTERS");
    names
}

/// The names in a string literal that begin with `prefix` (`[a-z_]`), with `{name}` expanded
/// to each counter name.
fn names_in(value: &str, prefix: &str, counters: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for (at, _) in value.match_indices(prefix) {
        if at > 0 && value[..at].chars().last().is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &value[at..];
        let mut end =
            rest.find(|c: char| !(c.is_ascii_lowercase() || c == '_')).unwrap_or(rest.len());
        if rest[end..].starts_with("{name}") {
            let tail_start = end + "{name}".len();
            let tail = rest[tail_start..]
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .map_or(rest.len(), |e| tail_start + e);
            for counter in counters {
                out.push(rest[..tail].replace("{name}", counter));
            }
            continue;
        }
        while end > 0 && rest[..end].ends_with('_') {
            end -= 1;
        }
        if end > prefix.len() {
            out.push(rest[..end].to_string());
        }
    }
    out
}

#[test]
fn status_formats_fields_and_metrics_are_documented() {
    let md = readme();
    let operations = required_section(&md, 2, "Operations", true);
    let spans = code_spans(operations);
    let counters = counter_names();
    let mut problems = Vec::new();

    // Formats: what `fn handler` compares `format` with (`Some(b"json")`).
    let status = Source::read("src/status/mod.rs");
    let body = status.fn_body("handler").expect("src/status/mod.rs: no fn handler");
    let formats: Vec<&Literal> = status
        .literals
        .iter()
        .filter(|l| l.byte && l.start > body.0 && l.start < body.1)
        .filter(|l| status.before(l).ends_with("Some(") || status.before(l).ends_with("Some(&"))
        .collect();
    assert!(formats.len() >= 4, "src/status/mod.rs: the formats were not found in fn handler");
    for l in formats {
        let term = format!("format={}", l.value);
        if !in_spans(&spans, &term) {
            problems.push(format!("`?{term}` (src/status/mod.rs) is not named"));
        }
    }

    let render = Source::read("src/status/render.rs");
    // JSON fields: `"name":` in the strings of the JSON functions, and the counters.
    let mut fields = BTreeSet::new();
    for function in ["json", "json_server"] {
        for (l, _) in render.literals_of(function) {
            for (at, _) in l.value.match_indices('"') {
                let rest = &l.value[at + 1..];
                let end = rest.find(|c: char| !(c.is_ascii_lowercase() || c == '_'));
                if let Some(end) = end.filter(|&e| e > 0 && rest[e..].starts_with("\":")) {
                    fields.insert(rest[..end].to_string());
                }
            }
        }
    }
    fields.extend(counters.iter().cloned());
    for field in fields {
        if !in_spans(&spans, &format!("\"{field}\"")) {
            problems.push(format!("JSON field \"{field}\" (src/status/render.rs) is not named"));
        }
    }

    // Prometheus series, and the states of the state gauge.
    let mut series = BTreeSet::new();
    for (l, _) in render.literals_of("prometheus") {
        series.extend(names_in(&l.value, "jvm_route_", &counters));
    }
    assert!(series.len() >= 5, "src/status/render.rs: too few series read: {series:?}");
    for name in series {
        if !in_spans(&spans, &name) {
            problems.push(format!("Prometheus series {name} (src/status/render.rs) is not named"));
        }
    }
    let text = String::from_utf8_lossy(&render.code).to_string();
    let start = text.find("const STATES").expect("src/status/render.rs: no STATES");
    let end = start + text[start..].find(';').expect("STATES not closed");
    for l in render.literals.iter().filter(|l| l.start > start && l.start < end) {
        if !in_spans(&spans, &l.value) {
            problems.push(format!("state `{}` (src/status/render.rs) is not named", l.value));
        }
    }
    report("README.md, Operations: the status page", &problems);
}

#[test]
fn the_contents_list_every_section() {
    let md = readme();
    let contents = required_section(&md, 2, "Contents", false);
    let after = &md[md.find("## Contents").expect("Contents") + contents.len()..];
    let mut problems = Vec::new();
    for (level, text) in headings(after) {
        let link = format!("(#{})", slug(&text));
        if level == 2 && !contents.contains(&link) {
            problems.push(format!("\"## {text}\" is not linked from Contents: {link}"));
        }
    }
    report("README.md, Contents", &problems);
}

/// The link targets in the prose of `md` (`[text](target)`, images too), with their lines.
fn links(md: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (number, line) in prose_lines(md) {
        // Inline code is not a link.
        let mut plain = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                plain.push_str(part);
            }
        }
        let mut rest = plain.as_str();
        while let Some(at) = rest.find("](") {
            let target = &rest[at + 2..];
            let Some(end) = target.find(')') else { break };
            let target = target[..end].split_whitespace().next().unwrap_or_default();
            out.push((number, target.to_string()));
            rest = &rest[at + 2 + end..];
        }
        // Reference definitions: `[name]: target`.
        let t = line.trim_start();
        if let (true, Some(at)) = (t.starts_with('['), t.find("]: ")) {
            out.push((number, t[at + 3..].trim().to_string()));
        }
    }
    out
}

#[test]
fn every_link_of_the_readme_and_docs_resolves() {
    let mut files = vec![PathBuf::from("README.md")];
    let mut docs: Vec<PathBuf> = fs::read_dir(repo().join("docs"))
        .expect("docs/")
        .map(|e| e.expect("docs entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| p.strip_prefix(repo()).expect("in the repository").to_path_buf())
        .collect();
    docs.sort();
    files.extend(docs);
    let mut problems = Vec::new();
    for file in &files {
        let md = read(&file.to_string_lossy());
        let own = anchors(&md);
        let dir = file.parent().unwrap_or(Path::new(""));
        for (line, target) in links(&md) {
            let at = format!("{}:{line}", file.display());
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            if path.is_empty() {
                let anchor = anchor.unwrap_or_default();
                if !own.contains(anchor) {
                    problems.push(format!("{at}: #{anchor} is no heading of {}", file.display()));
                }
                continue;
            }
            let resolved = repo().join(dir).join(path);
            if !resolved.exists() {
                problems.push(format!("{at}: {target} does not exist"));
                continue;
            }
            if let Some(anchor) = anchor.filter(|_| path.ends_with(".md")) {
                let other = fs::read_to_string(&resolved).unwrap_or_default();
                if !anchors(&other).contains(anchor) {
                    problems.push(format!("{at}: #{anchor} is no heading of {path}"));
                }
            }
        }
    }
    report("links that lead nowhere", &problems);
}

#[test]
fn the_architecture_file_map_names_the_files_that_exist() {
    let md = read("docs/architecture.md");
    let (_, map) =
        fenced_blocks(&md).into_iter().next().expect("docs/architecture.md: no ``` block");
    let mut named: BTreeSet<String> = BTreeSet::new();
    let mut folder: Option<String> = None;
    let mut problems = Vec::new();
    // An entry is the text before the description column (two spaces or more).
    let entry =
        |text: &str| text.trim_start().split("  ").next().unwrap_or_default().trim().to_string();
    for line in map.lines() {
        if line.starts_with("src/") {
            let mut base = String::new();
            folder = None;
            for (i, name) in entry(line).split(", ").enumerate() {
                let path = if i == 0 { name.to_string() } else { format!("{base}{name}") };
                base = path[..path.rfind('/').map_or(0, |p| p + 1)].to_string();
                if path.ends_with('/') {
                    folder = Some(path.clone());
                }
                named.insert(path);
            }
        } else if line.starts_with("  ") && !line.starts_with("   ") {
            let name = entry(line);
            match &folder {
                Some(folder) => {
                    named.insert(format!("{folder}{name}"));
                }
                None => problems.push(format!("\"{name}\" is indented under no folder")),
            }
        }
    }
    for path in &named {
        let full = repo().join(path.trim_end_matches('/'));
        let ok = if path.ends_with('/') { full.is_dir() } else { full.is_file() };
        if !ok {
            problems.push(format!("{path} is named but does not exist"));
        }
    }
    // Every .rs file and folder directly under src/, and those of each folder under src/.
    let mut folders = vec!["src/".to_string()];
    folders
        .extend(named.iter().filter(|p| p.ends_with('/') && p.matches('/').count() == 2).cloned());
    for folder in folders {
        if !repo().join(&folder).is_dir() {
            continue;
        }
        let mut entries: Vec<(String, bool)> = fs::read_dir(repo().join(&folder))
            .unwrap_or_else(|e| panic!("{folder}: {e}"))
            .map(|e| {
                let e = e.expect("entry");
                (e.file_name().to_string_lossy().to_string(), e.path().is_dir())
            })
            .collect();
        entries.sort();
        for (name, dir) in entries {
            let path = if dir { format!("{folder}{name}/") } else { format!("{folder}{name}") };
            if (dir || name.ends_with(".rs")) && !named.contains(&path) {
                problems.push(format!("{path} exists but is not named"));
            }
        }
    }
    report("docs/architecture.md, the file map", &problems);
}
