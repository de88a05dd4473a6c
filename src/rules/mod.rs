//! The pure rules: no nginx types, no `unsafe` beyond what a byte search needs. Finding the
//! session id in a request's cookies and URL ([`session`]), turning it into a route and the
//! route into peer indices ([`route`]), choosing where an orphaned session goes
//! ([`failover`]), a server line's state ([`marks`]), and whether the session ids a server
//! issues name its srun_id ([`issued`]). Unit and property tests here; the fuzz targets include these files by path.

pub mod check;
pub mod failover;
pub mod issued;
pub mod marks;
pub mod route;
pub mod session;
pub mod state;
