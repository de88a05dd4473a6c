//! The pure rules: no nginx types, no `unsafe` beyond what a byte search needs. Finding the
//! session id in a request's cookies and URL ([`session`]), turning it into a route and the
//! route into peer indices ([`route`]), and choosing where an orphaned session goes
//! ([`failover`]). Unit and property tests here; the fuzz targets include these files by path.

pub mod failover;
pub mod marks;
pub mod route;
pub mod session;
