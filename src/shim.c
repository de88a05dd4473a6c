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
static ngx_uint_t
ngx_http_jvm_route_peers_stale(ngx_http_upstream_rr_peer_data_t *rrp)
{
#if (NGX_HTTP_UPSTREAM_ZONE && nginx_version >= 1027003)
    return rrp->peers->config && rrp->config != *rrp->peers->config;
#else
    return 0;
#endif
}


/* The generation of the peer list, read under its read lock. */
ngx_uint_t
ngx_http_jvm_route_peers_locked_generation(ngx_http_upstream_rr_peers_t *peers)
{
    ngx_uint_t  generation;

    ngx_http_upstream_rr_peers_rlock(peers);
    generation = ngx_http_jvm_route_peers_generation(peers);
    ngx_http_upstream_rr_peers_unlock(peers);

    return generation;
}


/* Takes the write lock of the request's peer list, unless the request's view
 * of the peers is stale: then returns 0 without the lock. */
ngx_uint_t
ngx_http_jvm_route_peers_wlock_current(ngx_http_upstream_rr_peer_data_t *rrp)
{
    ngx_http_upstream_rr_peers_wlock(rrp->peers);

    if (ngx_http_jvm_route_peers_stale(rrp)) {
        ngx_http_upstream_rr_peers_unlock(rrp->peers);
        return 0;
    }

    return 1;
}


/* Whether the upstream's peer list can change at run time (it is in a zone). */
ngx_uint_t
ngx_http_jvm_route_peers_can_change(ngx_http_upstream_srv_conf_t *us)
{
#if (NGX_HTTP_UPSTREAM_ZONE)
    return us->shm_zone != NULL;
#else
    return 0;
#endif
}
