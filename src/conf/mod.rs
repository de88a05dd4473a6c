//! The parsed configuration: what the directives say, checked once and never changed after
//! the configuration is read. Directive handlers are in [`directives`]; the work done once all
//! upstreams are known (wrapping the balancers, checking the methods, laying out the shared
//! zone) is in [`init`]. Nothing here runs on the request path, and nothing here holds a
//! worker's state.

pub mod cookie;
pub mod directives;
pub mod init;

use std::ffi::c_char;
use std::ptr::NonNull;

use ngx::ffi::{
    ngx_array_t, ngx_conf_t, ngx_http_complex_value_t, ngx_http_upstream_init_peer_pt,
    ngx_http_upstream_init_pt, ngx_http_upstream_server_t, ngx_http_upstream_srv_conf_t,
    ngx_shm_zone_t, NGX_LOG_EMERG,
};
use ngx::ngx_conf_log_error;

use crate::rules::failover::Failover;
use crate::rules::route::{RouteMode, SrunIdError};
use crate::zone::Stats;

/// Where a request's session id is read.
#[derive(Debug)]
pub enum SessionSource {
    /// `$cookie_NAME`: every cookie of that name is a candidate, not only the first.
    Cookie(Box<[u8]>),
    /// Any other variable or complex value: its value is the one candidate.
    Value(*mut ngx_http_complex_value_t),
}

/// The `jvm_route` directive of one upstream.
#[derive(Debug)]
pub struct JvmRoute {
    /// Where the session id comes from.
    pub source: SessionSource,
    /// The session parameter's name in the URL (`;NAME=` and `?NAME=`), if it is looked for.
    pub url_name: Option<Box<[u8]>>,
    /// How a session id names its route.
    pub mode: RouteMode,
    /// Where a session goes when its server cannot take it.
    pub failover: Failover,
}

/// `jvm_route_cookie`: the route cookie that nginx sets, `NAME=.SRUN_ID` (Apache's form).
#[derive(Debug)]
pub struct RouteCookie {
    /// The cookie's name.
    pub name: Box<[u8]>,
    /// The attributes as configured, each with its leading `; `.
    pub attributes: Box<[u8]>,
}

/// Active health checks of one upstream (`check` and the directives that go with it).
#[derive(Debug)]
pub struct CheckConf {
    /// `check`'s parameters.
    pub spec: crate::rules::check::CheckSpec,
    /// `check_http_send` (or its default).
    pub send: Box<[u8]>,
    /// `check_http_expect_alive` as a mask of status classes (or its default).
    pub expect: u8,
    /// `type=https`: nginx's SSL context (an `ngx_ssl_t`, made at the end of `http {}`).
    pub ssl: *mut std::ffi::c_void,
    /// `check_ssl_verify on`: the server's certificate is verified.
    pub ssl_verify: bool,
    /// `check_ssl_name` (NUL-terminated): the name sent (SNI) and verified; else the host of
    /// the server's name.
    pub ssl_name: Option<Box<[u8]>>,
    /// `check_keepalive_requests`: the checks one connection carries (`type=http`).
    pub keepalive_requests: u32,
}

/// This module's configuration of one `upstream {}` block (and, unused, of every `server {}`).
#[derive(Default)]
pub struct UpstreamConf {
    /// The `jvm_route` directive, if the upstream has one.
    pub jvm_route: Option<JvmRoute>,
    /// The `jvm_route_cookie` directive, if the upstream has one.
    pub cookie: Option<RouteCookie>,
    /// Where `jvm_route_cookie` is, to report it if `jvm_route` is missing.
    cookie_position: Option<(String, usize)>,
    /// srun_id of each server, by its index in `uscf->servers`.
    pub srun_ids: Vec<Option<Box<[u8]>>>,
    /// Servers marked `drain`, by index in `uscf->servers`.
    pub drain: Vec<bool>,
    /// `slow_start=` of each server (seconds; 0: none), by index in `uscf->servers`.
    pub slow_start: Vec<u32>,
    /// Whether some server has `slow_start=`.
    pub has_slow_start: bool,
    /// Each server line's rank among identical lines of the upstream (part of its zone key).
    pub ranks: Vec<u32>,
    /// The stock balancing method's directive (`least_conn`, `hash`, `ip_hash`, `random`).
    pub method: Option<&'static str>,
    /// The balancer's `init_upstream` that this module wraps (`None`: round robin).
    pub original_init_upstream: ngx_http_upstream_init_pt,
    /// The balancer's per-request `init` that this module wraps (set at `init_upstream`).
    pub original_init_peer: ngx_http_upstream_init_peer_pt,
    /// `keepalive`'s `init_upstream`, when `keepalive` wrapped this module.
    pub keepalive_init_upstream: ngx_http_upstream_init_pt,
    /// The `init_upstream` that a stock method directive (`least_conn`, `hash`, `ip_hash`,
    /// `random`) set: the methods whose per-request data begins with round robin's.
    pub stock_method: ngx_http_upstream_init_pt,
    /// The method, if it reads the weights only when the peers change (`random`,
    /// `hash ... consistent`): runtime weights are refused then.
    pub fixed_weights: Option<&'static str>,
    /// This upstream's index among those with `jvm_route` (its record in the zone, and its
    /// view in a worker).
    pub index: usize,
    /// The zone slot of this upstream's first server line; line `i` has slot `slot_base + i`.
    pub slot_base: usize,
    /// Whether the session cookies that its servers issue are checked against their srun_ids
    /// (the session id comes from a cookie, and some server has a srun_id).
    pub checks_issued: bool,
    /// `check`, once the upstream is read (with `check_http_send` and
    /// `check_http_expect_alive` folded in).
    pub check: Option<CheckConf>,
    /// `check_http_send`, as read.
    pub check_send: Option<Box<[u8]>>,
    /// `check_http_expect_alive`, as read.
    pub check_expect: Option<u8>,
    /// `check_keepalive_requests`, as read.
    pub check_keepalive: Option<u32>,
    /// `check_ssl_verify`, as read.
    pub check_ssl_verify: Option<bool>,
    /// `check_ssl_trusted_certificate`, as read.
    pub check_ssl_trusted: Option<Box<[u8]>>,
    /// `check_ssl_name`, as read.
    pub check_ssl_name: Option<Box<[u8]>>,
    /// Where `check` and its companions are: (directive, file, line) of the first one, to
    /// report a companion without `check` or an upstream without `jvm_route`.
    pub check_position: Option<(&'static str, String, usize)>,
    /// The shared zone of the counters and runtime marks: set by `init` only, to the zone it
    /// declared (which `stats` relies on).
    zone: Option<NonNull<ngx_shm_zone_t>>,
}

impl UpstreamConf {
    /// The srun_id of server line `line`.
    pub fn srun_id(&self, line: usize) -> Option<&[u8]> {
        self.srun_ids.get(line).and_then(|s| s.as_deref())
    }

    /// The counters and runtime marks, once nginx initialised the zone.
    pub fn stats(&self) -> Option<Stats> {
        // SAFETY: only `init` sets `zone`, to the zone `zone::add_zone` declared for this
        // configuration.
        self.zone.and_then(|z| unsafe { crate::zone::from_zone(z.as_ptr()) })
    }
}

/// This module's configuration of the `http {}` block.
#[derive(Default)]
pub struct MainConf {
    /// The shared zone of the counters and runtime marks (none without `jvm_route`): set by
    /// `init` only, to the zone it declared.
    zone: Option<NonNull<ngx_shm_zone_t>>,
    /// The upstreams with `jvm_route`, by index.
    pub upstreams: Vec<*mut ngx_http_upstream_srv_conf_t>,
    /// Whether some upstream refuses requests (`failover=off`), sets a route cookie, or checks
    /// the routes its servers issue: the response header filter is needed.
    pub filtering: bool,
    /// Whether some upstream refuses requests (`failover=off`): the body filter (which
    /// replaces nginx's 502 page) is needed too.
    pub refusing: bool,
    /// Every `jvm_route_status` with an upstream name, to check once all upstreams are known.
    status_names: Vec<(Box<[u8]>, String, usize)>,
    /// Whether some location has `jvm_route_status` (its form bodies are limited while read).
    pub has_status: bool,
    /// Whether some upstream has `check`: every worker then runs the checks.
    pub checks: bool,
    /// `jvm_route_state`: the file the runtime marks are kept in (full path).
    pub state_file: Option<std::path::PathBuf>,
    /// Every location with `jvm_route_status`, with its server block's core configuration:
    /// the server's names are copied into the location's `StatusConf` at the end of `http {}`.
    pub status_servers: Vec<(*mut LocationConf, *const ngx::ffi::ngx_http_core_srv_conf_t)>,
}

impl MainConf {
    /// The counters and runtime marks, once nginx initialised the zone.
    pub fn stats(&self) -> Option<Stats> {
        // SAFETY: only `init` sets `zone`, to the zone `zone::add_zone` declared for this
        // configuration.
        self.zone.and_then(|z| unsafe { crate::zone::from_zone(z.as_ptr()) })
    }
}

/// `jvm_route_status` of one location.
#[derive(Debug, Default, Clone)]
pub struct StatusConf {
    /// Only this upstream, or all with `jvm_route`.
    pub upstream: Option<Box<[u8]>>,
    /// Whether POST requests may drain, undrain, mark down and up.
    pub control: bool,
    /// The exact `server_name`s of the location's server block (no wildcard, no regular
    /// expression), copied at the end of `http {}`: nginx keeps its own list in the
    /// configuration's temporary pool, gone once the configuration is read.
    pub server_names: Vec<Box<[u8]>>,
    /// The format when the request names none (`check_status html|csv|json`).
    pub default_format: Option<&'static [u8]>,
}

/// This module's configuration of a location.
#[derive(Debug, Default)]
pub struct LocationConf {
    /// The status page served here, if any.
    pub status: Option<StatusConf>,
}

impl ngx::http::Merge for LocationConf {
    fn merge(&mut self, _prev: &Self) -> Result<(), ngx::http::MergeConfigError> {
        // A status page belongs to the location that names it, never to nested ones.
        Ok(())
    }
}

/// Why a directive is rejected. Messages read like nginx's own; nginx appends the file and line.
#[derive(Debug, thiserror::Error)]
pub enum ConfError {
    /// A bad `srun_id=` value.
    #[error("invalid srun_id \"{value}\" in \"server\" directive: srun_id {reason}")]
    SrunId {
        /// The value as written.
        value: String,
        /// What is wrong with it.
        reason: SrunIdError,
    },
    /// `srun_id=` twice on one line.
    #[error("duplicate srun_id in \"server\" directive")]
    DuplicateSrunId,
    /// A bad `slow_start=` value.
    #[error("invalid slow_start \"{0}\" in \"server\" directive: a time from 1s to 1h (e.g. 30s)")]
    SlowStart(String),
    /// A bad `max_busy=` value.
    #[error("invalid max_busy \"{0}\" in \"server\" directive")]
    MaxBusy(String),
    /// `max_busy=` together with `max_conns=`.
    #[error("\"max_busy\" and \"max_conns\" are both set in \"server\" directive")]
    MaxBusyAndMaxConns,
    /// `srun_id=` and a different native `route=`.
    #[error("\"srun_id\" and \"route\" differ in \"server\" directive")]
    SrunIdAndRoute,
    /// An option given twice.
    #[error("duplicate option \"{0}\" in \"jvm_route\" directive")]
    DuplicateOption(String),
    /// A bad `failover=` value.
    #[error(
        "invalid failover \"{0}\" in \"jvm_route\" directive: use \"balance\", \"consistent\" or \"off\""
    )]
    FailoverMode(String),
    /// A bad `jvm_route_status` argument.
    #[error("invalid parameter \"{0}\" in \"jvm_route_status\" directive")]
    StatusParameter(String),
    /// An option that `jvm_route` does not know.
    #[error("invalid parameter \"{0}\" in \"jvm_route\" directive")]
    UnknownOption(String),
    /// A SOURCE without any variable.
    #[error("invalid session source \"{0}\" in \"jvm_route\" directive: it has no variable (e.g. $cookie_JSESSIONID)")]
    SourceWithoutVariable(String),
    /// `$cookie_` with no name.
    #[error("invalid session source \"{0}\" in \"jvm_route\" directive: the cookie name is empty")]
    EmptyCookieName(String),
    /// A SOURCE that nginx cannot compile.
    #[error("invalid session source \"{0}\" in \"jvm_route\" directive")]
    BadSource(String),
    /// A bad URL parameter name after `|`.
    #[error("invalid URL parameter name \"{0}\" in \"jvm_route\" directive: use letters, digits, \"_\", \"-\" or \".\"")]
    UrlName(String),
    /// A bad cookie name.
    #[error("invalid cookie name \"{0}\" in \"jvm_route_cookie\" directive")]
    CookieName(String),
    /// A bad or repeated `jvm_route_cookie` parameter.
    #[error("invalid parameter \"{0}\" in \"jvm_route_cookie\" directive")]
    CookieParameter(String),
    /// `samesite=none` without `secure`.
    #[error("\"samesite=none\" without \"secure\" in \"jvm_route_cookie\" directive: browsers drop such a cookie")]
    SameSiteNoneInsecure,
    /// No other module handles a stock directive this module passes on.
    #[error("unknown directive \"{0}\"")]
    NoNextHandler(String),
    /// nginx ran out of memory.
    #[error("out of memory")]
    NoMemory,
}

/// Logs `err` as an `[emerg]` at the current file and line and returns `NGX_CONF_ERROR`.
pub(crate) fn conf_error(cf: *mut ngx_conf_t, err: impl std::fmt::Display) -> *mut c_char {
    ngx_conf_log_error!(NGX_LOG_EMERG, cf, "{err}");
    ngx::core::NGX_CONF_ERROR as *mut c_char
}

/// The servers of an upstream, as `ngx_http_upstream_server_t`.
///
/// # Safety
/// `uscf` must be an upstream configuration made by nginx.
pub unsafe fn servers(uscf: &ngx_http_upstream_srv_conf_t) -> &[ngx_http_upstream_server_t] {
    // SAFETY: per the function contract, `servers` is null or an array of
    // `ngx_http_upstream_server_t` that lives as long as the configuration.
    unsafe { uscf.servers.as_ref().map_or(&[], |a: &ngx_array_t| a.as_slice()) }
}

/// The name of an upstream.
///
/// # Safety
/// `uscf` must be an upstream configuration made by nginx.
pub unsafe fn upstream_name(uscf: &ngx_http_upstream_srv_conf_t) -> &[u8] {
    // SAFETY: per the function contract; the name lives as long as the configuration.
    unsafe { crate::ffi::str_bytes(&uscf.host) }
}

/// The name of a configured server, as written.
///
/// # Safety
/// `server` must be a server of an upstream configuration made by nginx.
pub unsafe fn server_name(server: &ngx_http_upstream_server_t) -> &[u8] {
    // SAFETY: per the function contract; the name lives as long as the configuration.
    unsafe { crate::ffi::str_bytes(&server.name) }
}
