//! The Debian package (`scripts/package-deb`), installed with apt into this system's nginx:
//! the module is enabled the way Debian enables its own modules, the stock configuration still
//! passes `nginx -t`, a configuration using `jvm_route` loads the installed module through
//! `/etc/nginx/modules-enabled` and routes, and remove, reinstall, an admin's removal of the
//! link, and purge behave as Debian's own module packages do. `scripts/test` builds the package
//! and names it in `TEST_DEB_PACKAGE`; the test needs root (it installs a package).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const PACKAGE: &str = "libnginx-mod-http-upstream-jvm-route";
const LINK: &str = "/etc/nginx/modules-enabled/50-mod-http-upstream-jvm-route.conf";
const MODULE: &str = "/usr/lib/nginx/modules/ngx_http_upstream_jvm_route_module.so";

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
    let conf = format!(
        "include /etc/nginx/modules-enabled/*.conf;\nerror_log {dir}/logs/error.log;\npid {dir}/logs/nginx.pid;\nevents {{}}\n{}",
        http_block(
            &upstream("tomcats", &tomcats, &[], "        jvm_route $cookie_JSESSIONID reverse;\n"),
            ""
        )
        .replace("{port}", &port.to_string()),
        dir = dir.path().display()
    );
    let conf_path = dir.path().join("nginx.conf");
    fs::write(&conf_path, conf).unwrap();
    // nginx's own prefix, where `modules/` of the enabled lines is.
    let conf_arg = conf_path.to_str().unwrap();
    run("/usr/sbin/nginx", &["-c", conf_arg, "-t", "-q"]);
    run("/usr/sbin/nginx", &["-c", conf_arg]);
    let cookie = "JSESSIONID=0123456789ABCDEF.tomcat02";
    let sticky = (0..10).all(|_| request(port, "/", &[("Cookie", cookie)]).backend() == "tomcat02");
    let _ = Command::new("/usr/sbin/nginx").args(["-c", conf_arg, "-s", "stop"]).status();
    assert!(sticky, "the installed module does not route");

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
    run("/usr/sbin/nginx", &["-t", "-q"]);
}
