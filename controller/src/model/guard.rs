//! A rule's `guard` block: the guard filter's own policy type, checked with its own
//! validation so the CRD, `nexus validate` and the filter refuse the same things.

use nexus_config::guard::GuardPolicy;
use nexus_config::Validate;

use super::problem::Ctx;

/// The policy as given, or `None` (reported) when the filter would refuse it.
pub(super) fn compile(cx: &mut Ctx, g: &GuardPolicy, path: &str) -> Option<GuardPolicy> {
    let mut errors = Vec::new();
    g.validate(path, &mut errors);
    if !errors.is_empty() {
        // The block keeps the filter's snake_case keys, so its paths are not camelized.
        for e in errors {
            cx.bad(e.path, e.message);
        }
        return None;
    }
    Some(g.clone())
}
