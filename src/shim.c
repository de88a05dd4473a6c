/*
 * Thin C shim over nginx macros and inline functions that bindgen cannot
 * reach. It is compiled against the same headers and defines as the
 * bindings, so each function behaves exactly like the macro it wraps for the
 * nginx build at hand (with or without the upstream zone, before or after
 * 1.23.0 and 1.27.3).
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


void
ngx_http_jvm_route_peers_rlock(ngx_http_upstream_rr_peers_t *peers)
{
    ngx_http_upstream_rr_peers_rlock(peers);
}


void
ngx_http_jvm_route_peers_wlock(ngx_http_upstream_rr_peers_t *peers)
{
    ngx_http_upstream_rr_peers_wlock(peers);
}


void
ngx_http_jvm_route_peers_unlock(ngx_http_upstream_rr_peers_t *peers)
{
    ngx_http_upstream_rr_peers_unlock(peers);
}


void
ngx_http_jvm_route_peer_lock(ngx_http_upstream_rr_peers_t *peers,
    ngx_http_upstream_rr_peer_t *peer)
{
    ngx_http_upstream_rr_peer_lock(peers, peer);
}


void
ngx_http_jvm_route_peer_unlock(ngx_http_upstream_rr_peers_t *peers,
    ngx_http_upstream_rr_peer_t *peer)
{
    ngx_http_upstream_rr_peer_unlock(peers, peer);
}


/* A peer picked outside round robin must hold the reference that the
 * round-robin free callback gives back (nginx 1.27.3+ with a zone; older
 * versions count no references). */
void
ngx_http_jvm_route_peer_ref(ngx_http_upstream_rr_peers_t *peers,
    ngx_http_upstream_rr_peer_t *peer)
{
#if defined(ngx_http_upstream_rr_peer_ref)
    ngx_http_upstream_rr_peer_ref(peers, peer);
#endif
}


/* The generation of the peer list: it changes when a zone's resolver adds or
 * removes peers. 0 when the list cannot change at run time. */
ngx_uint_t
ngx_http_jvm_route_peers_generation(ngx_http_upstream_rr_peers_t *peers)
{
#if (NGX_HTTP_UPSTREAM_ZONE && nginx_version >= 1027003)
    return peers->config ? *peers->config : 0;
#else
    return 0;
#endif
}


/* Whether the request's view of the peers is older than the list itself;
 * round robin answers NGX_BUSY in that case, and so must we. */
ngx_uint_t
ngx_http_jvm_route_peers_stale(ngx_http_upstream_rr_peer_data_t *rrp)
{
#if (NGX_HTTP_UPSTREAM_ZONE && nginx_version >= 1027003)
    return rrp->peers->config && rrp->config != *rrp->peers->config;
#else
    return 0;
#endif
}


/* Copies up to `max` values of the request's Cookie header lines into `out`
 * and returns how many there were in all. */
ngx_uint_t
ngx_http_jvm_route_cookie_lines(ngx_http_request_t *r, ngx_str_t *out,
    ngx_uint_t max)
{
    ngx_uint_t        n;
#if (nginx_version >= 1023000)
    ngx_table_elt_t  *h;

    n = 0;

    for (h = r->headers_in.cookie; h; h = h->next) {
        if (n < max) {
            out[n] = h->value;
        }

        n++;
    }

#else
    ngx_uint_t        i;
    ngx_table_elt_t **h;

    h = r->headers_in.cookies.elts;
    n = r->headers_in.cookies.nelts;

    for (i = 0; i < n && i < max; i++) {
        out[i] = h[i]->value;
    }

#endif

    return n;
}
