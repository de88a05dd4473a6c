//! The module's pure logic (no nginx types), compiled on its own for fuzzing: the files are
//! included by path, so the fuzz package does not depend on the module crate (which links nginx).

#[path = "../../src/session.rs"]
pub mod session;

#[path = "../../src/route.rs"]
pub mod route;

#[path = "../../src/failover.rs"]
pub mod failover;

/// Where `part` lies in `whole`, if it is a subslice of it (same memory, not equal bytes).
pub fn offset_in(whole: &[u8], part: &[u8]) -> Option<usize> {
    let start = whole.as_ptr() as usize;
    let p = part.as_ptr() as usize;
    (p >= start && p.checked_add(part.len())? <= start + whole.len()).then(|| p - start)
}
