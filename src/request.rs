//! What the balancer knows of one request: where its session id is (the cookies, then the
//! URL), and what happened to it, kept for `$jvm_route_route`, `$jvm_route_status` and the 503
//! filter.

use ngx::core::Status;
use ngx::ffi::{ngx_http_request_t, ngx_str_t};

use crate::conf::{JvmRoute, RouteCookie, SessionSource};
use crate::ffi::{bytes, str_bytes};
use crate::rules::route::{RouteChooser, RouteTable, SessionRoute, MAX_SRUN_ID_LEN};
use crate::rules::session::{named_cookie_values, path_parameter, query_parameter};

/// How many `Cookie` header lines of one request are searched.
const MAX_COOKIE_LINES: usize = 16;

/// What happened to a request, for `$jvm_route_status`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Outcome {
    /// No session id.
    #[default]
    None = 0,
    /// A session id whose route this upstream does not know.
    Miss,
    /// Sent to the session's server.
    Hit,
    /// The session's server could not take it: sent elsewhere.
    Failover,
    /// The session's server could not take it and `failover=off`: refused with 503.
    Refused,
}

impl Outcome {
    /// The variable's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::None => "NONE",
            Outcome::Miss => "MISS",
            Outcome::Hit => "HIT",
            Outcome::Failover => "FAILOVER",
            Outcome::Refused => "REFUSED",
        }
    }
}

/// Per-request state in the module context (inside the balancer's per-request data, which
/// lives until the request pool is destroyed).
#[repr(C)]
pub struct RequestCtx {
    /// What happened, as of the last attempt.
    pub outcome: Outcome,
    pub(crate) flags: u8,
    /// The length of the route within the session id (0: no route to show).
    route_len: u32,
    /// The session id that decided: request memory (a Cookie header, the URI, the pool).
    pub(crate) session: ngx_str_t,
    /// The srun_id of the server that took the latest attempt, while that attempt has not
    /// failed (configuration memory); empty otherwise.
    server: ngx_str_t,
    /// The upstream's route cookie (configuration memory), or null.
    pub(crate) cookie: *const RouteCookie,
    /// The upstream's configuration (for the checks of the routes its servers issue), or null.
    pub(crate) upstream: *const crate::conf::UpstreamConf,
    /// The zone slot of the server in `server`, plus one (0: none).
    slot: u32,
}

/// The request was refused (`failover=off`): nginx's 502 becomes a 503.
pub(crate) const REFUSED: u8 = 1;
/// The 503 page has been sent in place of nginx's 502 page.
const PAGE_SENT: u8 = 2;
/// The failover away from the session's route has been counted.
pub(crate) const FAILED_OVER: u8 = 4;
/// The route is the end of the session id (`reverse`), not its start.
const ROUTE_AT_END: u8 = 8;
/// The session id named a route of the upstream when the request began.
pub(crate) const KNOWN_ROUTE: u8 = 16;
/// The refused request's response is an `error_page`: its status becomes 503, its body stays.
const KEEP_BODY: u8 = 32;

impl RequestCtx {
    /// The context of a request whose session id `session` names `route` (a slice of it).
    ///
    /// # Safety
    /// `session` must stay valid and unchanged as long as the context is used: request memory
    /// for a context in the request pool.
    pub unsafe fn new(
        outcome: Outcome,
        session: &[u8],
        route: Option<&[u8]>,
        mode_reverse: bool,
    ) -> Self {
        // A route longer than any srun_id can be is not shown.
        let route_len = route.map_or(0, |r| if r.len() > MAX_SRUN_ID_LEN { 0 } else { r.len() });
        let mut flags = if mode_reverse { ROUTE_AT_END } else { 0 };
        if outcome == Outcome::Hit {
            flags |= KNOWN_ROUTE;
        }
        RequestCtx {
            outcome,
            flags,
            route_len: route_len as u32,
            session: ngx_str_t { len: session.len(), data: session.as_ptr().cast_mut() },
            server: ngx_str_t { len: 0, data: std::ptr::null_mut() },
            cookie: std::ptr::null(),
            upstream: std::ptr::null(),
            slot: 0,
        }
    }

    /// Notes the srun_id of the server that took the latest attempt (None: it has none, or
    /// the attempt failed).
    ///
    /// # Safety
    /// `srun_id` must stay valid and unchanged as long as the context is used (configuration
    /// memory, for a context of a request).
    pub unsafe fn set_server(&mut self, srun_id: Option<&[u8]>, slot: Option<usize>) {
        let id = srun_id.unwrap_or_default();
        self.server = ngx_str_t { len: id.len(), data: id.as_ptr().cast_mut() };
        self.slot = match (srun_id, slot) {
            (Some(_), Some(slot)) => u32::try_from(slot + 1).unwrap_or(0),
            _ => 0,
        };
    }

    /// The zone slot of the server that answered, if it has a srun_id and its attempt did not
    /// fail.
    pub fn server_slot(&self) -> Option<usize> {
        (self.slot as usize).checked_sub(1)
    }

    /// The srun_id of the server that answered, as far as is known (empty if none).
    pub fn server(&self) -> &[u8] {
        // SAFETY: `server` is empty or was set by `set_server`, whose caller keeps it valid as
        // long as this context is used.
        unsafe { str_bytes(&self.server) }
    }

    /// Whether the session id named `srun_id` when the request began (a sticky hit on it).
    pub fn came_with_route(&self, srun_id: &[u8]) -> bool {
        self.flags & KNOWN_ROUTE != 0 && self.route() == srun_id
    }

    /// The session id that decided (empty if none).
    pub fn session(&self) -> &[u8] {
        // SAFETY: `session` was written by `new`, whose caller keeps it valid as long as this
        // context is used.
        unsafe { str_bytes(&self.session) }
    }

    /// The route read from the session id (empty if none).
    pub fn route(&self) -> &[u8] {
        let session = self.session();
        let len = (self.route_len as usize).min(session.len());
        if self.flags & ROUTE_AT_END != 0 {
            &session[session.len() - len..]
        } else {
            &session[..len]
        }
    }

    /// Whether the request was refused (`failover=off`).
    pub fn refused(&self) -> bool {
        self.flags & REFUSED != 0
    }

    /// Forgets the refusal: the response is not the 502 of a refused request.
    pub fn clear_refused(&mut self) {
        self.flags &= !REFUSED;
    }

    /// Keeps the response body (an `error_page`) while the status still becomes 503.
    pub fn keep_body(&mut self) {
        self.flags |= KEEP_BODY;
    }

    /// Whether the response body is kept (see [`keep_body`](Self::keep_body)).
    pub fn keeps_body(&self) -> bool {
        self.flags & KEEP_BODY != 0
    }

    /// Whether the 503 page was sent; marks it sent.
    pub fn take_page_sent(&mut self) -> bool {
        let sent = self.flags & PAGE_SENT != 0;
        self.flags |= PAGE_SENT;
        sent
    }
}

/// The values of the request's first `MAX_COOKIE_LINES` `Cookie` header lines.
///
/// # Safety
/// `r` must be a live request; the values live as long as it.
#[cfg(nginx1_23_0)]
unsafe fn cookie_lines<'r>(r: *mut ngx_http_request_t) -> impl Iterator<Item = &'r [u8]> {
    // SAFETY: per the function contract: a NULL-terminated list of header lines.
    let first = unsafe { (*r).headers_in.cookie };
    std::iter::successors(first.as_ref(), |h| {
        // SAFETY: as above.
        unsafe { h.next.as_ref() }
    })
    .take(MAX_COOKIE_LINES)
    // SAFETY: a header line's value lives as long as the request.
    .map(|h| unsafe { bytes::<'r>(h.value) })
}

/// The values of the request's first `MAX_COOKIE_LINES` `Cookie` header lines.
///
/// # Safety
/// `r` must be a live request; the values live as long as it.
#[cfg(not(nginx1_23_0))]
unsafe fn cookie_lines<'r>(r: *mut ngx_http_request_t) -> impl Iterator<Item = &'r [u8]> {
    // SAFETY: per the function contract: an array of header line pointers.
    let lines: &'r [*mut ngx::ffi::ngx_table_elt_t] = unsafe { (*r).headers_in.cookies.as_slice() };
    lines
        .iter()
        .take(MAX_COOKIE_LINES)
        // SAFETY: every element is a header line of the request, alive as long as it; so is
        // its value.
        .filter_map(|&h| unsafe { h.as_ref().map(|h| bytes::<'r>(h.value)) })
}

/// The request's candidate session ids, in priority order (cookies, then the URL's path
/// parameter, then its query), reduced to a route.
///
/// # Safety
/// `r` must be a live request; `'r` no longer than it.
#[inline(always)]
pub unsafe fn find_session<'r>(
    r: *mut ngx_http_request_t,
    jvm_route: &'r JvmRoute,
    table: &RouteTable,
) -> SessionRoute<'r> {
    // Candidates in priority order; the URL is searched only when no cookie named a route.
    let mut chooser = RouteChooser::new(table);
    let mut value = ngx_str_t { len: 0, data: std::ptr::null_mut() };
    // SAFETY: the header lines, the complex value (request pool), the raw URI and the
    // arguments all live in the request's memory for as long as the request.
    unsafe {
        match &jvm_route.source {
            SessionSource::Cookie(name) => {
                // The configuration checked the name (`$cookie_NAME`).
                for line in cookie_lines::<'r>(r) {
                    for id in named_cookie_values(line, name) {
                        if let Some(known) = chooser.offer(id) {
                            return known;
                        }
                    }
                }
            }
            SessionSource::Value(cv) => {
                // `cv` was compiled at startup; `value` receives pool memory of `r`.
                if ngx::ffi::ngx_http_complex_value(r, *cv, &mut value) != Status::NGX_OK.0 {
                    value.len = 0;
                }
            }
        }
        let value = bytes::<'r>(value);
        if !value.is_empty() {
            if let Some(known) = chooser.offer(value) {
                return known;
            }
        }
        if let Some(name) = jvm_route.url_name.as_deref() {
            let from_path = path_parameter(bytes::<'r>((*r).unparsed_uri), name);
            if let Some(known) = from_path.and_then(|id| chooser.offer(id)) {
                return known;
            }
            let from_query = query_parameter(bytes::<'r>((*r).args), name);
            if let Some(known) = from_query.and_then(|id| chooser.offer(id)) {
                return known;
            }
        }
    }
    chooser.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_longer_than_a_srun_id_is_not_shown() {
        let long = format!("ABC.{}", "x".repeat(MAX_SRUN_ID_LEN + 1));
        // SAFETY: the strings outlive the contexts.
        let ctx = unsafe {
            RequestCtx::new(Outcome::Miss, long.as_bytes(), Some(&long.as_bytes()[4..]), true)
        };
        assert_eq!(ctx.route(), b"");
        let ok = format!("ABC.{}", "x".repeat(MAX_SRUN_ID_LEN));
        // SAFETY: as above.
        let ctx = unsafe {
            RequestCtx::new(Outcome::Miss, ok.as_bytes(), Some(&ok.as_bytes()[4..]), true)
        };
        assert_eq!(ctx.route().len(), MAX_SRUN_ID_LEN);
    }
}
