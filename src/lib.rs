//! ngx_http_upstream_jvm_route_module: sticky sessions for Java application servers on stock
//! nginx. The route is read from the session id (`JSESSIONID=<id>.<jvmRoute>`), and the request
//! goes to the upstream server tagged `srun_id=<jvmRoute>`; otherwise nginx balances as usual.
//!
//! This file holds the module statics only: the command table, the HTTP module context and
//! the symbols nginx's `load_module` reads. The parts, and the one way data flows between them:
//!
//! - [`conf`]: the parsed, immutable configuration (directive handlers, end-of-`http` checks);
//! - [`balancer`]: the nginx callbacks `init_upstream`, `init_peer`, `get`, `free`, which read
//!   the configuration and the worker's view, ask the rules, and take a peer;
//! - [`worker`]: the worker's view of each upstream's peers, checked against the peers'
//!   generation under their lock before every use;
//! - [`zone`]: the shared counters and runtime marks, and their lifetime across reloads;
//! - [`rules`]: the pure logic (session id, route, failover), with no nginx types;
//! - [`ffi`] and `shim.c`: string views, locks and peer helpers over nginx's C.
//!
//! Beside them, [`request`] (what is known of one request), [`status`] (the status location)
//! and [`variables`] (log variables and the 503 filter).

#![warn(missing_docs)]
// Every `unsafe` block says why it is sound; clippy enforces it (CI denies warnings).
#![warn(clippy::undocumented_unsafe_blocks)]

use std::ffi::{c_char, c_void};
use std::ptr::{addr_of, addr_of_mut, null, null_mut};

use ngx::ffi::{
    ngx_command_t, ngx_conf_t, ngx_http_module_t, ngx_module_t, ngx_str_t, ngx_uint_t,
    NGX_CONF_1MORE, NGX_CONF_ANY, NGX_CONF_NOARGS, NGX_CONF_TAKE1, NGX_CONF_TAKE12,
    NGX_HTTP_LOC_CONF, NGX_HTTP_LOC_CONF_OFFSET, NGX_HTTP_MAIN_CONF, NGX_HTTP_MAIN_CONF_OFFSET,
    NGX_HTTP_MODULE, NGX_HTTP_SRV_CONF_OFFSET, NGX_HTTP_UPS_CONF,
};
use ngx::http::{HttpModule, HttpModuleLocationConf, HttpModuleMainConf, HttpModuleServerConf};
use ngx::ngx_string;

pub mod balancer;
pub mod check;
pub mod conf;
pub mod ffi;
pub mod request;
pub mod rules;
pub mod state;
pub mod status;
pub mod variables;
pub mod worker;
pub mod zone;

/// The balancer's `init_upstream`, which the configuration installs in upstreams.
pub(crate) const INIT_UPSTREAM: unsafe extern "C" fn(
    *mut ngx_conf_t,
    *mut ngx::ffi::ngx_http_upstream_srv_conf_t,
) -> ngx::ffi::ngx_int_t = balancer::init_upstream;

/// The status location's content handler, which `jvm_route_status` installs.
pub(crate) const STATUS_HANDLER: unsafe extern "C" fn(
    *mut ngx::ffi::ngx_http_request_t,
) -> ngx::ffi::ngx_int_t = status::handler;

/// The module's name, as nginx knows it.
pub const MODULE_NAME: &str = "ngx_http_upstream_jvm_route_module";

/// Marker type through which `ngx` finds this module's configuration.
pub struct Module;

impl HttpModule for Module {
    fn module() -> &'static ngx_module_t {
        // SAFETY: the module static is only written by nginx while loading the module and
        // assigning its indices, before any configuration is read.
        unsafe { &*addr_of!(ngx_http_upstream_jvm_route_module) }
    }
}

// SAFETY: `create_main_conf` allocates `MainConf` in the http block.
unsafe impl HttpModuleMainConf for Module {
    type MainConf = conf::MainConf;
}

// SAFETY: `create_srv_conf` allocates `UpstreamConf` in every HTTP server and upstream block,
// so the slot at this module's ctx_index always holds one.
unsafe impl HttpModuleServerConf for Module {
    type ServerConf = conf::UpstreamConf;
}

// SAFETY: `create_loc_conf` allocates `LocationConf` in every location.
unsafe impl HttpModuleLocationConf for Module {
    type LocationConf = conf::LocationConf;
}

/// A directive of the `upstream {}` block that takes one or more arguments.
const fn upstream_command(name: ngx_str_t, set: CommandHandler) -> ngx_command_t {
    ngx_command_t {
        name,
        type_: (NGX_HTTP_UPS_CONF | NGX_CONF_1MORE) as ngx_uint_t,
        set: Some(set),
        conf: NGX_HTTP_SRV_CONF_OFFSET,
        offset: 0,
        post: null_mut(),
    }
}

/// A stock balancing method's directive: noted, then passed on with any arguments (the module
/// it goes to checks them).
const fn command(name: ngx_str_t, type_: u32, conf: usize, set: CommandHandler) -> ngx_command_t {
    ngx_command_t {
        name,
        type_: type_ as ngx_uint_t,
        set: Some(set),
        conf,
        offset: 0,
        post: null_mut(),
    }
}

const fn method_command(name: ngx_str_t) -> ngx_command_t {
    ngx_command_t {
        name,
        type_: (NGX_HTTP_UPS_CONF | NGX_CONF_ANY) as ngx_uint_t,
        set: Some(conf::directives::cmd_method),
        conf: NGX_HTTP_SRV_CONF_OFFSET,
        offset: 0,
        post: null_mut(),
    }
}

type CommandHandler =
    unsafe extern "C" fn(*mut ngx_conf_t, *mut ngx_command_t, *mut c_void) -> *mut c_char;

static mut COMMANDS: [ngx_command_t; 20] = [
    // Takes `srun_id=`, `max_busy=` and `drain` out of the stock `server` directive, then
    // passes it on.
    upstream_command(ngx_string!("server"), conf::directives::cmd_server),
    upstream_command(ngx_string!("jvm_route"), conf::directives::cmd_jvm_route),
    upstream_command(ngx_string!("jvm_route_cookie"), conf::cookie::cmd_jvm_route_cookie),
    // Places this balancer beneath `keepalive`, whatever the directive order; then passes on.
    upstream_command(ngx_string!("keepalive"), conf::directives::cmd_keepalive),
    // The stock balancing methods, noted as such (see `conf::init`); then passed on.
    method_command(ngx_string!("least_conn")),
    method_command(ngx_string!("hash")),
    method_command(ngx_string!("ip_hash")),
    method_command(ngx_string!("random")),
    ngx_command_t {
        name: ngx_string!("jvm_route_status"),
        type_: (NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS | NGX_CONF_TAKE12) as ngx_uint_t,
        set: Some(conf::directives::cmd_jvm_route_status),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: 0,
        post: null_mut(),
    },
    command(
        ngx_string!("check"),
        NGX_HTTP_UPS_CONF | NGX_CONF_ANY,
        NGX_HTTP_SRV_CONF_OFFSET,
        conf::directives::cmd_check,
    ),
    command(
        ngx_string!("check_http_send"),
        NGX_HTTP_UPS_CONF | NGX_CONF_TAKE1,
        NGX_HTTP_SRV_CONF_OFFSET,
        conf::directives::cmd_check_http_send,
    ),
    command(
        ngx_string!("check_http_expect_alive"),
        NGX_HTTP_UPS_CONF | NGX_CONF_1MORE,
        NGX_HTTP_SRV_CONF_OFFSET,
        conf::directives::cmd_check_http_expect_alive,
    ),
    command(
        ngx_string!("check_keepalive_requests"),
        NGX_HTTP_UPS_CONF | NGX_CONF_TAKE1,
        NGX_HTTP_SRV_CONF_OFFSET,
        conf::directives::cmd_check_keepalive_requests,
    ),
    command(
        ngx_string!("check_ssl_verify"),
        NGX_HTTP_UPS_CONF | NGX_CONF_TAKE1,
        NGX_HTTP_SRV_CONF_OFFSET,
        conf::directives::cmd_check_ssl_verify,
    ),
    command(
        ngx_string!("check_ssl_trusted_certificate"),
        NGX_HTTP_UPS_CONF | NGX_CONF_TAKE1,
        NGX_HTTP_SRV_CONF_OFFSET,
        conf::directives::cmd_check_ssl_trusted_certificate,
    ),
    command(
        ngx_string!("check_ssl_name"),
        NGX_HTTP_UPS_CONF | NGX_CONF_TAKE1,
        NGX_HTTP_SRV_CONF_OFFSET,
        conf::directives::cmd_check_ssl_name,
    ),
    command(
        ngx_string!("jvm_route_state"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        NGX_HTTP_MAIN_CONF_OFFSET,
        conf::directives::cmd_jvm_route_state,
    ),
    command(
        ngx_string!("check_shm_size"),
        NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
        NGX_HTTP_MAIN_CONF_OFFSET,
        conf::directives::cmd_check_shm_size,
    ),
    command(
        ngx_string!("check_status"),
        NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS | NGX_CONF_TAKE1,
        NGX_HTTP_LOC_CONF_OFFSET,
        conf::directives::cmd_check_status,
    ),
    ngx_command_t::empty(),
];

static MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: Some(variables::add_variables),
    postconfiguration: None,
    create_main_conf: Some(Module::create_main_conf),
    init_main_conf: Some(conf::init::init_main_conf),
    create_srv_conf: Some(Module::create_srv_conf),
    merge_srv_conf: None,
    create_loc_conf: Some(Module::create_loc_conf),
    merge_loc_conf: Some(Module::merge_loc_conf),
};

/// The module, as `load_module` finds it.
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut ngx_http_upstream_jvm_route_module: ngx_module_t = ngx_module_t {
    ctx: addr_of!(MODULE_CTX) as *mut _,
    commands: addr_of_mut!(COMMANDS) as *mut _,
    type_: NGX_HTTP_MODULE as ngx_uint_t,
    init_module: Some(init_module),
    init_process: Some(init_process),
    ..ngx_module_t::default()
};

/// A worker starts: its balancer's spare states, then its checks.
unsafe extern "C" fn init_process(cycle: *mut ngx::ffi::ngx_cycle_t) -> ngx::ffi::ngx_int_t {
    // SAFETY: nginx calls this in each new worker process with its cycle.
    unsafe {
        balancer::init_process(cycle);
        check::init_process(cycle)
    }
}

/// The cycle is complete (in the master, before its workers start): the previous cycle's
/// marks are handed over to it ([`zone::commit`]).
unsafe extern "C" fn init_module(cycle: *mut ngx::ffi::ngx_cycle_t) -> ngx::ffi::ngx_int_t {
    let tag = addr_of!(ngx_http_upstream_jvm_route_module).cast_mut().cast();
    // SAFETY: nginx calls this with the cycle it just initialised, whose predecessor's shared
    // memory it unmaps only after every module's `init_module`.
    let fresh = unsafe { zone::commit(cycle, tag) };
    // A fresh zone (nginx's start, a binary upgrade): the runtime marks of `jvm_route_state`.
    if let Some(fresh) = fresh {
        // SAFETY: as above; `fresh` is the cycle's zone.
        unsafe { state::restore(cycle, &fresh) };
    }
    ngx::ffi::NGX_OK as ngx::ffi::ngx_int_t
}

static FILTER_MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: None,
    postconfiguration: Some(variables::add_filters),
    create_main_conf: None,
    init_main_conf: None,
    create_srv_conf: None,
    merge_srv_conf: None,
    create_loc_conf: None,
    merge_loc_conf: None,
};

/// The response filter (503 for requests refused by `failover=off`). A module of its own
/// because filters must be installed after nginx's header and body filter modules have set up
/// the chains: this one is not in `ngx_module_order`, so nginx loads it last.
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut ngx_http_upstream_jvm_route_filter_module: ngx_module_t = ngx_module_t {
    ctx: addr_of!(FILTER_MODULE_CTX) as *mut _,
    type_: NGX_HTTP_MODULE as ngx_uint_t,
    ..ngx_module_t::default()
};

/// The modules in this shared object, as `ngx_load_module` reads them.
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut ngx_modules: [*const ngx_module_t; 3] = [
    addr_of!(ngx_http_upstream_jvm_route_module),
    addr_of!(ngx_http_upstream_jvm_route_filter_module),
    null(),
];

/// The names of the modules in this shared object.
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut ngx_module_names: [*const c_char; 3] = [
    c"ngx_http_upstream_jvm_route_module".as_ptr(),
    c"ngx_http_upstream_jvm_route_filter_module".as_ptr(),
    null(),
];

/// Load order: the main module goes before `ngx_http_upstream_module`, so that nginx offers it
/// the upstream `server` and `keepalive` directives first and runs its `init_main_conf` before
/// the upstream module initialises the balancers. The filter module is not listed: it goes
/// last.
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut ngx_module_order: [*const c_char; 3] =
    [c"ngx_http_upstream_jvm_route_module".as_ptr(), c"ngx_http_upstream_module".as_ptr(), null()];
