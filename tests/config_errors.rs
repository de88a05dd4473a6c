//! Configuration errors and warnings, checked with `nginx -t`: every rejected configuration must
//! fail with exactly one `[emerg]` line that names the directive, the reason, and the file and
//! line (`... in /path/nginx.conf:LINE`). Stock directives that the module intercepts (`server`,
//! `keepalive`) must still fail with nginx's own messages, and valid configurations must pass
//! without any warning.

mod common;

use common::*;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The messages logged at `level` (`emerg`, `warn`, ...) on stderr, without the timestamp and
/// the `pid#tid: ` prefix.
fn logged(output: &Output, level: &str) -> Vec<String> {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tag = format!("[{level}] ");
    stderr
        .lines()
        .filter_map(|line| {
            let rest = &line[line.find(&tag)? + tag.len()..];
            let (_pid, message) = rest.split_once(": ")?;
            Some(message.to_owned())
        })
        .collect()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `MESSAGE in PATH:LINE`, as nginx's `ngx_conf_log_error` writes it.
fn at(message: &str, path: &Path, line: usize) -> String {
    format!("{message} in {}:{line}", path.display())
}

/// Asserts that `nginx -t` rejects `conf` with exactly `message` on the line containing
/// `needle`, and with no other `[emerg]`.
#[track_caller]
fn assert_rejected(conf: &str, needle: &str, message: &str) {
    let (output, path, _dir) = nginx_test_config(conf);
    let err = stderr(&output);
    assert!(!output.status.success(), "nginx -t accepted:\n{conf}\nstderr:\n{err}");
    let expected = at(message, &path, line_of(conf, needle));
    assert_eq!(logged(&output, "emerg"), vec![expected], "config:\n{conf}\nstderr:\n{err}");
    assert!(err.contains("test failed"), "{err}");
}

/// Asserts that `nginx -t` accepts `conf` without any emergency, alert, critical error or
/// warning.
#[track_caller]
fn assert_accepted(conf: &str) {
    let (output, _path, _dir) = nginx_test_config(conf);
    let err = stderr(&output);
    assert!(output.status.success(), "nginx -t rejected:\n{conf}\nstderr:\n{err}");
    assert!(err.contains("test is successful"), "{err}");
    for level in ["emerg", "alert", "crit", "error", "warn"] {
        assert_eq!(logged(&output, level), Vec::<String>::new(), "config:\n{conf}\nstderr:\n{err}");
    }
}

/// A whole `http {}` block with upstream `tomcats` holding `lines` (each already indented and
/// ended by a newline), and a server proxying to it.
fn tomcats(lines: &str) -> String {
    http_block(&format!("    upstream tomcats {{\n{lines}    }}\n"), "")
}

/// `tomcats` with two tagged servers followed by `line`.
fn tomcats_with(line: &str) -> String {
    tomcats(&format!(
        "        server 127.0.0.1:8081 srun_id=tomcat01;\n\
         \x20       server 127.0.0.1:8082 srun_id=tomcat02;\n\
         \x20       {line}\n"
    ))
}

/// `tomcats` with `jvm_route` and a tagged server followed by the server line `server`.
fn with_server(server: &str) -> String {
    tomcats(&format!(
        "        jvm_route $cookie_JSESSIONID reverse;\n\
         \x20       server 127.0.0.1:8081 srun_id=tomcat01;\n\
         \x20       {server}\n"
    ))
}

// ---------------------------------------------------------------------------------------------
// jvm_route: where it is allowed, how often, and its arguments.

#[test]
fn jvm_route_outside_upstream_is_not_allowed() {
    let message = "\"jvm_route\" directive is not allowed here";

    let in_http = "http {\n    jvm_route $cookie_JSESSIONID reverse;\n}\n";
    assert_rejected(in_http, "    jvm_route", message);

    let in_server = "http {\n    server {\n        listen 127.0.0.1:{port};\n        \
                     jvm_route $cookie_JSESSIONID;\n    }\n}\n";
    assert_rejected(in_server, "    jvm_route", message);

    let in_location = http_block(
        "    upstream tomcats {\n        server 127.0.0.1:8081 srun_id=tomcat01;\n    }\n",
        "            jvm_route $cookie_JSESSIONID reverse;",
    );
    assert_rejected(&in_location, "    jvm_route", message);
}

#[test]
fn jvm_route_twice_in_one_upstream_is_duplicate() {
    let conf = tomcats(
        "        jvm_route $cookie_JSESSIONID reverse;\n\
         \x20       server 127.0.0.1:8081 srun_id=tomcat01;\n\
         \x20       jvm_route $cookie_SESSION;\n",
    );
    assert_rejected(&conf, "jvm_route $cookie_SESSION;", "\"jvm_route\" directive is duplicate");
}

#[test]
fn jvm_route_in_two_upstreams_is_not_duplicate() {
    let conf = http_block(
        "    upstream tomcats {\n        server 127.0.0.1:8081 srun_id=tomcat01;\n        \
         jvm_route $cookie_JSESSIONID reverse;\n    }\n    upstream resins {\n        \
         server 127.0.0.1:8083 srun_id=a;\n        jvm_route $cookie_JSESSIONID;\n    }\n",
        "",
    );
    assert_accepted(&conf);
}

#[test]
fn jvm_route_argument_count() {
    let message = "invalid number of arguments in \"jvm_route\" directive";
    assert_rejected(&tomcats_with("jvm_route;"), "jvm_route;", message);
}

#[test]
fn jvm_route_options_once_each() {
    assert_rejected(
        &tomcats_with("jvm_route $cookie_JSESSIONID reverse extra;"),
        "    jvm_route",
        "invalid parameter \"extra\" in \"jvm_route\" directive",
    );
    assert_rejected(
        &tomcats_with("jvm_route $cookie_JSESSIONID reverse reverse;"),
        "    jvm_route",
        "duplicate option \"reverse\" in \"jvm_route\" directive",
    );
    assert_rejected(
        &tomcats_with("jvm_route $cookie_JSESSIONID failover=balance failover=consistent;"),
        "    jvm_route",
        "duplicate option \"failover\" in \"jvm_route\" directive",
    );
}

#[test]
fn jvm_route_failover_values() {
    for bad in ["failover=", "failover=hash", "failover=CONSISTENT", "failover=none"] {
        let value = bad.trim_start_matches("failover=");
        assert_rejected(
            &tomcats_with(&format!("jvm_route $cookie_JSESSIONID reverse {bad};")),
            "    jvm_route",
            &format!(
                "invalid failover \"{value}\" in \"jvm_route\" directive: use \"balance\", \"consistent\" or \"off\""
            ),
        );
    }
    assert_rejected(
        &tomcats_with("jvm_route $cookie_JSESSIONID reverse failover;"),
        "    jvm_route",
        "invalid parameter \"failover\" in \"jvm_route\" directive",
    );
    for good in ["failover=balance", "failover=consistent"] {
        assert_accepted(&tomcats_with(&format!("jvm_route $cookie_JSESSIONID reverse {good};")));
        assert_accepted(&tomcats_with(&format!("jvm_route $cookie_JSESSIONID {good} reverse;")));
    }
}

#[test]
fn jvm_route_unknown_option() {
    assert_rejected(
        &tomcats_with("jvm_route $cookie_JSESSIONID backwards;"),
        "    jvm_route",
        "invalid parameter \"backwards\" in \"jvm_route\" directive",
    );
    assert_rejected(
        &tomcats_with("jvm_route $cookie_JSESSIONID REVERSE;"),
        "    jvm_route",
        "invalid parameter \"REVERSE\" in \"jvm_route\" directive",
    );
}

#[test]
fn jvm_route_source_without_variable() {
    assert_rejected(
        &tomcats_with("jvm_route JSESSIONID reverse;"),
        "    jvm_route",
        "invalid session source \"JSESSIONID\" in \"jvm_route\" directive: it has no variable \
         (e.g. $cookie_JSESSIONID)",
    );
    // With a URL name, the SOURCE before `|` is what is reported.
    assert_rejected(
        &tomcats_with("jvm_route JSESSIONID|jsessionid;"),
        "    jvm_route",
        "invalid session source \"JSESSIONID\" in \"jvm_route\" directive: it has no variable \
         (e.g. $cookie_JSESSIONID)",
    );
}

#[test]
fn jvm_route_cookie_with_empty_name() {
    assert_rejected(
        &tomcats_with("jvm_route $cookie_ reverse;"),
        "    jvm_route",
        "invalid session source \"$cookie_\" in \"jvm_route\" directive: the cookie name is empty",
    );
    assert_rejected(
        &tomcats_with("jvm_route $cookie_|jsessionid;"),
        "    jvm_route",
        "invalid session source \"$cookie_\" in \"jvm_route\" directive: the cookie name is empty",
    );
}

#[test]
fn jvm_route_bad_url_parameter_name() {
    for (line, name) in [
        ("jvm_route $cookie_JSESSIONID|;", ""),
        ("jvm_route $cookie_JSESSIONID|a/b;", "a/b"),
        ("jvm_route $cookie_JSESSIONID|a?b reverse;", "a?b"),
        ("jvm_route \"$cookie_JSESSIONID|a b\";", "a b"),
        ("jvm_route $cookie_JSESSIONID|a|b;", "a|b"),
    ] {
        assert_rejected(
            &tomcats_with(line),
            "    jvm_route",
            &format!(
                "invalid URL parameter name \"{name}\" in \"jvm_route\" directive: use letters, \
                 digits, \"_\", \"-\" or \".\""
            ),
        );
    }
}

/// nginx resolves variable names only at the end of the configuration (a `map` or `set` further
/// down may define them), and reports an unknown one with its own message, which has no file
/// and line: the same as for a stock directive.
#[test]
fn jvm_route_unknown_variable() {
    let conf = tomcats_with("jvm_route $no_such_var;");
    let (output, _path, _dir) = nginx_test_config(&conf);
    let err = stderr(&output);
    assert!(!output.status.success(), "{err}");
    assert_eq!(logged(&output, "emerg"), vec!["unknown \"no_such_var\" variable"], "{err}");

    // A stock directive gets exactly the same report.
    let stock = http_block(
        "    upstream tomcats {\n        server 127.0.0.1:8081;\n    }\n",
        "            proxy_set_header X-Session $no_such_var;",
    );
    let (output, _path, _dir) = nginx_test_config(&stock);
    assert!(!output.status.success());
    assert_eq!(logged(&output, "emerg"), vec!["unknown \"no_such_var\" variable"]);
}

#[test]
fn jvm_route_variable_defined_later_is_accepted() {
    let conf = http_block(
        "    upstream tomcats {\n        server 127.0.0.1:8081 srun_id=tomcat01;\n        \
         jvm_route $session_from_arg|sid reverse;\n    }\n    \
         map $arg_sid $session_from_arg {\n        default $arg_sid;\n    }\n",
        "",
    );
    assert_accepted(&conf);
}

#[test]
fn jvm_route_source_that_nginx_cannot_compile() {
    let conf = tomcats_with("jvm_route \"${cookie_JSESSIONID\";");
    let (output, path, _dir) = nginx_test_config(&conf);
    let err = stderr(&output);
    assert!(!output.status.success(), "{err}");
    let line = line_of(&conf, "    jvm_route");
    // nginx's script compiler says what is wrong; the module then names the directive.
    assert_eq!(
        logged(&output, "emerg"),
        vec![
            at("the closing bracket in \"cookie_JSESSIONID\" variable is missing", &path, line),
            at(
                "invalid session source \"${cookie_JSESSIONID\" in \"jvm_route\" directive",
                &path,
                line
            ),
        ],
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// srun_id= and max_busy= on the upstream `server` line.

const SRUN_ID_CHARS: &str = "srun_id must be visible ASCII without \";\", \",\" or \"=\"";

#[test]
fn srun_id_empty() {
    assert_rejected(
        &with_server("server 127.0.0.1:8082 srun_id=;"),
        "127.0.0.1:8082",
        "invalid srun_id \"\" in \"server\" directive: srun_id is empty",
    );
}

#[test]
fn srun_id_too_long() {
    let long = "a".repeat(65);
    assert_rejected(
        &with_server(&format!("server 127.0.0.1:8082 srun_id={long};")),
        "127.0.0.1:8082",
        &format!(
            "invalid srun_id \"{long}\" in \"server\" directive: srun_id is longer than 64 bytes"
        ),
    );
    // 64 bytes is the limit, and allowed.
    let longest = "a".repeat(64);
    assert_accepted(&with_server(&format!("server 127.0.0.1:8082 srun_id={longest};")));
}

#[test]
fn srun_id_bad_characters() {
    for (arg, value) in [
        ("srun_id=a,b", "a,b"),
        ("srun_id=a=b", "a=b"),
        ("srun_id=caf\u{e9}", "caf\u{e9}"),
        ("\"srun_id=a b\"", "a b"),
        ("\"srun_id=a;b\"", "a;b"),
    ] {
        assert_rejected(
            &with_server(&format!("server 127.0.0.1:8082 {arg};")),
            "127.0.0.1:8082",
            &format!("invalid srun_id \"{value}\" in \"server\" directive: {SRUN_ID_CHARS}"),
        );
    }
}

/// Runs `nginx -t` on a configuration that is not UTF-8 (`nginx_test_config` takes a `&str`).
fn nginx_test_config_bytes(http_conf: &[u8]) -> (Output, PathBuf, TempDir) {
    let dir = TempDir::new("conftest-bytes");
    let path = dir.path().join("nginx.conf");
    let mut conf = main_preamble(1).into_bytes();
    conf.extend_from_slice(http_conf);
    fs::write(&path, conf).expect("write nginx.conf");
    let output = nginx_check(&nginx_binary(), dir.path(), &path);
    (output, path, dir)
}

#[test]
fn srun_id_with_a_byte_that_is_not_utf8() {
    // `@` stands for the byte 0xFF, which a `&str` cannot hold.
    let conf = with_server("server 127.0.0.1:8082 srun_id=a@;");
    let bytes: Vec<u8> = conf.bytes().map(|b| if b == b'@' { 0xff } else { b }).collect();
    let (output, path, _dir) = nginx_test_config_bytes(&bytes);
    let err = stderr(&output);
    assert!(!output.status.success(), "{err}");
    let line = line_of(&conf, "127.0.0.1:8082");
    // The module shows the byte as U+FFFD (stderr is read lossily here in any case).
    let message = format!("invalid srun_id \"a\u{fffd}\" in \"server\" directive: {SRUN_ID_CHARS}");
    assert_eq!(logged(&output, "emerg"), vec![at(&message, &path, line)], "{err}");
}

#[test]
fn srun_id_twice_on_one_line() {
    assert_rejected(
        &with_server("server 127.0.0.1:8082 srun_id=a weight=2 srun_id=b;"),
        "127.0.0.1:8082",
        "duplicate srun_id in \"server\" directive",
    );
    assert_rejected(
        &with_server("server 127.0.0.1:8082 srun_id=a srun_id=a;"),
        "127.0.0.1:8082",
        "duplicate srun_id in \"server\" directive",
    );
}

#[test]
fn max_busy_not_a_number() {
    // The last one is too large for nginx: the error must still name max_busy, which the user
    // wrote, not the max_conns it becomes.
    for value in ["abc", "", "-1", "+5", "1k", "10 ", "99999999999999999999999"] {
        let arg = if value.contains(' ') {
            format!("\"max_busy={value}\"")
        } else {
            format!("max_busy={value}")
        };
        assert_rejected(
            &with_server(&format!("server 127.0.0.1:8082 srun_id=tomcat02 {arg};")),
            "127.0.0.1:8082",
            &format!("invalid max_busy \"{value}\" in \"server\" directive"),
        );
    }
}

#[test]
fn max_busy_with_max_conns() {
    let message = "\"max_busy\" and \"max_conns\" are both set in \"server\" directive";
    assert_rejected(
        &with_server("server 127.0.0.1:8082 max_busy=10 max_conns=5;"),
        "127.0.0.1:8082",
        message,
    );
    assert_rejected(
        &with_server("server 127.0.0.1:8082 max_conns=5 srun_id=tomcat02 max_busy=10;"),
        "127.0.0.1:8082",
        message,
    );
}

// ---------------------------------------------------------------------------------------------
// The intercepted stock directives still fail with nginx's own messages.

#[test]
fn server_line_errors_are_nginx_own() {
    assert_rejected(
        &with_server("server 127.0.0.1:8082 foo=bar srun_id=a;"),
        "127.0.0.1:8082",
        "invalid parameter \"foo=bar\"",
    );
    assert_rejected(
        &with_server("server 127.0.0.1:8082 srun_id=a max_busy=5 foo=bar;"),
        "127.0.0.1:8082",
        "invalid parameter \"foo=bar\"",
    );
    assert_rejected(
        &with_server("server 127.0.0.1:8082 srun_id=tomcat02 weight=0;"),
        "127.0.0.1:8082",
        "invalid parameter \"weight=0\"",
    );
    assert_rejected(
        &with_server("server 127.0.0.1:8082 srun_id=tomcat02 max_fails=x;"),
        "127.0.0.1:8082",
        "invalid parameter \"max_fails=x\"",
    );
    assert_rejected(
        &with_server("server;"),
        "server;",
        "invalid number of arguments in \"server\" directive",
    );
    // nginx's own rule: ip_hash, hash and random do not support backup servers.
    for method in ["ip_hash;", "hash $arg_x consistent;", "random two;"] {
        let conf = tomcats(&format!(
            "        {method}\n        jvm_route $cookie_JSESSIONID reverse;\n        \
             server 127.0.0.1:8081 srun_id=tomcat01;\n        \
             server 127.0.0.1:8082 srun_id=tomcat02 backup;\n"
        ));
        assert_rejected(
            &conf,
            "127.0.0.1:8082",
            "balancing method does not support parameter \"backup\"",
        );
    }
}

/// The `[emerg]` messages, whether nginx printed them with a timestamp and pid or not, with the
/// configuration's path replaced by `CONF`.
fn emergencies(output: &Output, path: &Path) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter_map(|line| {
            let rest = &line[line.find("[emerg] ")? + 8..];
            let rest = match rest.split_once(": ") {
                Some((pid, message)) if pid.contains('#') => message,
                _ => rest,
            };
            Some(rest.replace(&path.display().to_string(), "CONF"))
        })
        .collect()
}

/// `nginx -t` of `conf` on the same nginx without the module (no `load_module`, no
/// `srun_id=`): what stock nginx says.
fn stock_verdict(conf: &str) -> (bool, Vec<String>) {
    let dir = TempDir::new("stock");
    let path = dir.path().join("nginx.conf");
    let full = compose(1, conf, free_port());
    let stock: String = full
        .lines()
        .map(|l| if l.starts_with("load_module ") { "# (no module)" } else { l })
        .map(|l| {
            l.split(" srun_id=").next().unwrap_or(l).to_owned()
                + if l.contains(" srun_id=") { ";" } else { "" }
        })
        .collect::<Vec<_>>()
        .join("\n");
    fs::write(&path, &stock).unwrap();
    let out = nginx_check(&nginx_binary(), dir.path(), &path);
    (out.status.success(), emergencies(&out, &path))
}

#[test]
fn keepalive_errors_are_nginx_own() {
    // The keepalive directive changed in nginx 1.29.x (`keepalive 0;` disables it, a second
    // argument `local` exists): whatever stock nginx says, the module must say the same.
    for directive in
        ["keepalive 0;", "keepalive;", "keepalive 1 2;", "keepalive 8 local;", "keepalive x;"]
    {
        let conf = tomcats_with(directive);
        let (out, path, _dir) = nginx_test_config(&conf);
        assert_eq!(
            (out.status.success(), emergencies(&out, &path)),
            stock_verdict(&conf),
            "{directive}: {}",
            stderr(&out)
        );
    }
    let twice = tomcats(
        "        server 127.0.0.1:8081 srun_id=tomcat01;\n        keepalive 16;\n        \
         jvm_route $cookie_JSESSIONID reverse;\n        keepalive 8;\n",
    );
    assert_rejected(&twice, "keepalive 8;", "\"keepalive\" directive is duplicate");

    let outside = "http {\n    keepalive 16;\n}\n";
    assert_rejected(outside, "keepalive", "\"keepalive\" directive is not allowed here");
}

// ---------------------------------------------------------------------------------------------
// Valid configurations.

const SERVERS: &str = "        server 127.0.0.1:8081 srun_id=tomcat01 weight=2 max_fails=2 \
                       fail_timeout=5s max_busy=100;\n        \
                       server 127.0.0.1:8082 srun_id=tomcat02 max_conns=50;\n        \
                       server 127.0.0.1:8083;\n";
const BACKUPS: &str = "        server 127.0.0.1:8084 srun_id=tomcat04 backup;\n        \
                       server 127.0.0.1:8085 srun_id=tomcat01 backup max_busy=0;\n";
const JVM_ROUTE: &str = "        jvm_route $cookie_JSESSIONID|jsessionid reverse;\n";

#[test]
fn valid_configurations_pass() {
    let plain = [
        // jvm_route before and after the servers.
        format!("{JVM_ROUTE}{SERVERS}{BACKUPS}"),
        format!("{SERVERS}{BACKUPS}{JVM_ROUTE}"),
        format!("{SERVERS}{JVM_ROUTE}{BACKUPS}"),
        // keepalive before and after jvm_route.
        format!("{SERVERS}{BACKUPS}        keepalive 16;\n{JVM_ROUTE}"),
        format!("{SERVERS}{BACKUPS}{JVM_ROUTE}        keepalive 16;\n"),
        format!("        keepalive 16;\n{JVM_ROUTE}{SERVERS}{BACKUPS}"),
        // A shared zone.
        format!("        zone x 64k;\n{SERVERS}{BACKUPS}{JVM_ROUTE}"),
        format!("{JVM_ROUTE}{SERVERS}{BACKUPS}        zone x 64k;\n        keepalive 16;\n"),
        // Prefix mode and other sources.
        format!("{SERVERS}        jvm_route $cookie_JSESSIONID;\n"),
        format!("{SERVERS}        jvm_route $http_x_session|sid reverse;\n"),
        format!("{SERVERS}        jvm_route \"prefix-$arg_s\";\n"),
        format!("{SERVERS}        jvm_route $cookie_JSESSIONID|jsessionid.v2;\n"),
    ];
    for lines in &plain {
        assert_accepted(&tomcats(lines));
    }

    // Other balancers, before and after jvm_route (and keepalive after the balancer, as
    // nginx wants it).
    for method in [
        "least_conn;",
        "hash $arg_x consistent;",
        "hash $arg_x;",
        "ip_hash;",
        "random two;",
        "random;",
    ] {
        let backups = if method == "least_conn;" { BACKUPS } else { "" };
        let method = format!("        {method}\n");
        for lines in [
            format!("{method}{JVM_ROUTE}{SERVERS}{backups}"),
            format!("{JVM_ROUTE}{method}{SERVERS}{backups}"),
            format!("{SERVERS}{backups}{JVM_ROUTE}{method}"),
            format!("{SERVERS}{backups}{method}{JVM_ROUTE}"),
            format!(
                "        zone x 64k;\n{method}        keepalive 16;\n{JVM_ROUTE}{SERVERS}{backups}"
            ),
            format!(
                "{JVM_ROUTE}{method}        keepalive 16;\n{SERVERS}{backups}        zone x 64k;\n"
            ),
        ] {
            assert_accepted(&tomcats(&lines));
        }
    }
}

#[test]
fn srun_id_without_jvm_route_warns() {
    let conf = http_block(
        "    upstream tomcats {\n        server 127.0.0.1:8081 srun_id=tomcat01;\n        \
         jvm_route $cookie_JSESSIONID reverse;\n    }\n    \
         upstream plain {\n        server 127.0.0.1:8082 srun_id=tomcat02;\n        \
         server 127.0.0.1:8083;\n    }\n    \
         upstream untagged {\n        server 127.0.0.1:8084;\n    }\n",
        "",
    );
    let (output, path, _dir) = nginx_test_config(&conf);
    let err = stderr(&output);
    assert!(output.status.success(), "{err}");
    assert!(err.contains("test is successful"), "{err}");
    assert_eq!(logged(&output, "emerg"), Vec::<String>::new(), "{err}");
    let line = line_of(&conf, "upstream plain {");
    assert_eq!(
        logged(&output, "warn"),
        vec![at(
            "upstream \"plain\" has servers with \"srun_id\" but no \"jvm_route\": the srun_ids \
             are not used",
            &path,
            line
        )],
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// stream {} upstreams are not the module's.

/// `load_module` for the stream module when this nginx has it as a dynamic module (Debian's
/// packaged nginx: package libnginx-mod-stream); nothing when it is built in.
fn stream_module_line() -> String {
    let out = Command::new(nginx_binary()).arg("-V").output().expect("nginx -V");
    let flags = String::from_utf8_lossy(&out.stderr).into_owned();
    if !flags.contains("--with-stream=dynamic") {
        return String::new();
    }
    let modules = flags
        .split_whitespace()
        .find_map(|f| f.strip_prefix("--modules-path="))
        .unwrap_or("/usr/lib/nginx/modules");
    let path = Path::new(modules).join("ngx_stream_module.so");
    assert!(path.exists(), "{} is missing: apt-get install libnginx-mod-stream", path.display());
    format!("load_module {};\n", path.display())
}

fn with_stream(stream_upstream_lines: &str) -> String {
    let http = tomcats(&format!("{SERVERS}{JVM_ROUTE}"));
    format!(
        "{}{http}stream {{\n    upstream backends {{\n{stream_upstream_lines}    }}\n    server {{\n        \
         listen 127.0.0.1:19999;\n        proxy_pass backends;\n    }}\n}}\n",
        stream_module_line()
    )
}

#[test]
fn stream_upstream_servers_are_not_affected() {
    assert_rejected(
        &with_stream("        server 127.0.0.1:9001 srun_id=a;\n"),
        "127.0.0.1:9001",
        "invalid parameter \"srun_id=a\"",
    );
    assert_rejected(
        &with_stream("        server 127.0.0.1:9001 weight=2 max_busy=3;\n"),
        "127.0.0.1:9001",
        "invalid parameter \"max_busy=3\"",
    );
    assert_rejected(
        &with_stream("        server 127.0.0.1:9001;\n        jvm_route $cookie_JSESSIONID;\n"),
        "jvm_route $cookie_JSESSIONID;",
        "\"jvm_route\" directive is not allowed here",
    );
    assert_accepted(&with_stream(
        "        server 127.0.0.1:9001 weight=2 max_conns=3 max_fails=1 fail_timeout=2s;\n        \
         server 127.0.0.1:9002 backup;\n",
    ));
}

// ---------------------------------------------------------------------------------------------
// The shared zone's name, and balancing methods the module cannot wrap.

#[test]
fn a_zone_named_like_the_modules_own_is_reported() {
    let (output, _path, _dir) = nginx_test_config(&http_block(
        "    upstream other {\n        zone jvm_route 64k;\n        server 127.0.0.1:8083;\n    }\n    upstream tomcats {\n        server 127.0.0.1:8081 srun_id=tomcat01;\n        jvm_route $cookie_JSESSIONID reverse;\n    }\n",
        "",
    ));
    let err = stderr(&output);
    assert!(!output.status.success(), "{err}");
    let emerg = logged(&output, "emerg");
    assert_eq!(emerg.len(), 1, "{err}");
    assert!(
        emerg[0].starts_with(
            "the shared memory zone \"jvm_route\" that \"jvm_route\" keeps its counters and marks in is already declared for a different use"
        ),
        "{err}"
    );
    assert!(!err.contains("out of memory"), "{err}");
}

#[test]
fn stock_methods_are_accepted() {
    for method in [
        "least_conn;",
        "hash $remote_addr;",
        "hash $request_uri consistent;",
        "ip_hash;",
        "random;",
        "random two least_conn;",
    ] {
        assert_accepted(&tomcats_with(&format!(
            "{method}\n        jvm_route $cookie_JSESSIONID reverse;"
        )));
        assert_accepted(&tomcats_with(&format!(
            "jvm_route $cookie_JSESSIONID reverse;\n        {method}"
        )));
    }
}

#[test]
fn a_stock_method_with_bad_arguments_is_nginxs_own_error() {
    assert_rejected(
        &tomcats_with("least_conn x;"),
        "least_conn x;",
        "invalid number of arguments in \"least_conn\" directive",
    );
}

/// A third-party balancer whose per-request data is not round robin's: Debian's
/// `libnginx-mod-http-upstream-fair`, for Debian's nginx (it loads into no other).
#[test]
fn a_third_party_balancer_is_refused_with_its_name_and_place() {
    let fair = Path::new("/usr/lib/nginx/modules/ngx_http_upstream_fair_module.so");
    if nginx_binary() != Path::new("/usr/sbin/nginx") {
        skip("the fair module loads only into the distribution's nginx, not the one under test");
        return;
    }
    if !fair.exists() {
        missing("fair", "needs libnginx-mod-http-upstream-fair (apt-get install it)");
        return;
    }
    let conf = format!(
        "load_module {};\n{}",
        fair.display(),
        tomcats_with("fair;\n        jvm_route $cookie_JSESSIONID reverse;")
    );
    let (output, path, _dir) = nginx_test_config(&conf);
    let err = stderr(&output);
    assert!(!output.status.success(), "{err}");
    let emerg = logged(&output, "emerg");
    assert_eq!(emerg.len(), 1, "{err}");
    let line = line_of(&conf, "upstream tomcats");
    let expected = format!(
        "\"jvm_route\" cannot wrap the load balancing method \"fair\" of \
         ngx_http_upstream_fair_module in upstream \"tomcats\" in {}:{line}: use round robin \
         (the default), least_conn, hash, ip_hash or random",
        path.display()
    );
    assert_eq!(emerg[0], expected, "{err}");
    // Without jvm_route the balancer is left alone.
    let alone = format!("load_module {};\n{}", fair.display(), tomcats_with("fair;"));
    let (output, _path, _dir) = nginx_test_config(&alone);
    assert!(output.status.success(), "{}", stderr(&output));
}

// ---------------------------------------------------------------------------------------------
// jvm_route_cookie.

#[test]
fn jvm_route_cookie_errors() {
    let with =
        |lines: &str| tomcats(&format!("        server 127.0.0.1:8081 srun_id=tomcat01;\n{lines}"));
    let jvm_route = "        jvm_route $cookie_ROUTEID reverse;\n";
    assert_accepted(&with(&format!(
        "{jvm_route}        jvm_route_cookie ROUTEID path=/ secure samesite=none;\n"
    )));
    // jvm_route may come after it.
    assert_accepted(&with(&format!("        jvm_route_cookie ROUTEID;\n{jvm_route}")));
    assert_rejected(
        &with(&format!(
            "{jvm_route}        jvm_route_cookie ROUTEID;\n        jvm_route_cookie R2;\n"
        )),
        "jvm_route_cookie R2;",
        "\"jvm_route_cookie\" directive is duplicate",
    );
    assert_rejected(
        &with(&format!("{jvm_route}        jvm_route_cookie ROUTEID expires=1d;\n")),
        "expires=1d",
        "invalid parameter \"expires=1d\" in \"jvm_route_cookie\" directive",
    );
    assert_rejected(
        &with(&format!("{jvm_route}        jvm_route_cookie ROUTEID samesite=none;\n")),
        "samesite=none",
        "\"samesite=none\" without \"secure\" in \"jvm_route_cookie\" directive: browsers drop such a cookie",
    );
    assert_rejected(
        &with(&format!("{jvm_route}        jvm_route_cookie ROUTEID max_age=soon;\n")),
        "max_age=soon",
        "invalid parameter \"max_age=soon\" in \"jvm_route_cookie\" directive",
    );
    // Without jvm_route: named at the directive's own line.
    let conf = with("        jvm_route_cookie ROUTEID;\n");
    let (output, path, _dir) = nginx_test_config(&conf);
    assert!(!output.status.success());
    let expected = at(
        "\"jvm_route_cookie\" needs \"jvm_route\" in the same upstream",
        &path,
        line_of(&conf, "jvm_route_cookie"),
    );
    assert_eq!(logged(&output, "emerg"), vec![expected], "{}", stderr(&output));

    // A route cookie that jvm_route could never read back: no stickiness, and a Set-Cookie on
    // every response.
    let unreadable = [
        (
            "        jvm_route $cookie_JSESSIONID reverse;\n",
            "\"jvm_route\" in this upstream does not read \"$cookie_ROUTEID\"; use \"jvm_route $cookie_ROUTEID|jsessionid reverse;\" or another cookie name",
        ),
        (
            "        jvm_route $cookie_ROUTEID;\n",
            "\"jvm_route\" reads it without \"reverse\", and its value \".srun_id\" names its route after the dot; add \"reverse\" to \"jvm_route\"",
        ),
        (
            "        jvm_route $http_x_session reverse;\n",
            "\"jvm_route\" in this upstream does not read \"$cookie_ROUTEID\"; use \"jvm_route $cookie_ROUTEID|jsessionid reverse;\" or another cookie name",
        ),
    ];
    for (jvm_route, reason) in unreadable {
        let conf = with(&format!("{jvm_route}        jvm_route_cookie ROUTEID;\n"));
        let (output, path, _dir) = nginx_test_config(&conf);
        assert!(!output.status.success(), "{jvm_route}");
        let expected = at(
            &format!("\"jvm_route_cookie ROUTEID\" could never be read back: {reason}"),
            &path,
            line_of(&conf, "jvm_route_cookie"),
        );
        assert_eq!(logged(&output, "emerg"), vec![expected], "{}", stderr(&output));
    }
    // The cookie's name is matched as nginx matches $cookie_NAME: without regard to case.
    assert_accepted(&with(
        "        jvm_route $cookie_routeid reverse;\n        jvm_route_cookie ROUTEID;\n",
    ));
}

// ---------------------------------------------------------------------------------------------
// The example configurations of nginx-conf/ (the README says the suite loads each of them).

#[test]
fn every_example_configuration_passes_nginx_t() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("nginx-conf");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "conf"))
        .collect();
    files.push(dir.join("tomcat-cluster/nginx.conf"));
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        // The tests supply their own preamble (the module's path, logs); they use the http block.
        let start = text.find("\nhttp {").expect("an http block") + 1;
        let conf = text[start..].replace("listen 80;", "listen 127.0.0.1:{port};");
        assert_accepted(&conf);
        eprintln!("{}: accepted", file.display());
    }
}

/// nginx 1.29.6+ has its own `sticky`; its per-request data is not round robin's, so an
/// upstream with `jvm_route` refuses it, in either order (the README says so).
#[test]
fn nginx_sticky_is_refused_beside_jvm_route() {
    if nginx_version() < 1_029_006 {
        skip("nginx before 1.29.6 has no `sticky`");
        return;
    }
    for lines in [
        "sticky cookie srv_id;\n        jvm_route $cookie_JSESSIONID reverse;",
        "jvm_route $cookie_JSESSIONID reverse;\n        sticky cookie srv_id;",
    ] {
        let conf = tomcats_with(lines);
        let (output, path, _dir) = nginx_test_config(&conf);
        assert!(!output.status.success(), "{lines}: {}", stderr(&output));
        let emerg = logged(&output, "emerg");
        assert_eq!(emerg.len(), 1, "{}", stderr(&output));
        assert!(
            emerg[0].starts_with("\"jvm_route\" cannot wrap the load balancing method")
                && emerg[0].contains("in upstream \"tomcats\" in ")
                && emerg[0].contains(&path.display().to_string()),
            "{lines}: {}",
            emerg[0]
        );
    }
}
