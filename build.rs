//! Build script: derives nginx version gates from `nginx-sys`, compiles the C shim over nginx
//! macros and inline functions, and tells the tests where the nginx binary is.

use std::env;
use std::path::PathBuf;

/// nginx versions at which the module's code or behaviour changes.
const VERSION_GATES: &[(&str, u64)] = &[
    // `r->headers_in.cookie` became a linked list of header lines.
    ("nginx1_23_0", 1_023_000),
    // Upstream `resolve`, peer `refs` and `peers->config` in the open-source upstream zone.
    ("nginx1_27_3", 1_027_003),
    // Native `server ... route=` and `drain`, and the `sticky` directive.
    ("nginx1_29_6", 1_029_006),
];

fn main() {
    println!("cargo::rerun-if-changed=src/shim.c");
    println!("cargo::rerun-if-env-changed=DEP_NGINX_VERSION_NUMBER");

    let version: u64 = env::var("DEP_NGINX_VERSION_NUMBER")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .expect("nginx-sys did not report DEP_NGINX_VERSION_NUMBER");

    for (name, at) in VERSION_GATES {
        println!("cargo::rustc-check-cfg=cfg({name})");
        if version >= *at {
            println!("cargo::rustc-cfg={name}");
        }
    }
    println!("cargo::rustc-env=JVM_ROUTE_NGINX_VERSION_NUMBER={version}");

    // nginx built with SSL (its `ssl` feature): `check type=https` uses nginx's own OpenSSL code.
    println!("cargo::rerun-if-env-changed=DEP_NGINX_FEATURES");
    println!("cargo::rustc-check-cfg=cfg(jvm_route_ssl)");
    let features = env::var("DEP_NGINX_FEATURES").unwrap_or_default();
    if features.split(',').any(|f| f.trim() == "ssl") {
        println!("cargo::rustc-cfg=jvm_route_ssl");
    }

    let mut shim = cc::Build::new();
    shim.file("src/shim.c")
        .warnings(true)
        .extra_warnings(true)
        .flag_if_supported("-Wno-unused-parameter")
        // A macro missing from this nginx version must fail the build, not the module's load.
        .flag_if_supported("-Werror=implicit-function-declaration");
    if let Ok(includes) = env::var("DEP_NGINX_INCLUDE") {
        for dir in env::split_paths(&includes) {
            shim.include(dir);
        }
    }
    if let Ok(cflags) = env::var("DEP_NGINX_CFLAGS") {
        for flag in cflags.split_whitespace() {
            shim.flag(flag);
        }
    }
    shim.compile("jvm_route_shim");

    // The tests run the nginx binary that the bindings were generated from.
    if let Ok(build_dir) = env::var("DEP_NGINX_BUILD_DIR") {
        let binary = PathBuf::from(build_dir).join("nginx");
        println!("cargo::rustc-env=JVM_ROUTE_NGINX_BINARY={}", binary.display());
    }
}
