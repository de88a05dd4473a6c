//! `$jvm_route_route`, `$jvm_route_status` and `$jvm_route_server` for `log_format`, and the
//! response filters: the 503 for a request refused by `failover=off`, and the route cookie of
//! `jvm_route_cookie`.
//!
//! nginx answers a balancer that has no peer to offer ("no live upstreams") with its own 502
//! page; the upstream module has no way to choose another status. For a request this module
//! refused, the header filter turns that 502 into a 503 and the body filter sends the 503 page
//! in place of the 502 one. Every other response passes untouched.

use std::ptr::{addr_of_mut, null_mut};

use ngx::core::Status;
use ngx::ffi::{
    ngx_buf_t, ngx_chain_t, ngx_conf_t, ngx_http_add_variable, ngx_http_output_body_filter_pt,
    ngx_http_output_header_filter_pt, ngx_http_request_t, ngx_http_top_body_filter,
    ngx_http_top_header_filter, ngx_http_variable_value_t, ngx_int_t, ngx_pcalloc, ngx_str_t,
    ngx_uint_t, NGX_HTTP_VAR_NOCACHEABLE,
};
use ngx::http::{HttpModule, HttpModuleMainConf};

use crate::request::RequestCtx;
use crate::Module;

const PAGE_503: &[u8] =
    b"<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n\
<body>\r\n<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n\
<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

static mut NEXT_HEADER_FILTER: ngx_http_output_header_filter_pt = None;
static mut NEXT_BODY_FILTER: ngx_http_output_body_filter_pt = None;

/// The request's context, if this module balanced it.
///
/// # Safety
/// `r` must be a live request.
unsafe fn request_ctx<'a>(r: *mut ngx_http_request_t) -> Option<&'a mut RequestCtx> {
    // SAFETY: per the function contract; the slot holds null or the RequestCtx set in
    // `init_peer`, which lives until the request pool is destroyed.
    unsafe { (*(*r).ctx.add(Module::module().ctx_index)).cast::<RequestCtx>().as_mut() }
}

/// Which variable a getter call is for (the variable's `data`).
const ROUTE: usize = 0;
const STATUS: usize = 1;
const SERVER: usize = 2;

/// `preconfiguration`: registers the variables.
///
/// # Safety
/// Called by nginx with a valid `cf`.
pub unsafe extern "C" fn add_variables(cf: *mut ngx_conf_t) -> ngx_int_t {
    let variables: [(&'static [u8], usize); 3] =
        [(b"jvm_route_route", ROUTE), (b"jvm_route_status", STATUS), (b"jvm_route_server", SERVER)];
    for (name, which) in variables {
        let mut name = ngx_str_t { len: name.len(), data: name.as_ptr().cast_mut() };
        // SAFETY: `cf` is valid; nginx keeps the name, which is static.
        let var =
            unsafe { ngx_http_add_variable(cf, &mut name, NGX_HTTP_VAR_NOCACHEABLE as ngx_uint_t) };
        if var.is_null() {
            return Status::NGX_ERROR.0;
        }
        // SAFETY: `var` was just added for this module.
        unsafe {
            (*var).get_handler = Some(get_variable);
            (*var).data = which;
        }
    }
    Status::NGX_OK.0
}

/// The getter of both variables: the route read from the session id, or the outcome.
unsafe extern "C" fn get_variable(
    r: *mut ngx_http_request_t,
    v: *mut ngx_http_variable_value_t,
    which: usize,
) -> ngx_int_t {
    // SAFETY: nginx passes a live request and a value to fill; the context lives until the
    // request pool is destroyed, the session id it slices is request memory, and the outcome
    // names are static, so the bytes outlive the value's use.
    unsafe {
        let v = &mut *v;
        let Some(ctx) = request_ctx(r) else {
            v.set_not_found(1);
            return Status::NGX_OK.0;
        };
        let value = match which {
            ROUTE => ctx.route(),
            SERVER => ctx.server(),
            _ => ctx.outcome.as_str().as_bytes(),
        };
        v.data = value.as_ptr().cast_mut();
        v.set_len(value.len() as u32);
        v.set_valid(1);
        v.set_no_cacheable(1);
        v.set_not_found(0);
    }
    Status::NGX_OK.0
}

/// `postconfiguration`: installs the header filter if an upstream refuses requests
/// (`failover=off`), sets a route cookie or checks the routes its servers issue, and the body
/// filter if one refuses requests.
///
/// # Safety
/// Called by nginx once per configuration, single-threaded.
pub unsafe extern "C" fn add_filters(cf: *mut ngx_conf_t) -> ngx_int_t {
    // SAFETY: `cf` is the configuration being read, in the http block.
    if unsafe { Module::main_conf(&*cf) }.is_some_and(|m| m.has_status) {
        // SAFETY: as above: nginx builds the filter chains at this point.
        unsafe { crate::status::add_body_limit() };
    }
    // Only a configuration that needs them has them: other responses pay nothing. The body
    // filter is for `failover=off` alone (the 503 page).
    // SAFETY: as above.
    let (header, body) = unsafe { Module::main_conf(&*cf) }
        .map_or((false, false), |m| (m.filtering || m.refusing, m.refusing));
    // SAFETY: nginx builds the filter chains at this point, one module after another.
    unsafe {
        if header {
            NEXT_HEADER_FILTER = ngx_http_top_header_filter;
            ngx_http_top_header_filter = Some(header_filter);
        }
        if body {
            NEXT_BODY_FILTER = ngx_http_top_body_filter;
            ngx_http_top_body_filter = Some(body_filter);
        }
    }
    Status::NGX_OK.0
}

unsafe extern "C" fn header_filter(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx passes a live request; the next filter was saved at configuration.
    unsafe {
        let mut ctx = request_ctx(r);
        if ctx.is_none() && (*r).headers_out.status == 502 {
            // An `error_page` redirect cleared the module contexts: the request's balancer
            // data still tells whether this module refused it. Attach it again, for the
            // variables in the access log too.
            ctx = crate::balancer::balanced_request_ctx(r);
            if let Some(found) = ctx.as_deref_mut() {
                // Not nginx's own 502 page any more: the status changes, the body stays.
                found.keep_body();
                let request = ngx::http::Request::from_ngx_http_request(r);
                request.set_module_ctx(std::ptr::from_mut(found).cast(), Module::module());
            }
        }
        if let Some(ctx) = ctx {
            if ctx.refused() && (*r).headers_out.status == 502 {
                // `$status` in the access log reads `err_status`, which nginx set to 502.
                (*r).err_status = 503;
                let out = &mut (*r).headers_out;
                out.status = 503;
                out.status_line = ngx_str_t { len: 0, data: null_mut() };
                if !ctx.keeps_body() {
                    out.content_length_n = PAGE_503.len() as _;
                    out.content_length = null_mut();
                }
            } else {
                ctx.clear_refused();
            }
            if set_route_cookie(r, ctx).is_none() {
                return Status::NGX_ERROR.0;
            }
            check_issued(r, ctx);
        }
        match *addr_of_mut!(NEXT_HEADER_FILTER) {
            Some(next) => next(r),
            None => Status::NGX_ERROR.0,
        }
    }
}

/// Adds the route cookie (`jvm_route_cookie`) when the server that answered has a srun_id and
/// the request did not come with its route: a first visit, an unknown route, a failover. Not
/// on a sticky hit, not for an `error_page` (the response is not the server's), not in
/// subrequests. None if memory ran out.
///
/// # Safety
/// `r` must be a live request whose header is being sent; `ctx` its context.
unsafe fn set_route_cookie(r: *mut ngx_http_request_t, ctx: &RequestCtx) -> Option<()> {
    // SAFETY: per the function contract; `cookie` is null or the upstream's configuration.
    let Some(cookie) = (unsafe { ctx.cookie.as_ref() }) else { return Some(()) };
    let server = ctx.server();
    // SAFETY: as above.
    let main = unsafe { (*r).main == r };
    if !main || ctx.keeps_body() || server.is_empty() || ctx.came_with_route(server) {
        return Some(());
    }
    let mut value =
        Vec::with_capacity(cookie.name.len() + server.len() + cookie.attributes.len() + 2);
    value.extend_from_slice(&cookie.name);
    value.extend_from_slice(b"=.");
    value.extend_from_slice(server);
    value.extend_from_slice(&cookie.attributes);
    // SAFETY: as above.
    unsafe { crate::ffi::push_header(r, "Set-Cookie", &value) }
}

/// [`Stats::first_warning`](crate::zone::Stats::first_warning) bits: which warning of the
/// routes a server issues was logged.
const WARNED_MISMATCH: u64 = 1;
const WARNED_MISSING: u64 = 2;

/// Reads the session cookie that the server which answered sets, if any, and counts (and
/// warns once per server and kind, per cycle) when the id in it does not name the server's
/// srun_id ([`rules::issued`](crate::rules::issued)). The session id itself is never logged.
/// Only responses of a server with a srun_id, in an upstream whose session id comes from a
/// cookie; the server's `Set-Cookie` lines are the ones nginx's upstream module keeps apart,
/// so a response without one costs a few comparisons.
///
/// # Safety
/// `r` must be a live request whose header is being sent; `ctx` its context.
unsafe fn check_issued(r: *mut ngx_http_request_t, ctx: &RequestCtx) {
    use crate::conf::SessionSource;
    use crate::rules::issued::{issued, set_cookie_value, shown, Issued};
    use crate::zone::ServerCounter;

    // SAFETY: per the function contract; `upstream` is null or the upstream's configuration,
    // which outlives the request.
    let Some(ucf) = (unsafe { ctx.upstream.as_ref() }) else { return };
    // The lines as the server sent them (nginx keeps them apart: no walk over the header);
    // most responses have none, and end here.
    // SAFETY: per the function contract.
    let mut lines = unsafe { crate::ffi::upstream_set_cookies(r) }.peekable();
    if lines.peek().is_none() {
        return;
    }
    let Some(slot) = ctx.server_slot() else { return };
    if ctx.keeps_body() {
        return;
    }
    let Some(jvm_route) = &ucf.jvm_route else { return };
    let SessionSource::Cookie(name) = &jvm_route.source else { return };
    let Some(value) = lines.find_map(|line| set_cookie_value(line, name)) else { return };
    let srun_id = ctx.server();
    let verdict = issued(jvm_route.mode, value, srun_id);
    let (counter, bit) = match verdict {
        Issued::Matches => return,
        Issued::Mismatch(_) => (ServerCounter::RouteMismatch, WARNED_MISMATCH),
        Issued::Missing => (ServerCounter::RouteMissing, WARNED_MISSING),
    };
    let Some(stats) = ucf.stats() else { return };
    stats.count(slot, counter);
    if !stats.first_warning(slot, bit) {
        return;
    }
    // SAFETY: per the function contract: an upstream request has `upstream`, its upstream
    // configuration and its peer's name (null-checked); all outlive this call.
    let (upstream, peer) = unsafe {
        let u = (*r).upstream;
        if u.is_null() {
            (String::new(), String::new())
        } else {
            let upstream = (*u)
                .upstream
                .as_ref()
                .map_or(String::new(), |us| crate::ffi::lossy(crate::ffi::str_bytes(&us.host)));
            let peer = (*u)
                .peer
                .name
                .as_ref()
                .map_or(String::new(), |n| crate::ffi::lossy(crate::ffi::str_bytes(n)));
            (upstream, peer)
        }
    };
    let srun = shown(srun_id);
    let what = match verdict {
        Issued::Mismatch(Some(route)) if ucf.srun_ids.iter().flatten().any(|s| **s == *route) => {
            format!(
                "issues session ids whose route is \"{}\", the srun_id of another server: two \
                 servers have one jvmRoute, and its sessions go to the other one. Set \
                 jvmRoute=\"{srun}\" in that Tomcat's server.xml (Jetty: the session id \
                 manager's workerName)",
                shown(route)
            )
        }
        Issued::Mismatch(Some(route)) => {
            let route = shown(route);
            format!(
                "issues session ids whose route is \"{route}\", not its srun_id: its sessions \
                 do not stick. Set jvmRoute=\"{srun}\" in that Tomcat's server.xml (Jetty: the \
                 session id manager's workerName), or srun_id={route} on this server line"
            )
        }
        Issued::Mismatch(None) => format!(
            "issues session ids that do not begin with its srun_id: its sessions do not \
             stick. Check the prefix it gives its session ids (Resin: the server's index) \
             against srun_id={srun}"
        ),
        _ => format!(
            "issues session ids without a route: its sessions do not stick. Set \
             jvmRoute=\"{srun}\" in that Tomcat's server.xml (Jetty: the session id manager's \
             workerName), or name the route with jvm_route_cookie"
        ),
    };
    // The cycle's log, not the request's: the request's log context adds the request line,
    // which can hold a session id (`;jsessionid=`).
    // SAFETY: the cycle's log is valid in a worker.
    let log = unsafe { (*ngx::ffi::ngx_cycle).log };
    ngx::ngx_log_error!(
        ngx::ffi::NGX_LOG_WARN,
        log,
        "jvm_route: server {} (srun_id={}) of upstream \"{}\" {} (counted as route_{} on the status \
         page; logged once per server and kind until the next reload)",
        peer,
        srun,
        upstream,
        what,
        if bit == WARNED_MISMATCH { "mismatch" } else { "missing" }
    );
}

unsafe extern "C" fn body_filter(r: *mut ngx_http_request_t, chain: *mut ngx_chain_t) -> ngx_int_t {
    // SAFETY: nginx passes a live request and its output chain; the replacement buffer and
    // chain link live in the request pool; the next filter was saved at configuration.
    unsafe {
        let next = match *addr_of_mut!(NEXT_BODY_FILTER) {
            Some(next) => next,
            None => return Status::NGX_ERROR.0,
        };
        let Some(ctx) = request_ctx(r) else { return next(r, chain) };
        if !ctx.refused() || ctx.keeps_body() {
            return next(r, chain);
        }
        if ctx.take_page_sent() {
            // The rest of nginx's 502 page: already replaced.
            return next(r, null_mut());
        }
        let pool = (*r).pool;
        let buf = ngx_pcalloc(pool, size_of::<ngx_buf_t>()).cast::<ngx_buf_t>();
        let link = ngx_pcalloc(pool, size_of::<ngx_chain_t>()).cast::<ngx_chain_t>();
        if buf.is_null() || link.is_null() {
            return Status::NGX_ERROR.0;
        }
        let start = PAGE_503.as_ptr().cast_mut();
        (*buf).start = start;
        (*buf).pos = start;
        (*buf).last = start.add(PAGE_503.len());
        (*buf).end = (*buf).last;
        (*buf).set_memory(1);
        if (*r).main == r {
            (*buf).set_last_buf(1);
        } else {
            (*buf).set_last_in_chain(1);
        }
        (*link).buf = buf;
        (*link).next = null_mut();
        next(r, link)
    }
}
