//! `jvm_route_cookie NAME [path=P] [domain=D] [max_age=TIME] [secure] [httponly]
//! [samesite=strict|lax|none];`: the route cookie that nginx sets, in Apache's form
//! (`NAME=.SRUN_ID`), so that `jvm_route $cookie_NAME reverse` reads it back.

use std::ffi::{c_char, c_void};

use ngx::ffi::{ngx_command_t, ngx_conf_t, ngx_parse_time, ngx_str_t};

use super::{conf_error, ConfError, RouteCookie, UpstreamConf};
use crate::ffi::lossy;

/// Handler of `jvm_route_cookie` inside `upstream {}`.
///
/// # Safety
/// Called by nginx with a valid `cf` inside `upstream {}`; `conf` is this module's
/// `UpstreamConf` of that upstream.
pub unsafe extern "C" fn cmd_jvm_route_cookie(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: per the function contract; the arguments are the directive's, in the
    // configuration pool.
    let (ucf, args) = unsafe {
        let args = (*(*cf).args).as_slice::<ngx_str_t>();
        let args: Vec<&[u8]> = args.iter().map(|a| crate::ffi::str_bytes(a)).collect();
        (&mut *conf.cast::<UpstreamConf>(), args)
    };
    if ucf.cookie.is_some() {
        return c"is duplicate".as_ptr().cast_mut();
    }
    let seconds = |text: &[u8]| {
        let mut value = ngx_str_t { len: text.len(), data: text.as_ptr().cast_mut() };
        // SAFETY: `ngx_parse_time` only reads `len` bytes of `value`.
        let n = unsafe { ngx_parse_time(&mut value, 1) };
        u64::try_from(n).ok()
    };
    match parse(&args[1..], seconds) {
        Ok(cookie) => {
            // SAFETY: `cf` is valid and reading a file.
            ucf.cookie_position = Some(unsafe { super::directives::conf_position(cf) });
            ucf.cookie = Some(cookie);
            ngx::core::NGX_CONF_OK
        }
        Err(err) => conf_error(cf, err),
    }
}

/// Whether `name` is a cookie name (an RFC 6265 token).
fn is_token(name: &[u8]) -> bool {
    !name.is_empty()
        && name.iter().all(|&b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

/// Whether `value` may stand in an attribute: visible ASCII without `;`.
fn is_attribute_value(value: &[u8]) -> bool {
    !value.is_empty() && value.iter().all(|&b| b.is_ascii_graphic() && b != b';')
}

/// Parses `NAME` and the parameters; `seconds` reads a `max_age` time (nginx's syntax).
pub fn parse(
    args: &[&[u8]],
    seconds: impl Fn(&[u8]) -> Option<u64>,
) -> Result<RouteCookie, ConfError> {
    let (name, params) = args.split_first().ok_or(ConfError::CookieName(String::new()))?;
    if !is_token(name) {
        return Err(ConfError::CookieName(lossy(name)));
    }
    let mut attributes = String::new();
    let mut seen: Vec<&[u8]> = Vec::new();
    let mut secure = false;
    let mut same_site_none = false;
    for &param in params {
        let (key, value) = match param.iter().position(|&b| b == b'=') {
            Some(eq) => (&param[..eq], Some(&param[eq + 1..])),
            None => (param, None),
        };
        let bad = || ConfError::CookieParameter(lossy(param));
        if seen.contains(&key) {
            return Err(bad());
        }
        seen.push(key);
        match (key, value) {
            (b"path", Some(v)) if is_attribute_value(v) => {
                attributes.push_str(&format!("; Path={}", lossy(v)));
            }
            (b"domain", Some(v)) if is_attribute_value(v) => {
                attributes.push_str(&format!("; Domain={}", lossy(v)));
            }
            (b"max_age", Some(v)) => {
                let n = seconds(v).ok_or_else(bad)?;
                attributes.push_str(&format!("; Max-Age={n}"));
            }
            (b"secure", None) => {
                secure = true;
                attributes.push_str("; Secure");
            }
            (b"httponly", None) => attributes.push_str("; HttpOnly"),
            (b"samesite", Some(v)) => {
                let value = match v {
                    b"strict" => "Strict",
                    b"lax" => "Lax",
                    b"none" => {
                        same_site_none = true;
                        "None"
                    }
                    _ => return Err(bad()),
                };
                attributes.push_str(&format!("; SameSite={value}"));
            }
            _ => return Err(bad()),
        }
    }
    if same_site_none && !secure {
        return Err(ConfError::SameSiteNoneInsecure);
    }
    Ok(RouteCookie { name: (*name).into(), attributes: attributes.into_bytes().into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seconds(text: &[u8]) -> Option<u64> {
        match text {
            b"1h" => Some(3600),
            b"30" => Some(30),
            _ => None,
        }
    }

    fn attrs(args: &[&str]) -> Result<String, String> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        parse(&args, seconds)
            .map(|c| String::from_utf8(c.attributes.to_vec()).unwrap())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn attributes_appear_as_configured_and_only_then() {
        assert_eq!(attrs(&["ROUTEID"]).unwrap(), "");
        assert_eq!(
            attrs(&[
                "ROUTEID",
                "path=/",
                "domain=example.com",
                "max_age=1h",
                "secure",
                "httponly",
                "samesite=lax"
            ])
            .unwrap(),
            "; Path=/; Domain=example.com; Max-Age=3600; Secure; HttpOnly; SameSite=Lax"
        );
        assert_eq!(attrs(&["R", "samesite=none", "secure"]).unwrap(), "; SameSite=None; Secure");
        assert_eq!(attrs(&["R", "samesite=strict"]).unwrap(), "; SameSite=Strict");
    }

    #[test]
    fn bad_parameters_are_named() {
        let err = |args: &[&str]| attrs(args).unwrap_err();
        assert_eq!(
            err(&["R", "expires=1"]),
            "invalid parameter \"expires=1\" in \"jvm_route_cookie\" directive"
        );
        assert_eq!(
            err(&["R", "secure", "secure"]),
            "invalid parameter \"secure\" in \"jvm_route_cookie\" directive"
        );
        assert_eq!(
            err(&["R", "samesite=maybe"]),
            "invalid parameter \"samesite=maybe\" in \"jvm_route_cookie\" directive"
        );
        assert_eq!(
            err(&["R", "max_age=soon"]),
            "invalid parameter \"max_age=soon\" in \"jvm_route_cookie\" directive"
        );
        assert_eq!(
            err(&["R", "path=/a;b"]),
            "invalid parameter \"path=/a;b\" in \"jvm_route_cookie\" directive"
        );
        assert_eq!(
            err(&["R", "secure=1"]),
            "invalid parameter \"secure=1\" in \"jvm_route_cookie\" directive"
        );
        assert_eq!(
            err(&["R", "samesite=none"]),
            "\"samesite=none\" without \"secure\" in \"jvm_route_cookie\" directive: browsers drop such a cookie"
        );
        assert_eq!(err(&["a=b"]), "invalid cookie name \"a=b\" in \"jvm_route_cookie\" directive");
        assert_eq!(err(&["a b"]), "invalid cookie name \"a b\" in \"jvm_route_cookie\" directive");
    }
}
