//! Control requests: `POST ...?upstream=NAME&srun_id=ID&action=drain|undrain|down|up`, the
//! arguments in the query or in an `application/x-www-form-urlencoded` body. A request that a
//! browser marks as coming from another site is refused and changes nothing
//! ([`origin`](super::origin)).

use ngx::core::Status;
use ngx::ffi::{
    ngx_http_finalize_request, ngx_http_read_client_request_body, ngx_http_request_t, ngx_int_t,
    NGX_HTTP_SPECIAL_RESPONSE,
};
use ngx::http::{HttpModuleLocationConf, HttpModuleMainConf, Request};

use super::origin::{self, Headers};
use super::{form, send, servers, upstreams, TEXT};
use crate::conf::{MainConf, StatusConf};
use crate::ffi;
use crate::ffi::{bytes, lossy};
use crate::rules::marks::{self, Action, Refusal};
use crate::worker;
use crate::zone::{Superseded, MAX_WEIGHT};
use crate::Module;

/// What a control request changes.
enum Change {
    /// Runtime marks, and how the answer says it.
    Marks(Action, &'static str),
    /// A runtime weight; `None`: back to the configured weight.
    Weight(Option<u64>),
}

/// The answer to an old worker's control request during a reload (see `zone`): nothing is
/// acknowledged that the running configuration may not have.
const RELOADING: &str = "nginx is reloading and this worker belongs to the previous \
    configuration: the change may not reach the new one; send the request again\n";

/// Answers a control request whose arguments are the form `body`, if it has one, or else the
/// query string (never both).
///
/// # Safety
/// `r` must be a live request of a `jvm_route_status` location, its body read or discarded,
/// its header not sent.
pub(super) unsafe fn respond(
    r: *mut ngx_http_request_t,
    conf: &StatusConf,
    main: &MainConf,
    body: Option<&[u8]>,
) -> ngx_int_t {
    // SAFETY: per the function contract.
    if let Some((status, text)) = unsafe { super::refusal(r, conf, true) } {
        // SAFETY: as above.
        return unsafe { send(r, status, TEXT, text.as_bytes(), &[]) };
    }
    // SAFETY: per the function contract.
    let headers = unsafe {
        Headers {
            scheme: super::scheme(r),
            host: header(r, b"host"),
            fetch_site: header(r, b"sec-fetch-site"),
            origin: header(r, b"origin"),
            referer: header(r, b"referer"),
        }
    };
    // A form posted by the page without JavaScript goes back to the page, by the path as the
    // client wrote it.
    // SAFETY: per the function contract.
    let browser = unsafe { header(r, b"accept") }.is_some_and(super::html::prefers_html);
    // SAFETY: as above.
    let path = unsafe { super::raw_path(r) };
    let (status, text) = if !conf.control {
        (403, "control is not enabled here: use \"jvm_route_status control;\"\n".to_string())
    } else if origin::is_cross_site(&headers) {
        (
            403,
            "refused: the request comes from another site (Origin, Sec-Fetch-Site or Referer); \
             nothing was changed\n"
                .to_string(),
        )
    } else if browser && path.is_none() {
        // SAFETY: per the function contract.
        return unsafe { super::bad_path(r) };
    } else {
        // SAFETY: per the function contract; the query lives as long as the request.
        let args = unsafe { bytes((*r).args) };
        control(conf, main, body.unwrap_or(args))
    };
    if status == 503 {
        // SAFETY: per the function contract.
        return unsafe { send(r, 503, TEXT, text.as_bytes(), &[("Retry-After", "1")]) };
    }
    if let (200, true, Some(path)) = (status, browser, path) {
        let page = format!("{path}?format=html");
        // SAFETY: as above.
        return unsafe { send(r, 303, TEXT, text.as_bytes(), &[("Location", &page)]) };
    }
    // SAFETY: per the function contract.
    unsafe { send(r, status, TEXT, text.as_bytes(), &[]) }
}

/// Whether the request carries a browser's fetch metadata (`Sec-Fetch-*` headers).
///
/// # Safety
/// `r` must be a live request.
pub(super) unsafe fn has_fetch_metadata(r: *mut ngx_http_request_t) -> bool {
    let mut found = false;
    // SAFETY: per the function contract.
    unsafe {
        crate::ffi::each_header(&(*r).headers_in.headers, |key, _| {
            found |= key.len() > 10 && key[..10].eq_ignore_ascii_case(b"sec-fetch-");
        })
    };
    found
}

/// The value of the request header `name` (lower case), if the request has it.
///
/// # Safety
/// `r` must be a live request; the value lives as long as it.
pub(super) unsafe fn header<'r>(r: *mut ngx_http_request_t, name: &[u8]) -> Option<&'r [u8]> {
    let mut found = None;
    // SAFETY: per the function contract.
    unsafe {
        crate::ffi::each_header(&(*r).headers_in.headers, |key, value| {
            if found.is_none() && key.eq_ignore_ascii_case(name) {
                found = Some(value);
            }
        })
    };
    found
}

/// Starts reading a form body, if the request has one: `Some(rc)` to return from the content
/// handler (the answer follows in [`form_read`]); `None` if there is no form body to read.
///
/// # Safety
/// `r` must be a live POST request of a `jvm_route_status` location with `control`.
pub(super) unsafe fn read_form(r: *mut ngx_http_request_t) -> Option<ngx_int_t> {
    // SAFETY: per the function contract.
    unsafe {
        let content_type = header(r, b"content-type")?;
        let form = b"application/x-www-form-urlencoded";
        let is_form = content_type.len() >= form.len()
            && content_type[..form.len()].eq_ignore_ascii_case(form)
            && content_type[form.len()..].first().is_none_or(|&b| b == b';' || b == b' ');
        if !is_form {
            return None;
        }
        let length = (*r).headers_in.content_length_n;
        if length == 0 || (length < 0 && (*r).headers_in.chunked() == 0) {
            return None;
        }
        if length > super::MAX_FORM as i64 {
            return Some(413);
        }
        (*r).set_request_body_in_single_buf(1);
        let rc = ngx_http_read_client_request_body(r, Some(form_read));
        if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
            return Some(rc);
        }
        Some(Status::NGX_DONE.0)
    }
}

/// The form body has been read: answers the control request.
unsafe extern "C" fn form_read(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls this with the live request whose body it read.
    let rc = unsafe { answer_form(r) };
    // SAFETY: as above; the request was kept alive for this call.
    unsafe { ngx_http_finalize_request(r, rc) };
}

/// [`form_read`]'s answer.
///
/// # Safety
/// `r` must be a live request whose body was read.
unsafe fn answer_form(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: per the function contract.
    let request = unsafe { Request::from_ngx_http_request(r) };
    let (Some(lcf), Some(main)) = (Module::location_conf(request), Module::main_conf(request))
    else {
        return Status::NGX_ERROR.0;
    };
    let Some(conf) = &lcf.status else { return Status::NGX_ERROR.0 };
    let mut body = Vec::new();
    // SAFETY: per the function contract: `request_body` is null or the body read, whose
    // buffers are a chain in the request pool.
    unsafe {
        let rb = (*r).request_body;
        let mut chain = if rb.is_null() { std::ptr::null_mut() } else { (*rb).bufs };
        while !chain.is_null() {
            let buf = (*chain).buf;
            if (*buf).in_file() != 0 || body.len() > super::MAX_FORM {
                return 413;
            }
            // The last buffer of a chunked body can be empty, with null pointers.
            let len = if (*buf).pos.is_null() {
                0
            } else {
                (*buf).last.offset_from((*buf).pos).max(0) as usize
            };
            body.extend_from_slice(ffi::slice((*buf).pos, len));
            chain = (*chain).next;
        }
    }
    if body.len() > super::MAX_FORM {
        return 413;
    }
    // SAFETY: per the function contract; the header is not sent yet.
    unsafe { respond(r, conf, main, Some(&body)) }
}

/// A control request: `upstream=NAME&srun_id=ID&action=drain|undrain|down|up`.
fn control(conf: &StatusConf, main: &MainConf, source: &[u8]) -> (usize, String) {
    let args = match form::parse(source) {
        Ok(args) => args,
        Err(form::FormError::BadEncoding(name)) => {
            return (
                400,
                format!("bad percent-encoding in \"{}\"; nothing was changed\n", lossy(&name)),
            );
        }
        Err(form::FormError::Repeated(name)) => {
            return (400, format!("\"{}\" is given twice; nothing was changed\n", lossy(&name)));
        }
    };
    let get = |name: &[u8]| form::get(&args, name);
    let (Some(upstream_name), Some(srun_id), Some(action)) =
        (get(b"upstream"), get(b"srun_id"), get(b"action"))
    else {
        return (400, "give upstream=NAME&srun_id=ID&action=drain|undrain|down|up, or action=weight&value=N\n".into());
    };
    let change = match action {
        b"drain" => Change::Marks(Action::Drain, "draining"),
        b"undrain" => Change::Marks(Action::Undrain, "not draining"),
        b"down" => Change::Marks(Action::Down, "down"),
        b"up" => Change::Marks(Action::Up, "up"),
        b"weight" if get(b"value") == Some(&b"configured"[..]) => Change::Weight(None),
        b"weight" => {
            let value = get(b"value");
            let weight = value
                .and_then(|v| std::str::from_utf8(v).ok())
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|w| (1..=MAX_WEIGHT).contains(w));
            match weight {
                Some(w) => Change::Weight(Some(w)),
                None => {
                    return (
                        400,
                        format!(
                            "invalid weight \"{}\": give value=N, N from 1 to {MAX_WEIGHT}, or \
                             value=configured\n",
                            lossy(value.unwrap_or_default())
                        ),
                    );
                }
            }
        }
        other => {
            return (
                400,
                format!(
                    "unknown action \"{}\": use drain, undrain, down, up or weight\n",
                    lossy(other)
                ),
            );
        }
    };
    let Some(stats) = main.stats() else {
        return (500, "no statistics zone\n".into());
    };
    let Some((uscf, ucf)) = upstreams(conf, main).find(|(u, _)| {
        // SAFETY: `u` is nginx's.
        (unsafe { crate::conf::upstream_name(u) }) == upstream_name
    }) else {
        return (404, format!("no upstream \"{}\" with jvm_route here\n", lossy(upstream_name)));
    };
    // SAFETY: `uscf` is nginx's.
    let server_lines = unsafe { servers(uscf) };
    let lines: Vec<usize> =
        (0..server_lines.len()).filter(|&line| ucf.srun_id(line) == Some(srun_id)).collect();
    if lines.is_empty() {
        return (
            404,
            format!(
                "no server with srun_id \"{}\" in upstream \"{}\"\n",
                lossy(srun_id),
                lossy(upstream_name)
            ),
        );
    }
    let done = match change {
        Change::Marks(action, word) => {
            // Every line's change is decided before any is made: a refusal changes nothing.
            let changes: Result<Vec<(usize, u64, u64)>, Refusal> = lines
                .iter()
                .map(|&line| {
                    let slot = ucf.slot_base + line;
                    marks::change(stats.configured(slot), action)
                        .map(|(set, clear)| (slot, set, clear))
                })
                .collect();
            let Ok(changes) = changes else {
                return (
                    409,
                    format!(
                        "{} in {} is \"down\" in the configuration: remove \"down\" from its \
                         server line and reload\n",
                        lossy(srun_id),
                        lossy(upstream_name)
                    ),
                );
            };
            let mut result = Ok(());
            for (slot, set, clear) in changes {
                let before = stats.effective(slot);
                result = result.and(stats.set_state(slot, set, clear));
                // In service again (`up`, `undrain`): its slow start, if it has one.
                if before != marks::State::Up && stats.effective(slot) == marks::State::Up {
                    stats.start_ramp(slot, crate::check::now());
                }
            }
            result.map(|()| word.to_string())
        }
        Change::Weight(weight) => {
            let refused = weight.and_then(|_| weight_refusal(uscf, ucf, server_lines, &lines));
            if let Some(refused) = refused {
                return (409, format!("upstream \"{}\" {refused}\n", lossy(upstream_name)));
            }
            let mut result = Ok(());
            for &line in &lines {
                result = result.and(stats.set_weight(ucf.slot_base + line, weight));
            }
            result.map(|()| weight.map_or("configured weight".into(), |w| format!("weight {w}")))
        }
    };
    let word = match done {
        Ok(word) => word,
        Err(Superseded) => return (503, RELOADING.into()),
    };
    // SAFETY: the view is used here only.
    if let Some(view) = unsafe { worker::current(ucf, uscf) } {
        view.apply_marks(&stats);
    }
    // Kept across restarts (`jvm_route_state`): the change is in force either way.
    let saved = match crate::state::save(main, &stats) {
        Ok(()) => String::new(),
        Err(why) => {
            // SAFETY: the cycle's log is valid in a worker.
            let log = unsafe { (*ngx::ffi::ngx_cycle).log };
            ngx::ngx_log_error!(ngx::ffi::NGX_LOG_ERR, log, "jvm_route_state: {}", why);
            format!(" (in force, but not saved: {why})")
        }
    };
    (200, format!("{} in {}: {word}{saved}\n", lossy(srun_id), lossy(upstream_name)))
}

/// Why the server lines `lines` (indices into `servers`, the upstream's) cannot take a runtime
/// weight, if they cannot.
fn weight_refusal(
    uscf: &ngx::ffi::ngx_http_upstream_srv_conf_t,
    ucf: &crate::conf::UpstreamConf,
    servers: &[ngx::ffi::ngx_http_upstream_server_t],
    lines: &[usize],
) -> Option<String> {
    if !ffi::can_change(uscf) {
        return Some(
            "is not in shared memory: without \"zone\" every worker keeps its own weights, so \
             a runtime weight could not apply to all of them at once"
                .into(),
        );
    }
    if let Some(method) = ucf.fixed_weights {
        return Some(format!(
            "balances with \"{method}\", which reads the weights only when its peers change: a \
             runtime weight would not apply"
        ));
    }
    let srv = lines.iter().any(|&line| servers.get(line).is_some_and(ffi::server_has_service));
    srv.then(|| {
        "takes this server's weights from DNS SRV records (\"service=\"): change them there".into()
    })
}
