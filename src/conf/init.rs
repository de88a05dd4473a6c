//! What is done once every upstream is known, at the end of `http {}`: wrap the balancer of
//! each upstream with `jvm_route`, refuse balancing methods whose per-request data this module
//! cannot read, check the upstream names of `jvm_route_status`, and lay out the shared zone.

use std::ffi::{c_char, c_void, CStr};

use ngx::core::Pool;
use ngx::ffi::{
    ngx_conf_t, ngx_http_upstream_init_pt, ngx_http_upstream_init_round_robin,
    ngx_http_upstream_main_conf_t, ngx_http_upstream_srv_conf_t, ngx_int_t, ngx_uint_t,
    NGX_HTTP_UPS_CONF, NGX_LOG_EMERG, NGX_LOG_WARN,
};
use ngx::http::{HttpModuleMainConf, HttpModuleServerConf, NgxHttpUpstreamModule};
use ngx::ngx_log_error;

use super::{
    conf_error, server_name, servers, upstream_name, ConfError, JvmRoute, MainConf, RouteCookie,
    SessionSource, UpstreamConf,
};
use crate::ffi::lossy;
use crate::rules::failover::Failover;
use crate::rules::marks::Configured;
use crate::rules::route::RouteMode;
use crate::zone::{self, Layout, ServerLayout};
use crate::Module;

/// Runs before the upstream module initialises the balancers (this module is loaded before
/// it): see the module documentation.
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

    // SAFETY: the locations and their servers' configurations were made while this `http {}`
    // block was read; nginx's list of server names is still in its temporary pool now.
    unsafe { copy_server_names(main) };

    let mut layout = Layout::new(Vec::new(), Vec::new());
    for &uscf_ptr in upstreams {
        // SAFETY: every element is a valid upstream configuration.
        let uscf = unsafe { &mut *uscf_ptr };
        let Some(ucf) = Module::server_conf_mut(uscf) else { continue };
        if let (None, Some((file, line))) = (&ucf.jvm_route, &ucf.cookie_position) {
            ngx_log_error!(
                NGX_LOG_EMERG,
                // SAFETY: `cf->log` is the configuration log.
                unsafe { (*cf).log },
                "\"jvm_route_cookie\" needs \"jvm_route\" in the same upstream in {}:{}",
                file,
                line
            );
            return ngx::core::NGX_CONF_ERROR as *mut c_char;
        }
        if let (Some(jvm_route), Some(cookie), Some((file, line))) =
            (&ucf.jvm_route, &ucf.cookie, &ucf.cookie_position)
        {
            if let Some(reason) = cookie_unreadable(jvm_route, cookie) {
                ngx_log_error!(
                    NGX_LOG_EMERG,
                    // SAFETY: `cf->log` is the configuration log.
                    unsafe { (*cf).log },
                    "\"jvm_route_cookie {}\" could never be read back: {} in {}:{}",
                    lossy(&cookie.name),
                    reason,
                    file,
                    line
                );
                return ngx::core::NGX_CONF_ERROR as *mut c_char;
            }
        }
        if let Some((directive, file, line)) = ucf.check_position.clone() {
            let problem = if ucf.jvm_route.is_none() {
                Some("needs \"jvm_route\" in the same upstream (this module's checks work with it)")
            } else if ucf.check.is_none() {
                Some("needs \"check\" in the same upstream")
            } else {
                None
            };
            if let Some(problem) = problem {
                ngx_log_error!(
                    NGX_LOG_EMERG,
                    // SAFETY: `cf->log` is the configuration log.
                    unsafe { (*cf).log },
                    "\"{}\" {} in {}:{}",
                    directive,
                    problem,
                    file,
                    line
                );
                return ngx::core::NGX_CONF_ERROR as *mut c_char;
            }
            let (send, expect) = (ucf.check_send.take(), ucf.check_expect.take());
            let keepalive = ucf.check_keepalive.take().unwrap_or(1);
            let verify = ucf.check_ssl_verify.take().unwrap_or(false);
            let (trusted, ssl_name) = (ucf.check_ssl_trusted.take(), ucf.check_ssl_name.take());
            if let Some(check) = ucf.check.as_mut() {
                if let Some(send) = send {
                    check.send = send;
                }
                if let Some(expect) = expect {
                    check.expect = expect;
                }
                check.keepalive_requests = keepalive;
                check.ssl_verify = verify;
                check.ssl_name = ssl_name.map(|n| [&n[..], b"\0"].concat().into());
                if let Err(problem) =
                    // SAFETY: `cf` is the configuration being read.
                    unsafe { crate::check::tls::prepare(cf, check, trusted.as_deref()) }
                {
                    ngx_log_error!(
                        NGX_LOG_EMERG,
                        // SAFETY: `cf->log` is the configuration log.
                        unsafe { (*cf).log },
                        "\"check\" {} in {}:{}",
                        problem,
                        file,
                        line
                    );
                    return ngx::core::NGX_CONF_ERROR as *mut c_char;
                }
            }
            main.checks = true;
        }
        if ucf.jvm_route.is_none() {
            if ucf.srun_ids.iter().any(Option::is_some) {
                // SAFETY: `cf` is the configuration being read; `uscf` one of its upstreams.
                unsafe { warn_unused_srun_ids(cf, uscf) };
            }
            continue;
        }
        let ours = crate::INIT_UPSTREAM as usize;
        let current = uscf.peer.init_upstream.map(|f| f as usize);
        let under_keepalive = ucf.keepalive_init_upstream.is_some()
            && current == ucf.keepalive_init_upstream.map(|f| f as usize);
        let method =
            if under_keepalive { ucf.original_init_upstream } else { uscf.peer.init_upstream };
        if let Err(init) = check_method(method, ucf) {
            // SAFETY: `cf` is the configuration being read; `uscf` one of its upstreams.
            return unsafe { refuse(cf, uscf, &describe_method(cf, init)) };
        }
        ucf.has_slow_start = ucf.slow_start.iter().any(|&s| s > 0);
        let fixed = ucf.method.filter(|m| matches!(*m, "hash" | "ip_hash" | "random"));
        if let (Some(method), true) = (fixed, ucf.has_slow_start) {
            // SAFETY: `uscf` is an upstream configuration made by nginx.
            let (file, line) = unsafe { position(uscf) };
            ngx_log_error!(
                NGX_LOG_EMERG,
                // SAFETY: `cf->log` is the configuration log.
                unsafe { (*cf).log },
                "\"slow_start\" cannot be used with the {} method in upstream \"{}\" in {}:{}: it \
                 reads the servers' weights only when its peers change; use round robin (the \
                 default) or least_conn",
                method,
                // SAFETY: as above.
                lossy(unsafe { upstream_name(uscf) }),
                file,
                line
            );
            return ngx::core::NGX_CONF_ERROR as *mut c_char;
        }
        if !under_keepalive && current != Some(ours) {
            ucf.original_init_upstream = uscf.peer.init_upstream;
            uscf.peer.init_upstream = Some(crate::INIT_UPSTREAM);
        }

        // One zone record per server line, in configuration order.
        ucf.index = main.upstreams.len();
        ucf.slot_base = layout.servers.len();
        // SAFETY: `uscf` is an upstream configuration made by nginx.
        let (name, list) = unsafe { (upstream_name(uscf), servers(uscf)) };
        layout.upstreams.push(zone::upstream_key(name));
        let mut seen: Vec<u64> = Vec::new();
        let mut ranks: Vec<u32> = Vec::new();
        // Runtime weights need the peers in shared memory and a method that reads the weights
        // per request.
        let takes_weights = crate::ffi::can_change(uscf) && ucf.fixed_weights.is_none();
        for (i, server) in list.iter().enumerate() {
            let srun_id = ucf.srun_id(i).unwrap_or_default();
            // SAFETY: `server` belongs to `uscf`.
            let server_name = unsafe { server_name(server) };
            let backup = server.backup() != 0;
            let first = zone::server_key(name, server_name, srun_id, backup, 0);
            let rank = seen.iter().filter(|&&k| k == first).count() as u32;
            seen.push(first);
            ranks.push(rank);
            let configured = Configured {
                drain: ucf.drain.get(i).copied().unwrap_or(false),
                down: server.down != 0,
            };
            layout.servers.push(ServerLayout {
                key: zone::server_key(name, server_name, srun_id, backup, rank),
                weight: server.weight as u64,
                configured,
                weights: takes_weights,
                check_slots: if ucf.check.is_some() { crate::check::slots_of(server) } else { 0 },
                slow_start: u64::from(ucf.slow_start.get(i).copied().unwrap_or(0)) * 1000,
            });
        }
        ucf.ranks = ranks;
        // The header filter reads the session cookies a server issues when the session id
        // comes from a cookie and some server has a srun_id to compare with.
        ucf.checks_issued = ucf
            .jvm_route
            .as_ref()
            .is_some_and(|j| matches!(j.source, crate::conf::SessionSource::Cookie(_)))
            && ucf.srun_ids.iter().any(Option::is_some);
        let refuses = ucf.jvm_route.as_ref().is_some_and(|j| j.failover == Failover::Off);
        main.refusing |= refuses;
        main.filtering |= refuses || ucf.cookie.is_some() || ucf.checks_issued;
        main.upstreams.push(uscf_ptr);
    }

    for (name, file, line) in &main.status_names {
        let known = main.upstreams.iter().any(|&u| {
            // SAFETY: the upstream configurations live as long as the configuration.
            (unsafe { upstream_name(&*u) }) == &name[..]
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
    // SAFETY: `cf->pool` is the configuration pool; the layout lives as long as the cycle.
    let layout = unsafe { Pool::from_ngx_pool((*cf).pool) }.allocate(layout);
    if layout.is_null() {
        return conf_error(cf, ConfError::NoMemory);
    }
    let tag = std::ptr::addr_of!(crate::ngx_http_upstream_jvm_route_module).cast_mut().cast();
    // SAFETY: `cf` is the configuration being read; `layout` was just allocated in its pool;
    // the module's address is a stable tag.
    match unsafe { zone::add_zone(cf, layout, tag) } {
        Ok(zone) => main.zone = std::ptr::NonNull::new(zone),
        Err(err) => return conf_error(cf, err),
    }
    for &uscf in &main.upstreams {
        // SAFETY: the upstream configurations live as long as the configuration.
        if let Some(ucf) = Module::server_conf_mut(unsafe { &mut *uscf }) {
            ucf.zone = main.zone;
        }
    }
    ngx::core::NGX_CONF_OK
}

/// Copies the exact `server_name`s of each status location's server block into its
/// `StatusConf` (the Host check of the status location reads them at run time).
///
/// # Safety
/// Called at the end of the `http {}` block, whose configuration the pointers of
/// `main.status_servers` belong to.
unsafe fn copy_server_names(main: &mut MainConf) {
    use ngx::ffi::ngx_http_server_name_t;
    for &(lcf, cscf) in &main.status_servers {
        // SAFETY: per the function contract.
        let (Some(lcf), Some(cscf)) = (unsafe { lcf.as_mut() }, unsafe { cscf.as_ref() }) else {
            continue;
        };
        let Some(status) = lcf.status.as_mut() else { continue };
        // SAFETY: per the function contract: an array of `ngx_http_server_name_t`, alive while
        // the configuration is read.
        let names = unsafe { cscf.server_names.as_slice::<ngx_http_server_name_t>() };
        status.server_names = names
            .iter()
            .filter(|n| n.regex.is_null())
            // SAFETY: as above.
            .map(|n| unsafe { crate::ffi::bytes(n.name) })
            .filter(|n| {
                !n.is_empty()
                    && !n.starts_with(b"*")
                    && !n.starts_with(b".")
                    && !n.starts_with(b"~")
                    && !n.ends_with(b"*")
            })
            .map(|n| n.to_ascii_lowercase().into_boxed_slice())
            .collect();
    }
}

/// Why the route cookie that `jvm_route_cookie` sets (`NAME=.srun_id`) could never route a
/// request: `jvm_route` does not read `$cookie_NAME`, or reads it without `reverse` (a value
/// that starts with a dot names no route in prefix mode). Then every response would set it
/// again and no request would stick.
fn cookie_unreadable(jvm_route: &JvmRoute, cookie: &RouteCookie) -> Option<String> {
    let name = lossy(&cookie.name);
    match &jvm_route.source {
        SessionSource::Cookie(read) if read.eq_ignore_ascii_case(&cookie.name) => {}
        _ => {
            return Some(format!(
                "\"jvm_route\" in this upstream does not read \"$cookie_{name}\"; use \
                 \"jvm_route $cookie_{name}|jsessionid reverse;\" or another cookie name"
            ))
        }
    }
    (jvm_route.mode != RouteMode::AfterFirstDot).then(|| {
        "\"jvm_route\" reads it without \"reverse\", and its value \".srun_id\" names its \
         route after the dot; add \"reverse\" to \"jvm_route\""
            .to_string()
    })
}

/// Accepts the balancing methods whose per-request data begins with round robin's: round robin
/// itself and the stock `least_conn`, `hash`, `ip_hash` and `random`. Anything else (a
/// third-party balancer, `sticky`) is refused, with its `init_upstream`'s address.
fn check_method(method: ngx_http_upstream_init_pt, ucf: &UpstreamConf) -> Result<(), usize> {
    let Some(init) = method else { return Ok(()) };
    let init = init as usize;
    let round_robin = ngx_http_upstream_init_round_robin as unsafe extern "C" fn(_, _) -> ngx_int_t;
    if init == round_robin as usize || Some(init) == ucf.stock_method.map(|f| f as usize) {
        return Ok(());
    }
    Err(init)
}

/// The file of the loaded object (nginx or a dynamic module) that holds `address`.
fn object_file(address: usize) -> Option<String> {
    // SAFETY: `dladdr` only reads the loaded objects' tables and writes `info`; any address
    // may be asked about.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::dladdr(address as *const c_void, &mut info) } == 0 || info.dli_fname.is_null()
    {
        return None;
    }
    // SAFETY: dladdr's file name is NUL-terminated and lives while the object is loaded.
    Some(unsafe { CStr::from_ptr(info.dli_fname) }.to_string_lossy().into_owned())
}

/// Names a balancing method by its `init_upstream`: when it comes from a dynamic module, that
/// module and its upstream directives (`"fair" of ngx_http_upstream_fair_module`); else what
/// the dynamic linker knows of it.
///
/// # Safety
/// `cf` must be the configuration being read.
unsafe fn describe_method(cf: *mut ngx_conf_t, init: usize) -> String {
    let Some(file) = object_file(init) else {
        return "that this module does not know".to_string();
    };
    let nginx = object_file(ngx_http_upstream_init_round_robin as *const () as usize);
    if nginx.as_deref() == Some(file.as_str()) {
        return "built into nginx that this module does not know".to_string();
    }
    // SAFETY: per the function contract; `modules` is a NULL-terminated array of modules, each
    // with a NUL-terminated name and a command table ended by an empty name.
    unsafe {
        let modules = (*(*cf).cycle).modules;
        let mut i = 0;
        while !(*modules.add(i)).is_null() {
            let module = *modules.add(i);
            i += 1;
            if object_file(module as usize).as_deref() != Some(file.as_str())
                || (*module).commands.is_null()
                || (*module).name.is_null()
            {
                continue;
            }
            let mut directives = Vec::new();
            let mut cmd = (*module).commands;
            while (*cmd).name.len != 0 {
                let name = crate::ffi::str_bytes(&(*cmd).name);
                if (*cmd).type_ & NGX_HTTP_UPS_CONF as ngx_uint_t != 0 && name != b"server" {
                    directives.push(format!("\"{}\"", lossy(name)));
                }
                cmd = cmd.add(1);
            }
            let module_name = CStr::from_ptr((*module).name).to_string_lossy().into_owned();
            if !directives.is_empty() {
                return format!("{} of {module_name}", directives.join(", "));
            }
        }
    }
    let short = file.rsplit('/').next().unwrap_or_default().to_string();
    format!("of {short}")
}

/// Refuses an upstream whose balancing method cannot be wrapped.
///
/// # Safety
/// `cf` must be the configuration being read and `uscf` an upstream configuration of it.
unsafe fn refuse(
    cf: *mut ngx_conf_t,
    uscf: &ngx_http_upstream_srv_conf_t,
    method: &str,
) -> *mut c_char {
    // SAFETY: per the function contract.
    let (file, line) = unsafe { position(uscf) };
    ngx_log_error!(
        NGX_LOG_EMERG,
        // SAFETY: `cf->log` is the configuration log.
        unsafe { (*cf).log },
        "\"jvm_route\" cannot wrap the load balancing method {} in upstream \"{}\" in {}:{}: use \
         round robin (the default), least_conn, hash, ip_hash or random",
        method,
        // SAFETY: `uscf` is an upstream configuration made by nginx.
        lossy(unsafe { upstream_name(uscf) }),
        file,
        line
    );
    ngx::core::NGX_CONF_ERROR as *mut c_char
}

/// Where an upstream is defined.
///
/// # Safety
/// `uscf` must be an upstream configuration made by nginx.
unsafe fn position(uscf: &ngx_http_upstream_srv_conf_t) -> (String, usize) {
    let file = if uscf.file_name.is_null() {
        String::new()
    } else {
        // SAFETY: per the function contract, `file_name` is a NUL-terminated file name.
        unsafe { CStr::from_ptr(uscf.file_name.cast()) }.to_string_lossy().into_owned()
    };
    (file, uscf.line)
}

/// Warns about srun_ids that nothing reads.
///
/// # Safety
/// `cf` must be the configuration being read and `uscf` an upstream configuration of it.
unsafe fn warn_unused_srun_ids(cf: *mut ngx_conf_t, uscf: &ngx_http_upstream_srv_conf_t) {
    // SAFETY: per the function contract.
    let (file, line) = unsafe { position(uscf) };
    ngx_log_error!(
        NGX_LOG_WARN,
        // SAFETY: `cf->log` is the configuration log.
        unsafe { (*cf).log },
        "upstream \"{}\" has servers with \"srun_id\" but no \"jvm_route\": the srun_ids are not used in {}:{}",
        // SAFETY: `uscf` is an upstream configuration made by nginx.
        lossy(unsafe { upstream_name(uscf) }),
        file,
        line
    );
}
