//! The module's pure logic (no nginx types), compiled on its own for fuzzing: the files are
//! included by path, so the fuzz package does not depend on the module crate (which links nginx).

#[path = "../../src/rules/session.rs"]
pub mod session;

#[path = "../../src/rules/route.rs"]
pub mod route;

#[path = "../../src/rules/failover.rs"]
pub mod failover;

#[path = "../../src/status/origin.rs"]
pub mod origin;

#[path = "../../src/status/form.rs"]
pub mod form;

/// Where `part` lies in `whole`, if it is a subslice of it (same memory, not equal bytes).
pub fn offset_in(whole: &[u8], part: &[u8]) -> Option<usize> {
    let start = whole.as_ptr() as usize;
    let p = part.as_ptr() as usize;
    (p >= start && p.checked_add(part.len())? <= start + whole.len()).then(|| p - start)
}

/// Splits a fuzz input into a name and the rest. Byte 0 chooses the name: if its top bit is
/// set the name is `usual`, otherwise its low 4 bits are the length of a name taken from the
/// bytes that follow. None for an empty input.
pub fn name_and_rest<'a>(data: &'a [u8], usual: &'static [u8]) -> Option<(&'a [u8], &'a [u8])> {
    let (&selector, rest) = data.split_first()?;
    if selector & 0x80 != 0 {
        return Some((usual, rest));
    }
    let len = usize::from(selector & 0x0f).min(rest.len());
    Some(rest.split_at(len))
}
