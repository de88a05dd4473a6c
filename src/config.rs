//! Configuration: the `jvm_route` directive, the pass-through of the stock `server` and
//! `keepalive` directives, and the per-upstream configuration they fill in.
//!
//! nginx offers an upstream `server` line to this module first (see `ngx_module_order` in
//! `lib.rs`). The handler takes out the parameters it owns (`srun_id=`, `max_busy=`), hands the
//! rest to the next module's `server` handler so that nginx parses and reports everything else
//! itself, and then records the srun_id against the index of the server just added.

use std::cell::UnsafeCell;
use std::ffi::{c_char, c_void};
use std::ptr::{self, null_mut};

use ngx::core::Pool;
use ngx::core::Status;
use ngx::ffi::{
    ngx_array_t, ngx_command_t, ngx_conf_t, ngx_http_compile_complex_value,
    ngx_http_compile_complex_value_t, ngx_http_complex_value_t, ngx_http_upstream_init_peer_pt,
    ngx_http_upstream_init_pt, ngx_http_upstream_main_conf_t, ngx_http_upstream_server_t,
    ngx_http_upstream_srv_conf_t, ngx_int_t, ngx_module_t, ngx_pnalloc, ngx_str_t, ngx_uint_t,
    NGX_CONF_1MORE, NGX_CONF_2MORE, NGX_CONF_ANY, NGX_CONF_FLAG, NGX_CONF_NOARGS, NGX_CONF_TAKE1,
    NGX_CONF_TAKE2, NGX_CONF_TAKE3, NGX_CONF_TAKE4, NGX_CONF_TAKE5, NGX_CONF_TAKE6, NGX_CONF_TAKE7,
    NGX_HTTP_MODULE, NGX_LOG_EMERG, NGX_LOG_WARN,
};
use ngx::http::{
    HttpModule, HttpModuleLocationConf, HttpModuleMainConf, HttpModuleServerConf,
    NgxHttpCoreModule, NgxHttpUpstreamModule,
};
use ngx::{ngx_conf_log_error, ngx_log_error};

use crate::balancer;
use crate::failover::Failover;
use crate::route::{validate_srun_id, RouteMode, SrunIdError};
use crate::upstream::PeerRoutes;
use crate::Module;

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

/// This module's configuration of one `upstream {}` block (and, unused, of every `server {}`).
#[derive(Default)]
pub struct UpstreamConf {
    /// The `jvm_route` directive, if the upstream has one.
    pub jvm_route: Option<JvmRoute>,
    /// srun_id of each server, by its index in `uscf->servers`.
    pub srun_ids: Vec<Option<Box<[u8]>>>,
    /// The balancer's `init_upstream` that this module wraps (`None`: round robin).
    pub original_init_upstream: ngx_http_upstream_init_pt,
    /// The balancer's per-request `init` that this module wraps.
    pub original_init_peer: ngx_http_upstream_init_peer_pt,
    /// `keepalive`'s `init_upstream`, when `keepalive` wrapped this module.
    pub keepalive_init_upstream: ngx_http_upstream_init_pt,
    /// Servers marked `drain`, by index in `uscf->servers`.
    pub drain: Vec<bool>,
    /// This upstream's index among those with `jvm_route` (its statistics).
    pub index: usize,
    /// The first statistics slot of this upstream's peers.
    pub slot_base: usize,
    /// Slots of primary peers, then of backup peers, from `slot_base` on.
    pub primary_slots: usize,
    /// See `primary_slots`.
    pub backup_slots: usize,
    /// The worker's view of the current peer list, built on first use.
    pub routes: UnsafeCell<Option<PeerRoutes>>,
    /// The worker's spare request states.
    pub spares: crate::balancer::Spares,
    /// The shared memory zone of the counters and runtime marks.
    pub zone: Option<std::ptr::NonNull<ngx::ffi::ngx_shm_zone_t>>,
}

/// This module's configuration of the `http {}` block.
#[derive(Default)]
pub struct MainConf {
    /// The shared memory zone of the counters and runtime marks (null without `jvm_route`).
    pub zone: Option<std::ptr::NonNull<ngx::ffi::ngx_shm_zone_t>>,
    /// The upstreams with `jvm_route`, in statistics order.
    pub upstreams: Vec<*mut ngx_http_upstream_srv_conf_t>,
    /// Whether some upstream refuses requests (`failover=off`): the 503 filter is needed.
    pub refusing: bool,
    /// Every `jvm_route_status` with an upstream name, to check once all upstreams are known.
    status_names: Vec<(Box<[u8]>, String, usize)>,
}

impl MainConf {
    /// The counters and runtime marks, once nginx initialised the zone.
    pub fn stats(&self) -> Option<crate::stats::Stats> {
        // SAFETY: the zone was declared by `add_zone`.
        self.zone.and_then(|z| unsafe { crate::stats::from_zone(z.as_ptr()) })
    }
}

/// `jvm_route_status` of one location.
#[derive(Debug, Default, Clone)]
pub struct StatusConf {
    /// Only this upstream, or all with `jvm_route`.
    pub upstream: Option<Box<[u8]>>,
    /// Whether POST requests may drain, undrain, mark down and up.
    pub control: bool,
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
    /// The module found no other handler to pass a stock directive to.
    #[error("no module handles \"{0}\" after {module}", module = crate::MODULE_NAME)]
    NoNextHandler(String),
    /// nginx ran out of memory.
    #[error("out of memory")]
    NoMemory,
}

/// Logs `err` as an `[emerg]` at the current file and line and returns `NGX_CONF_ERROR`.
fn conf_error(cf: *mut ngx_conf_t, err: ConfError) -> *mut c_char {
    ngx_conf_log_error!(NGX_LOG_EMERG, cf, "{err}");
    ngx::core::NGX_CONF_ERROR as *mut c_char
}

/// The arguments of the directive being handled, name first.
///
/// # Safety
/// `cf` must be the `ngx_conf_t` nginx passed to a directive handler.
unsafe fn args<'a>(cf: *mut ngx_conf_t) -> &'a mut [ngx_str_t] {
    // SAFETY: during a directive handler `cf->args` is an array of `ngx_str_t`, name first.
    unsafe { (*(*cf).args).as_slice_mut::<ngx_str_t>() }
}

/// The bytes of an `ngx_str_t`, for as long as the caller says they live.
///
/// # Safety
/// `s` must be empty or point to `len` bytes that stay valid and unchanged for `'a`.
pub unsafe fn str_bytes_for<'a>(s: ngx_str_t) -> &'a [u8] {
    if s.len == 0 || s.data.is_null() {
        return &[];
    }
    // SAFETY: per the function contract.
    unsafe { std::slice::from_raw_parts(s.data, s.len) }
}

/// The bytes of an `ngx_str_t` from nginx (empty for a null one), borrowed with it.
pub fn str_bytes(s: &ngx_str_t) -> &[u8] {
    // SAFETY: a non-empty ngx_str_t from nginx points to `len` readable bytes, which live at
    // least as long as the structure that holds it.
    unsafe { str_bytes_for(*s) }
}

fn lossy(s: &[u8]) -> String {
    String::from_utf8_lossy(s).into_owned()
}

/// Handler of the upstream `server` directive: see the module documentation above.
///
/// # Safety
/// Called by nginx with a valid `cf` inside `upstream {}`; `conf` is this module's
/// `UpstreamConf` of that upstream.
pub unsafe extern "C" fn cmd_server(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: per the function contract.
    let (ucf, args) = unsafe { (&mut *conf.cast::<UpstreamConf>(), args(cf)) };

    let mut srun_id: Option<Box<[u8]>> = None;
    let mut native_route: Option<Box<[u8]>> = None;
    let mut has_max_conns = false;
    let mut has_max_busy = false;
    let mut drain = false;
    let mut kept = 2;

    for i in 2..args.len() {
        let arg = args[i];
        let value = str_bytes(&arg);
        if let Some(id) = value.strip_prefix(b"srun_id=") {
            if srun_id.is_some() {
                return conf_error(cf, ConfError::DuplicateSrunId);
            }
            if let Err(reason) = validate_srun_id(id) {
                return conf_error(cf, ConfError::SrunId { value: lossy(id), reason });
            }
            srun_id = Some(id.into());
            continue;
        }
        if let Some(n) = value.strip_prefix(b"max_busy=") {
            // The original module's name for what nginx calls max_conns.
            // nginx's ngx_atoi takes at most NGX_MAX_INT_T_VALUE; check here so that an error
            // names max_busy, which the user wrote, not the max_conns it becomes.
            let fits = std::str::from_utf8(n)
                .ok()
                .filter(|t| t.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|t| t.parse::<isize>().ok())
                .is_some();
            if !fits {
                return conf_error(cf, ConfError::MaxBusy(lossy(n)));
            }
            // SAFETY: `cf->pool` is the configuration pool.
            match unsafe { pool_string(cf, &[b"max_conns=", n]) } {
                Some(s) => args[kept] = s,
                None => return conf_error(cf, ConfError::NoMemory),
            }
            has_max_busy = true;
            kept += 1;
            continue;
        }
        if value == b"drain" {
            // Taken here on every nginx version (nginx >= 1.29.6 also has its own), so that
            // drain behaves the same everywhere and can be undone at run time.
            drain = true;
            continue;
        }
        if value.starts_with(b"max_conns=") {
            has_max_conns = true;
        }
        if cfg!(nginx1_29_6) {
            if let Some(route) = value.strip_prefix(b"route=") {
                // nginx >= 1.29.6 parses route= itself; it names the route for us as well.
                native_route = Some(route.into());
            }
        }
        args[kept] = arg;
        kept += 1;
    }
    if has_max_busy && has_max_conns {
        return conf_error(cf, ConfError::MaxBusyAndMaxConns);
    }
    match (&srun_id, native_route) {
        (Some(a), Some(b)) if *a != b => return conf_error(cf, ConfError::SrunIdAndRoute),
        (None, Some(route)) if !route.is_empty() => srun_id = Some(route),
        _ => {}
    }
    // SAFETY: `cf->args` has at least `kept` elements; shrinking nelts only hides the tail.
    unsafe { (*(*cf).args).nelts = kept };

    // SAFETY: `cmd` and `cf` come from nginx for this directive.
    let rv = unsafe { forward_to_next_module(cf, cmd) };
    if rv != ngx::core::NGX_CONF_OK {
        return rv;
    }

    // SAFETY: `cf` is the live configuration nginx passed to this handler.
    let Some(uscf) = NgxHttpUpstreamModule::server_conf(unsafe { &*cf }) else {
        return ngx::core::NGX_CONF_ERROR as *mut c_char;
    };
    // SAFETY: inside `upstream {}` the upstream module's `servers` array exists; the server
    // just added is its last element.
    let count = unsafe { uscf.servers.as_ref() }.map_or(0, |a| a.nelts);
    if count == 0 {
        return ngx::core::NGX_CONF_ERROR as *mut c_char;
    }
    ucf.srun_ids.resize(count, None);
    ucf.srun_ids[count - 1] = srun_id;
    ucf.drain.resize(count, false);
    ucf.drain[count - 1] = drain;
    ngx::core::NGX_CONF_OK
}

/// Handler of `keepalive` inside `upstream {}`: slots this module's balancer in beneath
/// keepalive, so that keepalive sees the peer this module picks and reuses its connections.
///
/// `keepalive` wraps whatever balancer is configured when its directive is read, and a
/// `jvm_route` wrapper installed later would sit above it, outside its connection cache. So
/// before passing the directive on, this handler puts the module's `init_upstream` in place;
/// keepalive then wraps it. Upstreams without `jvm_route` get a pure pass-through.
///
/// # Safety
/// Called by nginx with a valid `cf` inside `upstream {}`.
pub unsafe extern "C" fn cmd_keepalive(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: per the function contract.
    let ucf = unsafe { &mut *conf.cast::<UpstreamConf>() };
    // SAFETY: `cf` is the live configuration nginx passed to this handler.
    let Some(uscf) = NgxHttpUpstreamModule::server_conf_mut(unsafe { &*cf }) else {
        return ngx::core::NGX_CONF_ERROR as *mut c_char;
    };

    let below = uscf.peer.init_upstream;
    uscf.peer.init_upstream = Some(balancer::init_upstream);

    // SAFETY: `cmd` and `cf` come from nginx for this directive.
    let rv = unsafe { forward_to_next_module(cf, cmd) };
    if rv != ngx::core::NGX_CONF_OK {
        uscf.peer.init_upstream = below;
        return rv;
    }
    let ours = Some(balancer::init_upstream as unsafe extern "C" fn(_, _) -> ngx_int_t);
    if uscf.peer.init_upstream.map(|f| f as usize) == ours.map(|f| f as usize) {
        // This keepalive does not wrap init_upstream (nginx >= 1.29.x wraps every upstream's
        // per-request init at the end of http{} instead, which is above this module anyway):
        // leave the directive as it was.
        uscf.peer.init_upstream = below;
        return ngx::core::NGX_CONF_OK;
    }
    ucf.original_init_upstream = below;
    ucf.keepalive_init_upstream = uscf.peer.init_upstream;
    ngx::core::NGX_CONF_OK
}

/// Handler of `jvm_route SOURCE[|URL_NAME] [reverse] [failover=balance|consistent|off];`.
///
/// # Safety
/// Called by nginx with a valid `cf` inside `upstream {}`; `conf` is this module's
/// `UpstreamConf` of that upstream.
pub unsafe extern "C" fn cmd_jvm_route(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: per the function contract.
    let (ucf, args) = unsafe { (&mut *conf.cast::<UpstreamConf>(), args(cf)) };
    if ucf.jvm_route.is_some() {
        return c"is duplicate".as_ptr().cast_mut();
    }
    let mut mode = RouteMode::Prefix;
    let mut failover = Failover::Balance;
    let mut seen: Vec<&[u8]> = Vec::new();
    for option in &args[2..] {
        let option = str_bytes(option);
        let (name, value) = match option.iter().position(|&b| b == b'=') {
            Some(eq) => (&option[..eq], Some(&option[eq + 1..])),
            None => (option, None),
        };
        if seen.contains(&name) {
            return conf_error(cf, ConfError::DuplicateOption(lossy(name)));
        }
        seen.push(name);
        match (name, value) {
            (b"reverse", None) => mode = RouteMode::AfterFirstDot,
            (b"failover", Some(b"balance")) => failover = Failover::Balance,
            (b"failover", Some(b"consistent")) => failover = Failover::Consistent,
            (b"failover", Some(b"off")) => failover = Failover::Off,
            (b"failover", Some(other)) => {
                return conf_error(cf, ConfError::FailoverMode(lossy(other)));
            }
            _ => return conf_error(cf, ConfError::UnknownOption(lossy(option))),
        }
    }

    let spec = str_bytes(&args[1]);
    let (source_text, url_name) = match spec.iter().position(|&b| b == b'|') {
        Some(bar) => (&spec[..bar], Some(&spec[bar + 1..])),
        None => (spec, None),
    };
    if let Some(name) = url_name {
        let valid = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.');
        if name.is_empty() || !name.iter().all(valid) {
            return conf_error(cf, ConfError::UrlName(lossy(name)));
        }
    }

    let source = match parse_source(cf, source_text) {
        Ok(source) => source,
        Err(err) => return conf_error(cf, err),
    };
    let url_name = match (url_name, &source) {
        (Some(name), _) => Some(name.into()),
        // Without `|NAME`, the URL parameter has the cookie's name (JSESSIONID -> jsessionid;
        // names compare case-insensitively).
        (None, SessionSource::Cookie(name)) => Some(name.clone()),
        (None, SessionSource::Value(_)) => None,
    };

    ucf.jvm_route = Some(JvmRoute { source, url_name, mode, failover });
    ngx::core::NGX_CONF_OK
}

/// Parses SOURCE: `$cookie_NAME`, or any other complex value with at least one variable.
fn parse_source(cf: *mut ngx_conf_t, text: &[u8]) -> Result<SessionSource, ConfError> {
    if let Some(name) = text.strip_prefix(b"$cookie_") {
        if name.is_empty() {
            return Err(ConfError::EmptyCookieName(lossy(text)));
        }
        let plain = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-');
        if name.iter().all(plain) {
            return Ok(SessionSource::Cookie(name.into()));
        }
    }
    if !text.contains(&b'$') {
        return Err(ConfError::SourceWithoutVariable(lossy(text)));
    }

    // SAFETY: `cf->pool` is the configuration pool; the compiled value lives as long as the
    // configuration, which outlives every request that reads it.
    unsafe {
        let pool = (*cf).pool;
        let Some(value) = pool_string(cf, &[text]) else { return Err(ConfError::NoMemory) };
        let value_ptr = ngx::ffi::ngx_pcalloc(pool, size_of::<ngx_str_t>()).cast::<ngx_str_t>();
        let cv = ngx::ffi::ngx_pcalloc(pool, size_of::<ngx_http_complex_value_t>())
            .cast::<ngx_http_complex_value_t>();
        if value_ptr.is_null() || cv.is_null() {
            return Err(ConfError::NoMemory);
        }
        *value_ptr = value;
        let mut ccv: ngx_http_compile_complex_value_t = std::mem::zeroed();
        ccv.cf = cf;
        ccv.value = value_ptr;
        ccv.complex_value = cv;
        if ngx_http_compile_complex_value(&mut ccv) != Status::NGX_OK.0 {
            return Err(ConfError::BadSource(lossy(text)));
        }
        if (*cv).lengths.is_null() {
            return Err(ConfError::SourceWithoutVariable(lossy(text)));
        }
        Ok(SessionSource::Value(cv))
    }
}

/// Concatenates `parts` into a NUL-terminated string in the configuration pool.
///
/// # Safety
/// `cf` must be a valid `ngx_conf_t`.
unsafe fn pool_string(cf: *mut ngx_conf_t, parts: &[&[u8]]) -> Option<ngx_str_t> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    // SAFETY: `cf->pool` is valid; the allocation has room for `len + 1` bytes.
    unsafe {
        let data = ngx_pnalloc((*cf).pool, len + 1).cast::<u8>();
        if data.is_null() {
            return None;
        }
        let mut at = 0;
        for part in parts {
            ptr::copy_nonoverlapping(part.as_ptr(), data.add(at), part.len());
            at += part.len();
        }
        *data.add(len) = 0;
        Some(ngx_str_t { len, data })
    }
}

/// Hands the current directive to the next HTTP module (after this one) that has a command of
/// the same name for this context, exactly as `ngx_conf_handler` would have.
///
/// # Safety
/// `cf` and `cmd` must be those nginx passed to this module's handler.
unsafe fn forward_to_next_module(cf: *mut ngx_conf_t, cmd: *mut ngx_command_t) -> *mut c_char {
    // SAFETY: per the function contract; `cf->cycle->modules` is a NULL-terminated array.
    unsafe {
        let name = str_bytes(&(*cmd).name);
        let cycle = (*cf).cycle;
        let this = Module::module() as *const ngx_module_t;
        let modules = (*cycle).modules;
        let mut found_self = false;
        let mut i = 0;
        while !(*modules.add(i)).is_null() {
            let module = *modules.add(i);
            i += 1;
            if ptr::eq(module, this) {
                found_self = true;
                continue;
            }
            if !found_self
                || (*module).type_ != NGX_HTTP_MODULE as ngx_uint_t
                || (*module).commands.is_null()
            {
                continue;
            }
            let mut next = (*module).commands;
            while (*next).name.len != 0 {
                if str_bytes(&(*next).name) == name && (*next).type_ & (*cf).cmd_type != 0 {
                    if !argument_count_fits((*next).type_, (*(*cf).args).nelts) {
                        ngx_conf_log_error!(
                            NGX_LOG_EMERG,
                            cf,
                            "invalid number of arguments in \"{}\" directive",
                            lossy(name)
                        );
                        return ngx::core::NGX_CONF_ERROR as *mut c_char;
                    }
                    let Some(set) = (*next).set else { break };
                    let confp =
                        *((*cf).ctx.cast::<u8>().add((*next).conf).cast::<*mut *mut c_void>());
                    let conf =
                        if confp.is_null() { null_mut() } else { *confp.add((*module).ctx_index) };
                    return set(cf, next, conf);
                }
                next = next.add(1);
            }
        }
        conf_error(cf, ConfError::NoNextHandler(lossy(name)))
    }
}

/// nginx's own argument-count check (`ngx_conf_handler`), for a directive this module forwards.
fn argument_count_fits(cmd_type: ngx_uint_t, nelts: ngx_uint_t) -> bool {
    const TAKE: [u32; 8] = [
        NGX_CONF_NOARGS,
        NGX_CONF_TAKE1,
        NGX_CONF_TAKE2,
        NGX_CONF_TAKE3,
        NGX_CONF_TAKE4,
        NGX_CONF_TAKE5,
        NGX_CONF_TAKE6,
        NGX_CONF_TAKE7,
    ];
    let has = |flag: u32| cmd_type & flag as ngx_uint_t != 0;
    if has(NGX_CONF_ANY) {
        true
    } else if has(NGX_CONF_FLAG) {
        nelts == 2
    } else if has(NGX_CONF_1MORE) {
        nelts >= 2
    } else if has(NGX_CONF_2MORE) {
        nelts >= 3
    } else {
        TAKE.get(nelts.wrapping_sub(1)).is_some_and(|&flag| has(flag))
    }
}

/// Handler of `jvm_route_status [UPSTREAM] [control];` in a location.
///
/// # Safety
/// Called by nginx with a valid `cf` inside a location; `conf` is this module's
/// `LocationConf` of it.
pub unsafe extern "C" fn cmd_jvm_route_status(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: per the function contract.
    let (lcf, args) = unsafe { (&mut *conf.cast::<LocationConf>(), args(cf)) };
    if lcf.status.is_some() {
        return c"is duplicate".as_ptr().cast_mut();
    }
    let mut status = StatusConf::default();
    for arg in &args[1..] {
        match str_bytes(arg) {
            b"control" if !status.control => status.control = true,
            name if status.upstream.is_none()
                && !name.is_empty()
                && !name.contains(&b'$')
                && name != b"control" =>
            {
                status.upstream = Some(name.into())
            }
            other => return conf_error(cf, ConfError::StatusParameter(lossy(other))),
        }
    }
    if let Some(name) = &status.upstream {
        // Upstreams may be defined further down; checked at the end of `http {}`.
        // SAFETY: `cf` is valid; `conf_file` names the file being read.
        let (file, line) = unsafe { conf_position(cf) };
        // SAFETY: as above.
        if let Some(main) = Module::main_conf_mut(unsafe { &*cf }) {
            main.status_names.push((name.clone(), file, line));
        }
    }
    lcf.status = Some(status);

    // SAFETY: `cf` is inside a location, whose core configuration takes the content handler.
    match NgxHttpCoreModule::location_conf_mut(unsafe { &*cf }) {
        Some(clcf) => {
            clcf.handler = Some(crate::status::handler);
            ngx::core::NGX_CONF_OK
        }
        None => ngx::core::NGX_CONF_ERROR as *mut c_char,
    }
}

/// The file and line being read.
///
/// # Safety
/// `cf` must be valid and reading a file.
unsafe fn conf_position(cf: *mut ngx_conf_t) -> (String, usize) {
    // SAFETY: per the function contract.
    unsafe {
        let file = (*cf).conf_file;
        if file.is_null() {
            return (String::new(), 0);
        }
        (lossy(str_bytes(&(*file).file.name)), (*file).line)
    }
}

/// Runs before the upstream module initialises the balancers (this module is loaded before
/// it): wraps the balancer of every upstream that has `jvm_route`, whatever the directive
/// order; lays out the shared statistics; checks the upstream names of `jvm_route_status`;
/// and warns about srun_ids that nothing reads.
///
/// # Safety
/// Called by nginx at the end of the `http {}` block with a valid `cf`; `conf` is this
/// module's `MainConf`.
pub unsafe extern "C" fn init_main_conf(cf: *mut ngx_conf_t, conf: *mut c_void) -> *mut c_char {
    // SAFETY: per the function contract.
    let main = unsafe { &mut *conf.cast::<MainConf>() };
    // SAFETY: `cf` is valid; the upstream module's main configuration exists in http{}.
    let Some(umcf) = (unsafe { NgxHttpUpstreamModule::main_conf(&*cf) }) else {
        return ngx::core::NGX_CONF_OK;
    };
    let umcf: &ngx_http_upstream_main_conf_t = umcf;
    // SAFETY: `upstreams` is an array of `ngx_http_upstream_srv_conf_t *`.
    let upstreams = unsafe { umcf.upstreams.as_slice::<*mut ngx_http_upstream_srv_conf_t>() };

    let mut slots = 0;
    let mut drained = Vec::new();
    let mut parts: Vec<Vec<u8>> = Vec::new();
    for &uscf_ptr in upstreams {
        // SAFETY: every element is a valid upstream configuration.
        let uscf = unsafe { &mut *uscf_ptr };
        let Some(ucf) = Module::server_conf_mut(uscf) else { continue };
        if ucf.jvm_route.is_none() {
            if ucf.srun_ids.iter().any(Option::is_some) {
                warn_unused_srun_ids(cf, uscf);
            }
            continue;
        }
        let ours = Some(balancer::init_upstream as unsafe extern "C" fn(_, _) -> ngx_int_t);
        let current = uscf.peer.init_upstream.map(|f| f as usize);
        let under_keepalive = ucf.keepalive_init_upstream.is_some()
            && current == ucf.keepalive_init_upstream.map(|f| f as usize);
        if !under_keepalive && current != ours.map(|f| f as usize) {
            ucf.original_init_upstream = uscf.peer.init_upstream;
            uscf.peer.init_upstream = ours;
        }

        // Statistics slots: primary peers, then backup peers, as round robin lays them out.
        ucf.index = main.upstreams.len();
        ucf.slot_base = slots;
        parts.push(str_bytes(&uscf.host).to_vec());
        let list = servers(uscf);
        for backup in [false, true] {
            let mut count = 0;
            for (i, server) in list.iter().enumerate() {
                if (server.backup() != 0) != backup {
                    continue;
                }
                if ucf.drain.get(i).copied().unwrap_or(false) {
                    drained.extend(slots + count..slots + count + server.naddrs);
                }
                count += server.naddrs;
                parts.push(str_bytes(&server.name).to_vec());
                parts.push(format!("{}/{}", server.naddrs, backup).into_bytes());
            }
            if backup {
                ucf.backup_slots = count;
            } else {
                ucf.primary_slots = count;
            }
            slots += count;
        }
        main.refusing |= ucf.jvm_route.as_ref().is_some_and(|j| j.failover == Failover::Off);
        main.upstreams.push(uscf_ptr);
    }

    for (name, file, line) in &main.status_names {
        let known = main.upstreams.iter().any(|&u| {
            // SAFETY: the upstream configurations live as long as the configuration.
            str_bytes(unsafe { &(*u).host }) == &name[..]
        });
        if !known {
            // The directive's own file and line, not where the http block ends.
            ngx_log_error!(
                NGX_LOG_EMERG,
                // SAFETY: `cf->log` is the configuration log.
                unsafe { (*cf).log },
                "no upstream \"{}\" with \"jvm_route\" for \"jvm_route_status\" in {}:{}",
                lossy(name),
                file,
                line
            );
            return ngx::core::NGX_CONF_ERROR as *mut c_char;
        }
    }

    if main.upstreams.is_empty() {
        return ngx::core::NGX_CONF_OK;
    }
    let layout = crate::stats::Layout {
        upstreams: main.upstreams.len(),
        slots,
        fingerprint: crate::stats::fingerprint(parts.iter().map(Vec::as_slice)),
        drained,
    };
    // SAFETY: `cf->pool` is the configuration pool; the layout lives as long as the cycle.
    let layout = unsafe { Pool::from_ngx_pool((*cf).pool) }.allocate(layout);
    if layout.is_null() {
        return conf_error(cf, ConfError::NoMemory);
    }
    let tag = std::ptr::addr_of!(crate::ngx_http_upstream_jvm_route_module).cast_mut().cast();
    // SAFETY: `cf` is the configuration being read; `layout` was just allocated in its pool;
    // the module's address is a stable tag.
    match unsafe { crate::stats::add_zone(cf, layout, tag) } {
        Some(zone) => main.zone = std::ptr::NonNull::new(zone),
        None => return conf_error(cf, ConfError::NoMemory),
    }
    for &uscf in &main.upstreams {
        // SAFETY: the upstream configurations live as long as the configuration.
        if let Some(ucf) = Module::server_conf_mut(unsafe { &mut *uscf }) {
            ucf.zone = main.zone;
        }
    }
    ngx::core::NGX_CONF_OK
}

fn warn_unused_srun_ids(cf: *mut ngx_conf_t, uscf: &ngx_http_upstream_srv_conf_t) {
    let file = if uscf.file_name.is_null() {
        String::new()
    } else {
        // SAFETY: `file_name` is a NUL-terminated configuration file name.
        unsafe { std::ffi::CStr::from_ptr(uscf.file_name.cast()) }.to_string_lossy().into_owned()
    };
    // SAFETY: `cf->log` is the configuration log.
    let log = unsafe { (*cf).log };
    ngx_log_error!(
        NGX_LOG_WARN,
        log,
        "upstream \"{}\" has servers with \"srun_id\" but no \"jvm_route\": the srun_ids are not used in {}:{}",
        lossy(str_bytes(&uscf.host)),
        file,
        uscf.line
    );
}

/// The servers of an upstream, as `ngx_http_upstream_server_t`.
pub fn servers(uscf: &ngx_http_upstream_srv_conf_t) -> &[ngx_http_upstream_server_t] {
    // SAFETY: `servers` is null or an array of `ngx_http_upstream_server_t`.
    unsafe { uscf.servers.as_ref().map_or(&[], |a: &ngx_array_t| a.as_slice()) }
}
