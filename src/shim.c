/*
 * Thin C shim over nginx macros, inline functions and version-dependent
 * fields that bindgen cannot reach or that not every supported nginx has. It
 * is compiled against the same headers and defines as the bindings, so each
 * function behaves exactly like the code it wraps for the nginx build at hand
 * (with or without the upstream zone, before or after 1.23.0 and 1.27.3).
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


#if (NGX_HTTP_UPSTREAM_ZONE && nginx_version >= 1027003)
#define NGX_HTTP_JVM_ROUTE_RESOLVE  1
#else
#define NGX_HTTP_JVM_ROUTE_RESOLVE  0
#endif


void
ngx_http_jvm_route_peers_rlock(ngx_http_upstream_rr_peers_t *peers)
{
    ngx_http_upstream_rr_peers_rlock(peers);
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
 * removes peers. 0 when the list cannot change at run time. The caller holds
 * the list's lock. */
ngx_uint_t
ngx_http_jvm_route_peers_generation(ngx_http_upstream_rr_peers_t *peers)
{
#if (NGX_HTTP_JVM_ROUTE_RESOLVE)
    return peers->config ? *peers->config : 0;
#else
    return 0;
#endif
}


/* The generation the request's round-robin data was set up with. */
ngx_uint_t
ngx_http_jvm_route_request_generation(ngx_http_upstream_rr_peer_data_t *rrp)
{
#if (NGX_HTTP_JVM_ROUTE_RESOLVE)
    return rrp->config;
#else
    return 0;
#endif
}


/* Takes the read or write lock of a peer list and checks, under it, that the
 * list is still at the generation the caller's view was built from and, when
 * rrp is given, at the one the request's round-robin data was set up with
 * (round robin answers NGX_BUSY otherwise, and so must the caller). Returns 0
 * without the lock on a mismatch, 1 with it. */
ngx_uint_t
ngx_http_jvm_route_peers_lock_checked(ngx_http_upstream_rr_peers_t *peers,
    ngx_uint_t write, ngx_uint_t generation,
    ngx_http_upstream_rr_peer_data_t *rrp)
{
    if (write) {
        ngx_http_upstream_rr_peers_wlock(peers);

    } else {
        ngx_http_upstream_rr_peers_rlock(peers);
    }

#if (NGX_HTTP_JVM_ROUTE_RESOLVE)
    if (peers->config
        && (*peers->config != generation
            || (rrp && rrp->config != *peers->config)))
    {
        ngx_http_upstream_rr_peers_unlock(peers);
        return 0;
    }
#endif

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


/* The resolve server a peer came from: the host shared by its template and
 * every peer resolved from it; NULL for a peer with a fixed address. */
void *
ngx_http_jvm_route_peer_host(ngx_http_upstream_rr_peer_t *peer)
{
#if (NGX_HTTP_JVM_ROUTE_RESOLVE)
    return peer->host;
#else
    return NULL;
#endif
}


/* The list's resolve templates: one per resolve server of the list, in
 * configuration order. */
ngx_http_upstream_rr_peer_t *
ngx_http_jvm_route_peers_resolve(ngx_http_upstream_rr_peers_t *peers)
{
#if (NGX_HTTP_JVM_ROUTE_RESOLVE)
    return peers->resolve;
#else
    return NULL;
#endif
}


/* Whether a configured server is resolved at run time ("resolve"). */
ngx_uint_t
ngx_http_jvm_route_server_resolves(ngx_http_upstream_server_t *server)
{
#if (NGX_HTTP_JVM_ROUTE_RESOLVE)
    return server->host.len != 0;
#else
    return 0;
#endif
}


/* Whether a configured server takes its addresses and weights from DNS SRV
 * records ("service="). */
ngx_uint_t
ngx_http_jvm_route_server_service(ngx_http_upstream_server_t *server)
{
#if (NGX_HTTP_JVM_ROUTE_RESOLVE)
    return server->service.len != 0;
#else
    return 0;
#endif
}


/* Posts an event to the worker's queue of posted events: its handler runs
 * from the event loop, after the current handler returns. */
void
ngx_http_jvm_route_post_event(ngx_event_t *ev)
{
    ngx_post_event(ev, &ngx_posted_events);
}
