//! The directive handlers: `jvm_route`, `jvm_route_status`, and the pass-through of the stock
//! upstream directives this module needs to see (`server`, `keepalive`, and the balancing
//! methods).
//!
//! nginx offers an upstream `server` line to this module first (see `ngx_module_order` in
//! `lib.rs`). The handler takes out the parameters it owns (`srun_id=`, `max_busy=`, `drain`),
//! hands the rest to the next module's `server` handler so that nginx parses and reports
//! everything else itself, and then records the srun_id against the index of the server just
//! added.

use std::ffi::{c_char, c_void};
use std::ptr::{self, null_mut};

use ngx::core::Status;
use ngx::ffi::{
    ngx_command_t, ngx_conf_t, ngx_http_compile_complex_value, ngx_http_compile_complex_value_t,
    ngx_http_complex_value_t, ngx_int_t, ngx_module_t, ngx_pnalloc, ngx_str_t, ngx_uint_t,
    NGX_CONF_1MORE, NGX_CONF_2MORE, NGX_CONF_ANY, NGX_CONF_FLAG, NGX_CONF_NOARGS, NGX_CONF_TAKE1,
    NGX_CONF_TAKE2, NGX_CONF_TAKE3, NGX_CONF_TAKE4, NGX_CONF_TAKE5, NGX_CONF_TAKE6, NGX_CONF_TAKE7,
    NGX_HTTP_MODULE, NGX_LOG_EMERG,
};
use ngx::http::{
    HttpModule, HttpModuleLocationConf, HttpModuleMainConf, HttpModuleServerConf,
    NgxHttpCoreModule, NgxHttpUpstreamModule,
};
use ngx::ngx_conf_log_error;

use super::{
    conf_error, ConfError, JvmRoute, LocationConf, SessionSource, StatusConf, UpstreamConf,
};
use crate::ffi::{lossy, str_bytes};
use crate::rules::failover::Failover;
use crate::rules::route::{validate_srun_id, RouteMode};
use crate::Module;

/// The arguments of the directive being handled, name first.
///
/// # Safety
/// `cf` must be the `ngx_conf_t` nginx passed to a directive handler.
unsafe fn args<'a>(cf: *mut ngx_conf_t) -> &'a mut [ngx_str_t] {
    // SAFETY: during a directive handler `cf->args` is an array of `ngx_str_t`, name first.
    unsafe { (*(*cf).args).as_slice_mut::<ngx_str_t>() }
}

/// The bytes of a directive argument.
fn arg_bytes(arg: &ngx_str_t) -> &[u8] {
    // SAFETY: only called on the arguments `args` returns: strings of the configuration being
    // read, which live as long as the configuration pool.
    unsafe { str_bytes(arg) }
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
    let mut slow_start = 0u32;
    let mut kept = 2;

    for i in 2..args.len() {
        let arg = args[i];
        let value = arg_bytes(&arg);
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
        if let Some(time) = value.strip_prefix(b"slow_start=") {
            let mut text = ngx_str_t { len: time.len(), data: time.as_ptr().cast_mut() };
            // SAFETY: `text` points to the argument, which nginx only reads.
            let seconds = unsafe { ngx::ffi::ngx_parse_time(&mut text, 1) };
            if !(1..=3600).contains(&seconds) {
                return conf_error(cf, ConfError::SlowStart(lossy(time)));
            }
            slow_start = seconds as u32;
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
    ucf.slow_start.resize(count, 0);
    ucf.slow_start[count - 1] = slow_start;
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
    uscf.peer.init_upstream = Some(crate::INIT_UPSTREAM);

    // SAFETY: `cmd` and `cf` come from nginx for this directive.
    let rv = unsafe { forward_to_next_module(cf, cmd) };
    if rv != ngx::core::NGX_CONF_OK {
        uscf.peer.init_upstream = below;
        return rv;
    }
    let ours = Some(crate::INIT_UPSTREAM as unsafe extern "C" fn(_, _) -> ngx_int_t);
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

/// Handler of the stock balancing methods (`least_conn`, `hash`, `ip_hash`, `random`) inside
/// `upstream {}`: passes the directive on, then notes the `init_upstream` it set. Those methods'
/// per-request data begins with round robin's, which this module relies on; any other method
/// is refused at the end of `http {}` (see `init::check_method`).
///
/// # Safety
/// Called by nginx with a valid `cf` inside `upstream {}`; `conf` is this module's
/// `UpstreamConf` of that upstream.
pub unsafe extern "C" fn cmd_method(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: per the function contract.
    let ucf = unsafe { &mut *conf.cast::<UpstreamConf>() };
    // SAFETY: `cmd` and `cf` come from nginx for this directive.
    let rv = unsafe { forward_to_next_module(cf, cmd) };
    if rv != ngx::core::NGX_CONF_OK {
        return rv;
    }
    // SAFETY: `cf` is the live configuration nginx passed to this handler.
    if let Some(uscf) = NgxHttpUpstreamModule::server_conf(unsafe { &*cf }) {
        ucf.stock_method = uscf.peer.init_upstream;
    }
    // SAFETY: `cf` is the live configuration nginx passed to this handler.
    let args = unsafe { args(cf) };
    let consistent = args[1..].iter().any(|a| arg_bytes(a) == b"consistent");
    ucf.method = match arg_bytes(&args[0]) {
        b"least_conn" => Some("least_conn"),
        b"hash" => Some("hash"),
        b"ip_hash" => Some("ip_hash"),
        b"random" => Some("random"),
        _ => None,
    };
    ucf.fixed_weights = match arg_bytes(&args[0]) {
        b"random" => Some("random"),
        b"hash" if consistent => Some("hash ... consistent"),
        _ => None,
    };
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
        let option = arg_bytes(option);
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

    let spec = arg_bytes(&args[1]);
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
        match arg_bytes(arg) {
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
    // SAFETY: per the function contract.
    unsafe { install_status(cf, lcf, status) }
}

/// Makes the location being read serve the status page `status`.
///
/// # Safety
/// `cf` must be valid and inside a location; `lcf` this module's configuration of it.
unsafe fn install_status(
    cf: *mut ngx_conf_t,
    lcf: &mut LocationConf,
    status: StatusConf,
) -> *mut c_char {
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
    // SAFETY: `cf` is valid and inside a location, whose server configuration is its server's.
    let cscf = NgxHttpCoreModule::server_conf(unsafe { &*cf })
        .map_or(std::ptr::null(), std::ptr::from_ref);
    // SAFETY: as above.
    if let Some(main) = Module::main_conf_mut(unsafe { &*cf }) {
        main.has_status = true;
        main.status_servers.push((std::ptr::from_mut(lcf), cscf));
    }

    // SAFETY: `cf` is inside a location, whose core configuration takes the content handler.
    match NgxHttpCoreModule::location_conf_mut(unsafe { &*cf }) {
        Some(clcf) => {
            clcf.handler = Some(crate::STATUS_HANDLER);
            ngx::core::NGX_CONF_OK
        }
        None => ngx::core::NGX_CONF_ERROR as *mut c_char,
    }
}

/// The file and line being read.
///
/// # Safety
/// `cf` must be valid and reading a file.
pub(super) unsafe fn conf_position(cf: *mut ngx_conf_t) -> (String, usize) {
    // SAFETY: per the function contract.
    unsafe {
        let file = (*cf).conf_file;
        if file.is_null() {
            return (String::new(), 0);
        }
        (lossy(str_bytes(&(*file).file.name)), (*file).line)
    }
}

/// Notes where the first of `check` and its companions is, for later errors.
///
/// # Safety
/// `cf` must be valid and reading a file.
unsafe fn note_check_position(
    cf: *mut ngx_conf_t,
    ucf: &mut UpstreamConf,
    directive: &'static str,
) {
    if ucf.check_position.is_none() {
        // SAFETY: per the function contract.
        let (file, line) = unsafe { conf_position(cf) };
        ucf.check_position = Some((directive, file, line));
    }
}

/// Handler of `check` (nginx_upstream_check_module's parameters).
///
/// # Safety
/// Called by nginx with a valid `cf` inside `upstream {}`; `conf` is this module's
/// `UpstreamConf` of that upstream.
pub unsafe extern "C" fn cmd_check(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: per the function contract.
    let (ucf, args) = unsafe { (&mut *conf.cast::<UpstreamConf>(), args(cf)) };
    if ucf.check.is_some() {
        return c"is duplicate".as_ptr().cast_mut();
    }
    let params: Vec<&[u8]> = args[1..].iter().map(arg_bytes).collect();
    let spec = match crate::rules::check::parse_check(&params) {
        Ok(spec) => spec,
        Err(err) => return conf_error(cf, err),
    };
    // SAFETY: per the function contract.
    unsafe { note_check_position(cf, ucf, "check") };
    ucf.check = Some(super::CheckConf {
        spec,
        send: crate::rules::check::SEND_DEFAULT.into(),
        expect: crate::rules::check::EXPECT_DEFAULT,
        ssl: std::ptr::null_mut(),
        ssl_verify: false,
        ssl_name: None,
        keepalive_requests: 1,
    });
    ngx::core::NGX_CONF_OK
}

/// Handler of `check_http_send "REQUEST"`.
///
/// # Safety
/// As [`cmd_check`].
pub unsafe extern "C" fn cmd_check_http_send(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: per the function contract.
    let (ucf, args) = unsafe { (&mut *conf.cast::<UpstreamConf>(), args(cf)) };
    if ucf.check_send.is_some() {
        return c"is duplicate".as_ptr().cast_mut();
    }
    let send = arg_bytes(&args[1]);
    if send.is_empty() || send.len() > 4096 {
        return conf_error(
            cf,
            "invalid value in \"check_http_send\" directive: the request must be 1 to 4096 bytes",
        );
    }
    // SAFETY: per the function contract.
    unsafe { note_check_position(cf, ucf, "check_http_send") };
    ucf.check_send = Some(send.into());
    ngx::core::NGX_CONF_OK
}

/// Handler of `check_http_expect_alive http_2xx ...`.
///
/// # Safety
/// As [`cmd_check`].
pub unsafe extern "C" fn cmd_check_http_expect_alive(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: per the function contract.
    let (ucf, args) = unsafe { (&mut *conf.cast::<UpstreamConf>(), args(cf)) };
    if ucf.check_expect.is_some() {
        return c"is duplicate".as_ptr().cast_mut();
    }
    let values: Vec<&[u8]> = args[1..].iter().map(arg_bytes).collect();
    match crate::rules::check::parse_expect(&values) {
        Ok(mask) => {
            // SAFETY: per the function contract.
            unsafe { note_check_position(cf, ucf, "check_http_expect_alive") };
            ucf.check_expect = Some(mask);
            ngx::core::NGX_CONF_OK
        }
        Err(err) => conf_error(cf, err),
    }
}

/// Handler of `check_keepalive_requests N`: the checks one connection carries (`type=http`;
/// 1, the default, opens a connection for each).
///
/// # Safety
/// As [`cmd_check`].
pub unsafe extern "C" fn cmd_check_keepalive_requests(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: per the function contract.
    let (ucf, args) = unsafe { (&mut *conf.cast::<UpstreamConf>(), args(cf)) };
    let value = arg_bytes(&args[1]);
    if ucf.check_keepalive.is_some() {
        return c"is duplicate".as_ptr().cast_mut();
    }
    let valid = !value.is_empty()
        && value.len() <= 9
        && value.iter().all(u8::is_ascii_digit)
        && value.iter().any(|&b| b != b'0');
    if !valid {
        return conf_error(
            cf,
            format!(
                "invalid value \"{}\" in \"check_keepalive_requests\" directive: a number of 1 \
                 or more",
                lossy(value)
            ),
        );
    }
    // SAFETY: per the function contract.
    unsafe { note_check_position(cf, ucf, "check_keepalive_requests") };
    ucf.check_keepalive = Some(value.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')).max(1));
    ngx::core::NGX_CONF_OK
}

/// Handler of `check_shm_size SIZE` (http): accepted for configurations written for
/// nginx_upstream_check_module; the check state lives in this module's zone, which is sized
/// by what it holds.
///
/// # Safety
/// Called by nginx with a valid `cf` in the `http` block.
pub unsafe extern "C" fn cmd_check_shm_size(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    _conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: per the function contract.
    let args = unsafe { args(cf) };
    let mut value = args[1];
    // SAFETY: `value` is an argument of the directive being read.
    if unsafe { ngx::ffi::ngx_parse_size(&mut value) } <= 0 {
        return conf_error(
            cf,
            format!(
                "invalid value \"{}\" in \"check_shm_size\" directive: a size such as 1m",
                lossy(arg_bytes(&args[1]))
            ),
        );
    }
    ngx::core::NGX_CONF_OK
}

/// Handler of `check_status [html|csv|json]`: this module's status page of every upstream
/// with `jvm_route`, in that format unless the request asks for another (`csv` gives the
/// text format).
///
/// # Safety
/// Called by nginx with a valid `cf` in a location; `conf` is this module's `LocationConf`.
pub unsafe extern "C" fn cmd_check_status(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: per the function contract.
    let (lcf, args) = unsafe { (&mut *conf.cast::<LocationConf>(), args(cf)) };
    if lcf.status.is_some() {
        return c"is duplicate".as_ptr().cast_mut();
    }
    let format: &'static [u8] = match args.get(1).map(arg_bytes) {
        None | Some(b"html") => b"html",
        Some(b"json") => b"json",
        Some(b"csv") => b"text",
        Some(other) => {
            return conf_error(
                cf,
                format!(
                    "invalid format \"{}\" in \"check_status\" directive: use html, csv or json",
                    lossy(other)
                ),
            )
        }
    };
    let status = StatusConf { default_format: Some(format), ..StatusConf::default() };
    // SAFETY: per the function contract.
    unsafe { install_status(cf, lcf, status) }
}

/// Handler of `check_ssl_verify on|off` (`type=https`).
///
/// # Safety
/// As [`cmd_check`].
pub unsafe extern "C" fn cmd_check_ssl_verify(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: per the function contract.
    let (ucf, args) = unsafe { (&mut *conf.cast::<UpstreamConf>(), args(cf)) };
    if ucf.check_ssl_verify.is_some() {
        return c"is duplicate".as_ptr().cast_mut();
    }
    let value = arg_bytes(&args[1]);
    ucf.check_ssl_verify = Some(match value {
        b"on" => true,
        b"off" => false,
        _ => {
            return conf_error(
                cf,
                format!(
                    "invalid value \"{}\" in \"check_ssl_verify\" directive: use on or off",
                    lossy(value)
                ),
            )
        }
    });
    // SAFETY: per the function contract.
    unsafe { note_check_position(cf, ucf, "check_ssl_verify") };
    ngx::core::NGX_CONF_OK
}

/// Handler of `check_ssl_trusted_certificate FILE` (`type=https`); the file is read at the end
/// of `http {}`.
///
/// # Safety
/// As [`cmd_check`].
pub unsafe extern "C" fn cmd_check_ssl_trusted_certificate(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: per the function contract.
    let (ucf, args) = unsafe { (&mut *conf.cast::<UpstreamConf>(), args(cf)) };
    if ucf.check_ssl_trusted.is_some() {
        return c"is duplicate".as_ptr().cast_mut();
    }
    ucf.check_ssl_trusted = Some(arg_bytes(&args[1]).into());
    // SAFETY: per the function contract.
    unsafe { note_check_position(cf, ucf, "check_ssl_trusted_certificate") };
    ngx::core::NGX_CONF_OK
}

/// Handler of `check_ssl_name NAME` (`type=https`).
///
/// # Safety
/// As [`cmd_check`].
pub unsafe extern "C" fn cmd_check_ssl_name(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: per the function contract.
    let (ucf, args) = unsafe { (&mut *conf.cast::<UpstreamConf>(), args(cf)) };
    if ucf.check_ssl_name.is_some() {
        return c"is duplicate".as_ptr().cast_mut();
    }
    let value = arg_bytes(&args[1]);
    let valid = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_');
    if value.is_empty() || value.len() > 253 || !value.iter().all(valid) {
        return conf_error(
            cf,
            format!(
                "invalid value \"{}\" in \"check_ssl_name\" directive: a host name",
                lossy(value)
            ),
        );
    }
    ucf.check_ssl_name = Some(value.into());
    // SAFETY: per the function contract.
    unsafe { note_check_position(cf, ucf, "check_ssl_name") };
    ngx::core::NGX_CONF_OK
}

/// Handler of `jvm_route_state FILE` (http): where the runtime marks are kept across restarts
/// and binary upgrades (a path relative to nginx's prefix).
///
/// # Safety
/// Called by nginx with a valid `cf` in the `http` block; `conf` is this module's `MainConf`.
pub unsafe extern "C" fn cmd_jvm_route_state(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: per the function contract.
    let (main, args) = unsafe { (&mut *conf.cast::<crate::conf::MainConf>(), args(cf)) };
    if main.state_file.is_some() {
        return c"is duplicate".as_ptr().cast_mut();
    }
    let mut name = args[1];
    if arg_bytes(&name).is_empty() || arg_bytes(&name).contains(&b'$') {
        return conf_error(
            cf,
            "invalid value in \"jvm_route_state\" directive: a file name, without variables",
        );
    }
    // SAFETY: `cf->cycle` is the cycle being configured; nginx allocates the full name in its
    // pool.
    if unsafe { ngx::ffi::ngx_conf_full_name((*cf).cycle, &mut name, 0) } != 0 {
        return ngx::core::NGX_CONF_ERROR as *mut c_char;
    }
    let path = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(arg_bytes(&name)));
    if path.file_name().is_none() || path.is_dir() {
        return conf_error(
            cf,
            format!(
                "invalid value \"{}\" in \"jvm_route_state\" directive: a file, not a directory",
                path.display()
            ),
        );
    }
    main.state_file = Some(path);
    ngx::core::NGX_CONF_OK
}
