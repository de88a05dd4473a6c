//! The Debian package (`scripts/package-deb`), installed with apt into this system's nginx:
//! the module is enabled the way Debian enables its own modules, the stock configuration still
//! passes `nginx -t`, a configuration using `jvm_route` loads the installed module through
//! `/etc/nginx/modules-enabled` and routes, its workers (`www-data`) save runtime marks in the
//! directory the package made for `jvm_route_state`, and remove, reinstall, an admin's removal
//! of the link, and purge behave as Debian's own module packages do. `scripts/test` builds the package
//! and names it in `TEST_DEB_PACKAGE`; the test needs root (it installs a package).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const PACKAGE: &str = "libnginx-mod-http-upstream-jvm-route";
const LINK: &str = "/etc/nginx/modules-enabled/50-mod-http-upstream-jvm-route.conf";
const MODULE: &str = "/usr/lib/nginx/modules/ngx_http_upstream_jvm_route_module.so";
/// The directory the package makes for `jvm_route_state` files.
const STATE_DIR: &str = "/var/lib/nginx/jvm-route";

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{program} {args:?} failed:\n{text}");
    text
}

fn link_target() -> Option<PathBuf> {
    fs::read_link(LINK).ok()
}

fn removed_link() -> bool {
    Path::new(&format!("{LINK}.removed")).symlink_metadata().is_ok()
}

#[test]
fn the_debian_package_installs_enables_and_goes_like_debians_own_modules() {
    let Some(deb) = std::env::var_os("TEST_DEB_PACKAGE").filter(|v| !v.is_empty()) else {
        skip(
            "this run tests no Debian package (TEST_DEB_PACKAGE: the version matrix sets it in the \
             runs of the distributions' nginx)",
        );
        return;
    };
    assert!(running_as_root(), "installing a package needs root");
    let deb = PathBuf::from(deb);
    let install =
        || run("apt-get", &["install", "-y", "-q", "--allow-downgrades", deb.to_str().unwrap()]);

    install();
    assert_eq!(
        link_target().as_deref(),
        Some(Path::new("/usr/share/nginx/modules-available/mod-http-upstream-jvm-route.conf"))
    );
    assert!(Path::new(MODULE).exists());
    // The distribution's stock configuration, with the module enabled.
    run("/usr/sbin/nginx", &["-t", "-q"]);

    // A configuration in the stock layout that uses the module, loaded through the link.
    let tomcats = backends(&["tomcat01", "tomcat02"]);
    let dir = TempDir::new("package");
    fs::create_dir_all(dir.path().join("logs")).unwrap();
    let port = free_port();
    // Its state file in the directory the package made for it, the workers running as Debian's
    // stock configuration runs them.
    let state = Path::new(STATE_DIR);
    let owner = run("stat", &["-c", "%U:%G %a", STATE_DIR]);
    assert_eq!(owner.trim(), "www-data:www-data 750", "{STATE_DIR}");
    let conf = format!(
        "include /etc/nginx/modules-enabled/*.conf;\nuser www-data;\nerror_log {dir}/logs/error.log;\npid {dir}/logs/nginx.pid;\nevents {{}}\n{}",
        http_block(
            &upstream("tomcats", &tomcats, &[], "        jvm_route $cookie_JSESSIONID reverse;\n"),
            "        }\n        location = /control {\n            jvm_route_status tomcats control;"
        )
        .replace("{port}", &port.to_string())
        .replace("http {\n", &format!("http {{\n    jvm_route_state {STATE_DIR}/state;\n")),
        dir = dir.path().display()
    );
    let conf_path = dir.path().join("nginx.conf");
    fs::write(&conf_path, conf).unwrap();
    // nginx's own prefix, where `modules/` of the enabled lines is.
    let conf_arg = conf_path.to_str().unwrap();
    let checked = Command::new("/usr/sbin/nginx").args(["-c", conf_arg, "-t"]).output().unwrap();
    let said = String::from_utf8_lossy(&checked.stderr);
    assert!(checked.status.success() && !said.contains("jvm_route_state"), "{said}");
    run("/usr/sbin/nginx", &["-c", conf_arg]);
    let cookie = "JSESSIONID=0123456789ABCDEF.tomcat02";
    let sticky = (0..10).all(|_| request(port, "/", &[("Cookie", cookie)]).backend() == "tomcat02");
    // A control action: a worker (www-data) writes the state file there.
    let drain = "POST /control?upstream=tomcats&srun_id=tomcat01&action=drain HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let drained = raw_request(port, drain.as_bytes()).status;
    let saved = fs::read_to_string(state.join("state")).unwrap_or_default();
    let _ = Command::new("/usr/sbin/nginx").args(["-c", conf_arg, "-s", "stop"]).status();
    assert!(sticky, "the installed module does not route");
    assert_eq!(drained, 200);
    assert!(saved.contains("tomcat01") && saved.contains("drain"), "state file: {saved:?}");

    // Remove: disabled (the link kept aside), the stock configuration still passes.
    run("apt-get", &["remove", "-y", "-q", PACKAGE]);
    assert!(link_target().is_none() && removed_link() && !Path::new(MODULE).exists());
    run("/usr/sbin/nginx", &["-t", "-q"]);
    // Reinstall after a remove: enabled again.
    install();
    assert!(link_target().is_some() && !removed_link());
    // An admin disables it; a reinstall (an upgrade) keeps it disabled.
    fs::remove_file(LINK).unwrap();
    run("dpkg", &["-i", deb.to_str().unwrap()]);
    assert!(link_target().is_none(), "an upgrade enabled the module again");
    // Purge: nothing left.
    run("apt-get", &["purge", "-y", "-q", PACKAGE]);
    assert!(link_target().is_none() && !removed_link() && !Path::new(MODULE).exists());
    assert!(!state.exists(), "{STATE_DIR} after a purge");
    run("/usr/sbin/nginx", &["-t", "-q"]);
}
