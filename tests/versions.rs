//! A module loads only into the nginx version it was built for; any other nginx refuses it
//! with its own message, at `nginx -t`, before it can do harm.

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use common::*;

/// nginx's version number (`1.22.1` -> 1022001), as in `module->version`.
fn version_number(nginx: &PathBuf) -> u64 {
    let out = Command::new(nginx).arg("-v").output().expect("nginx -v");
    let text = String::from_utf8_lossy(&out.stderr);
    let version = text.split("nginx/").nth(1).expect("version").split_whitespace().next().unwrap();
    version.split('.').map(|p| p.parse::<u64>().expect("number")).fold(0, |acc, n| acc * 1000 + n)
}

/// An nginx of another version than the one under test: `TEST_OTHER_NGINX_BINARY`, else the
/// distribution's `/usr/sbin/nginx`.
fn other_nginx() -> PathBuf {
    std::env::var_os("TEST_OTHER_NGINX_BINARY")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.exists()))
        .expect("no second nginx: set TEST_OTHER_NGINX_BINARY or apt-get install nginx")
}

#[test]
fn another_nginx_version_refuses_the_module() {
    let other = other_nginx();
    let (built_for, other_version) = (version_number(&nginx_binary()), version_number(&other));
    assert_ne!(built_for, other_version, "{} is the same version", other.display());

    let dir = TempDir::new("versions");
    let module = module_path();
    let conf = format!("load_module {};\nevents {{}}\n", module.display());
    fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let out = nginx_check(&other, dir.path(), &dir.path().join("nginx.conf"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let expected = format!(
        "module \"{}\" version {built_for} instead of {other_version} in {}:1",
        module.display(),
        dir.path().join("nginx.conf").display()
    );
    assert!(
        stderr.contains("[emerg]") && stderr.contains(&expected),
        "expected {expected:?} in:\n{stderr}"
    );
}
