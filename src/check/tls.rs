//! `type=https`: the checks' TLS, with nginx's own OpenSSL code (as `proxy_ssl` uses it): an SSL
//! context per upstream made at the end of `http {}` (freed with the configuration pool), a TLS
//! client connection over the check's socket, SNI, and, with `check_ssl_verify on`, the
//! certificate checked against `check_ssl_trusted_certificate` and the name after the
//! handshake (`SSL_get_verify_result`, `ngx_ssl_check_host`).

use ngx::ffi::{ngx_conf_t, ngx_connection_t};

use crate::conf::CheckConf;
use crate::rules::check::CheckType;

/// What a handshake step came to.
pub enum Handshake {
    /// Done (and verified, if asked): the check goes on over TLS.
    Done,
    /// Waiting for the socket: nginx calls [`resume`]'s caller again.
    Again,
    /// Failed, with its error code.
    Failed(u64),
}

/// Makes the SSL context of an upstream's `type=https` checks, or says why not.
///
/// # Safety
/// `cf` must be the configuration being read.
pub unsafe fn prepare(
    cf: *mut ngx_conf_t,
    check: &mut CheckConf,
    trusted: Option<&[u8]>,
) -> Result<(), String> {
    if check.spec.kind != CheckType::Https {
        if check.ssl_verify || trusted.is_some() || check.ssl_name.is_some() {
            return Err("has check_ssl_* directives but not type=https".into());
        }
        return Ok(());
    }
    if check.ssl_verify && trusted.is_none() {
        return Err("check_ssl_verify on needs check_ssl_trusted_certificate".into());
    }
    // SAFETY: per the function contract.
    unsafe { imp::prepare(cf, check, trusted) }
}

#[cfg(jvm_route_ssl)]
mod imp {
    use std::ffi::{c_char, c_long};

    use ngx::ffi::{
        ngx_conf_t, ngx_connection_t, ngx_int_t, ngx_pcalloc, ngx_pool_cleanup_add,
        ngx_ssl_check_host, ngx_ssl_cleanup_ctx, ngx_ssl_create, ngx_ssl_create_connection,
        ngx_ssl_handshake, ngx_ssl_shutdown, ngx_ssl_t, ngx_ssl_trusted_certificate, ngx_str_t,
        NGX_SSL_TLSv1_2, NGX_SSL_TLSv1_3, SSL_ctrl, SSL_get_verify_result, NGX_AGAIN, NGX_OK,
        NGX_SSL_BUFFER, NGX_SSL_CLIENT, SSL_CTRL_SET_TLSEXT_HOSTNAME,
    };

    use super::Handshake;
    use crate::conf::CheckConf;
    use crate::rules::check::error;

    pub unsafe fn prepare(
        cf: *mut ngx_conf_t,
        check: &mut CheckConf,
        trusted: Option<&[u8]>,
    ) -> Result<(), String> {
        // SAFETY: per the function contract: the configuration pool lives as long as the
        // configuration; the context is freed by its cleanup with it.
        unsafe {
            let pool = (*cf).pool;
            let ssl = ngx_pcalloc(pool, size_of::<ngx_ssl_t>()).cast::<ngx_ssl_t>();
            if ssl.is_null() {
                return Err("could not allocate its SSL context".into());
            }
            (*ssl).log = (*cf).log;
            if ngx_ssl_create(ssl, (NGX_SSL_TLSv1_2 | NGX_SSL_TLSv1_3) as _, std::ptr::null_mut())
                != NGX_OK as ngx_int_t
            {
                return Err("could not make its SSL context".into());
            }
            let cleanup = ngx_pool_cleanup_add(pool, 0);
            if cleanup.is_null() {
                return Err("could not allocate its SSL context".into());
            }
            (*cleanup).handler = Some(ngx_ssl_cleanup_ctx);
            (*cleanup).data = ssl.cast();
            if let Some(file) = trusted {
                let copy = ngx::ffi::ngx_pnalloc(pool, file.len()).cast::<u8>();
                if copy.is_null() {
                    return Err("could not allocate its SSL context".into());
                }
                std::ptr::copy_nonoverlapping(file.as_ptr(), copy, file.len());
                let mut name = ngx_str_t { len: file.len(), data: copy };
                if ngx_ssl_trusted_certificate(cf, ssl, &mut name, 3) != NGX_OK as ngx_int_t {
                    return Err(format!(
                        "could not load check_ssl_trusted_certificate \"{}\"",
                        String::from_utf8_lossy(file)
                    ));
                }
            }
            check.ssl = ssl.cast();
        }
        Ok(())
    }

    /// Starts TLS on an open check connection (SNI `name`, NUL-terminated, or none).
    pub unsafe fn start(c: *mut ngx_connection_t, check: &CheckConf, name: &[u8]) -> Handshake {
        // SAFETY: per the caller's contract: `c` is the check's open connection; the SSL
        // context lives as long as the configuration.
        unsafe {
            let ssl = check.ssl.cast::<ngx_ssl_t>();
            // nginx keeps the connection's TLS state in its pool; a check's connection has
            // none of its own until here (destroyed with the connection, see `shutdown`).
            if (*c).pool.is_null() {
                (*c).pool = ngx::ffi::ngx_create_pool(1024, (*c).log);
                if (*c).pool.is_null() {
                    return Handshake::Failed(error::TLS);
                }
            }
            if ssl.is_null()
                || ngx_ssl_create_connection(ssl, c, (NGX_SSL_BUFFER | NGX_SSL_CLIENT) as _)
                    != NGX_OK as ngx_int_t
            {
                return Handshake::Failed(error::TLS);
            }
            if name.len() > 1 {
                SSL_ctrl(
                    (*(*c).ssl).connection,
                    SSL_CTRL_SET_TLSEXT_HOSTNAME as _,
                    0,
                    name.as_ptr().cast_mut().cast(),
                );
            }
            let rc = ngx_ssl_handshake(c);
            if rc == NGX_AGAIN as ngx_int_t {
                return Handshake::Again;
            }
            finished(c, check, name, rc == NGX_OK as ngx_int_t)
        }
    }

    /// The handshake is over (`ok`: it succeeded): verifies the certificate if asked.
    pub unsafe fn finished(
        c: *mut ngx_connection_t,
        check: &CheckConf,
        name: &[u8],
        ok: bool,
    ) -> Handshake {
        // SAFETY: per the caller's contract: `c` is the check's connection with its TLS.
        unsafe {
            if !ok || (*c).ssl.is_null() || (*(*c).ssl).handshaked() == 0 {
                return Handshake::Failed(error::TLS);
            }
            if check.ssl_verify {
                let verified = SSL_get_verify_result((*(*c).ssl).connection) == 0 as c_long;
                let host = &name[..name.len().saturating_sub(1)];
                let mut host = ngx_str_t { len: host.len(), data: host.as_ptr().cast_mut() };
                if !verified || ngx_ssl_check_host(c, &mut host) != NGX_OK as ngx_int_t {
                    return Handshake::Failed(error::CERTIFICATE);
                }
            }
        }
        Handshake::Done
    }

    /// Whether the connection has TLS.
    pub unsafe fn has_tls(c: *mut ngx_connection_t) -> bool {
        // SAFETY: per the caller's contract.
        unsafe { !(*c).ssl.is_null() }
    }

    /// Ends the connection's TLS without waiting for the peer, and frees its pool (before the
    /// connection is closed).
    pub unsafe fn shutdown(c: *mut ngx_connection_t) {
        // SAFETY: per the caller's contract: `c` is open; nginx frees its SSL object; the pool
        // is the one `start` made, which nothing else uses.
        unsafe {
            if !(*c).ssl.is_null() {
                (*(*c).ssl).set_no_wait_shutdown(1);
                (*(*c).ssl).set_no_send_shutdown(1);
                ngx_ssl_shutdown(c);
            }
            if !(*c).pool.is_null() {
                ngx::ffi::ngx_destroy_pool((*c).pool);
                (*c).pool = std::ptr::null_mut();
            }
        }
    }

    /// Sets the handler nginx calls when a handshake that waited is over.
    pub unsafe fn on_done(
        c: *mut ngx_connection_t,
        handler: unsafe extern "C" fn(*mut ngx_connection_t),
    ) {
        // SAFETY: per the caller's contract: `c` has TLS.
        unsafe { (*(*c).ssl).handler = Some(handler) };
    }

    #[allow(dead_code)]
    fn _types(_: *const c_char) {}
}

#[cfg(not(jvm_route_ssl))]
mod imp {
    use ngx::ffi::{ngx_conf_t, ngx_connection_t};

    use super::Handshake;
    use crate::conf::CheckConf;
    use crate::rules::check::error;

    pub unsafe fn prepare(
        _cf: *mut ngx_conf_t,
        _check: &mut CheckConf,
        _trusted: Option<&[u8]>,
    ) -> Result<(), String> {
        Err("type=https needs an nginx built with SSL (--with-http_ssl_module)".into())
    }

    pub unsafe fn start(_c: *mut ngx_connection_t, _check: &CheckConf, _name: &[u8]) -> Handshake {
        Handshake::Failed(error::TLS)
    }

    pub unsafe fn finished(
        _c: *mut ngx_connection_t,
        _check: &CheckConf,
        _name: &[u8],
        _ok: bool,
    ) -> Handshake {
        Handshake::Failed(error::TLS)
    }

    pub unsafe fn has_tls(_c: *mut ngx_connection_t) -> bool {
        false
    }

    pub unsafe fn shutdown(_c: *mut ngx_connection_t) {}

    pub unsafe fn on_done(
        _c: *mut ngx_connection_t,
        _h: unsafe extern "C" fn(*mut ngx_connection_t),
    ) {
    }
}

/// Starts TLS on the check's open connection `c`, sending `name` (NUL-terminated; empty: no
/// SNI).
///
/// # Safety
/// `c` must be the check's open connection, without TLS yet.
pub unsafe fn start(c: *mut ngx_connection_t, check: &CheckConf, name: &[u8]) -> Handshake {
    // SAFETY: per the function contract.
    unsafe { imp::start(c, check, name) }
}

/// A handshake that waited is over: its result (and the certificate's, if verified).
///
/// # Safety
/// `c` must be the check's connection, with TLS.
pub unsafe fn finished(c: *mut ngx_connection_t, check: &CheckConf, name: &[u8]) -> Handshake {
    // SAFETY: per the function contract.
    unsafe { imp::finished(c, check, name, true) }
}

/// Whether `c` has TLS.
///
/// # Safety
/// `c` must be an open connection.
pub unsafe fn has_tls(c: *mut ngx_connection_t) -> bool {
    // SAFETY: per the function contract.
    unsafe { imp::has_tls(c) }
}

/// Ends `c`'s TLS, if it has any, before it is closed.
///
/// # Safety
/// `c` must be an open connection.
pub unsafe fn shutdown(c: *mut ngx_connection_t) {
    // SAFETY: per the function contract.
    unsafe { imp::shutdown(c) }
}

/// Sets what nginx calls when `c`'s waiting handshake is over.
///
/// # Safety
/// `c` must have TLS.
pub unsafe fn on_done(
    c: *mut ngx_connection_t,
    handler: unsafe extern "C" fn(*mut ngx_connection_t),
) {
    // SAFETY: per the function contract.
    unsafe { imp::on_done(c, handler) }
}
